//! Region of interest: detector boxes → per-block quality offsets for the encoder.
