//! Objective quality metrics and bitrate accounting (being written).
