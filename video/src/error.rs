//! The crate's one error type.

/// Everything the video crate can fail with. Recoverability, as a caller sees it:
/// * [`Error::Decode`] — one packet was bad (truncated, corrupted, another codec's): drop it,
///   count it, ask the publisher for a keyframe; the decoder stays usable.
/// * [`Error::Ffmpeg`], [`Error::EncoderUnavailable`] — the codec cannot go on or cannot start:
///   fall back (forward what the publisher sent, or another encoder).
/// * the rest — wrong input from the caller; nothing was changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("ffmpeg: {context}: {source}")]
    Ffmpeg {
        context: &'static str,
        #[source]
        source: ffmpeg_next::Error,
    },
    #[error("encoder {0} is not in this FFmpeg build")]
    EncoderUnavailable(&'static str),
    #[error("decoder for {0} is not in this FFmpeg build")]
    DecoderUnavailable(&'static str),
    #[error("decode: {0}")]
    Decode(ffmpeg_next::Error),
    #[error("invalid frame: {0}")]
    InvalidFrame(String),
    #[error("invalid quality map: {0}")]
    InvalidQualityMap(String),
    #[error("invalid encoder config: {0}")]
    InvalidConfig(String),
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps an FFmpeg error with what we were doing.
pub(crate) fn ff(context: &'static str) -> impl FnOnce(ffmpeg_next::Error) -> Error {
    move |source| Error::Ffmpeg { context, source }
}
