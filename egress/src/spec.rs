//! What an egress writes: one [`OutputSpec`] per output, parsed from a path or URL.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::Error;

/// Output formats. Every one but [`Format::Aic`] goes through GStreamer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The native archive: the AIC frames themselves in container v2 (`docs/bitstream.md` §3.2),
    /// a page flushed every second.
    Aic,
    /// Ogg/Opus (`opusenc ! oggmux`).
    Ogg,
    /// WebM/Opus (`opusenc ! webmmux`, streamable: no seek index to rewrite at the end).
    Webm,
    /// Fragmented MP4 of AAC-LC (`voaacenc ! mp4mux fragment-duration=…`): the `moov` comes
    /// first, then one fragment per second, so a crash leaves a file that plays to the last
    /// fragment. Not Opus: GStreamer 1.22's mp4mux writes Opus' pre-skip in the wrong byte
    /// order (players then drop the first 0.3 s).
    Mp4,
    /// HLS: MPEG-TS segments of AAC-LC (`voaacenc ! hlssink2`), a playlist beside them. AAC,
    /// not Opus: it is what every HLS player plays.
    Hls,
    /// RTMP push (`voaacenc ! flvmux ! rtmp2sink`). FLV has no Opus, so AAC-LC.
    Rtmp,
    /// SRT caller (`voaacenc ! mpegtsmux ! srtsink`), MPEG-TS of AAC-LC like HLS.
    Srt,
    /// PCM WAV, 16 kHz mono (for `aic render`; a crash leaves a header without its length).
    Wav,
}

impl Format {
    pub const ALL: [Format; 8] = [
        Format::Aic,
        Format::Ogg,
        Format::Webm,
        Format::Mp4,
        Format::Hls,
        Format::Rtmp,
        Format::Srt,
        Format::Wav,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Format::Aic => "aic",
            Format::Ogg => "ogg",
            Format::Webm => "webm",
            Format::Mp4 => "mp4",
            Format::Hls => "hls",
            Format::Rtmp => "rtmp",
            Format::Srt => "srt",
            Format::Wav => "wav",
        }
    }

    pub fn parse(s: &str) -> Result<Format, Error> {
        Format::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                Error::Spec(format!(
                    "unknown output format {s:?} (one of: {})",
                    Format::ALL.map(Format::name).join(", ")
                ))
            })
    }

    /// Live network outputs (no file to claim).
    pub fn is_network(self) -> bool {
        matches!(self, Format::Rtmp | Format::Srt)
    }

    /// Takes the AIC frames rather than PCM.
    pub fn takes_frames(self) -> bool {
        self == Format::Aic
    }
}

/// One output of an egress.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputSpec {
    pub format: Format,
    /// A file path (`.aic`, `.ogg`, `.webm`, `.mp4`, `.wav`), a directory for HLS (the playlist
    /// is `index.m3u8` in it), or a URL: `rtmp://host[:port]/app/key`, `srt://host:port`.
    pub location: String,
    /// Encoder bitrate for Opus/AAC outputs.
    pub bitrate_bps: u32,
    /// HLS target segment duration.
    pub segment_s: u32,
}

pub const DEFAULT_BITRATE_BPS: u32 = 32_000;
pub const DEFAULT_SEGMENT_S: u32 = 2;
const MIN_BITRATE_BPS: u32 = 6_000;
const MAX_BITRATE_BPS: u32 = 256_000;

impl OutputSpec {
    /// `format` from the location when `None`: `rtmp://…`, `srt://…`, a file extension, or a
    /// path ending in `/` (HLS directory).
    pub fn parse(location: &str, format: Option<Format>) -> Result<OutputSpec, Error> {
        if location.is_empty() || location.len() > 4096 || location.contains('\0') {
            return Err(Error::Spec(
                "output location empty, too long or not text".into(),
            ));
        }
        let format = match format {
            Some(f) => f,
            None => guess(location)?,
        };
        let url = format.is_network();
        let scheme_ok = match format {
            Format::Rtmp => location.starts_with("rtmp://"),
            Format::Srt => location.starts_with("srt://"),
            _ => !location.contains("://"),
        };
        if !scheme_ok {
            return Err(Error::Spec(format!(
                "{} output needs {}, got {location:?}",
                format.name(),
                if url {
                    "a URL of its scheme"
                } else {
                    "a file path"
                }
            )));
        }
        Ok(OutputSpec {
            format,
            location: location.to_string(),
            bitrate_bps: DEFAULT_BITRATE_BPS,
            segment_s: DEFAULT_SEGMENT_S,
        })
    }

    pub fn with_bitrate(mut self, bps: u32) -> Result<Self, Error> {
        if !(MIN_BITRATE_BPS..=MAX_BITRATE_BPS).contains(&bps) {
            return Err(Error::Spec(format!(
                "bitrate {bps} b/s outside {MIN_BITRATE_BPS}..={MAX_BITRATE_BPS}"
            )));
        }
        self.bitrate_bps = bps;
        Ok(self)
    }

    pub fn with_segment_s(mut self, s: u32) -> Result<Self, Error> {
        if !(1..=60).contains(&s) {
            return Err(Error::Spec(format!("HLS segment of {s} s outside 1..=60")));
        }
        self.segment_s = s;
        Ok(self)
    }
}

fn guess(location: &str) -> Result<Format, Error> {
    if location.starts_with("rtmp://") {
        return Ok(Format::Rtmp);
    }
    if location.starts_with("srt://") {
        return Ok(Format::Srt);
    }
    if location.ends_with('/') || location.ends_with(".m3u8") {
        return Ok(Format::Hls);
    }
    let ext = Path::new(location)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("");
    match ext.to_ascii_lowercase().as_str() {
        "aic" => Ok(Format::Aic),
        "ogg" | "opus" | "oga" => Ok(Format::Ogg),
        "webm" => Ok(Format::Webm),
        "mp4" | "m4a" => Ok(Format::Mp4),
        "wav" => Ok(Format::Wav),
        _ => Err(Error::Spec(format!(
            "cannot tell the format of {location:?}: name it (one of: {})",
            Format::ALL.map(Format::name).join(", ")
        ))),
    }
}

/// Claims a new file for an output, never overwriting: `rec.ogg`, else `rec-2.ogg`,
/// `rec-3.ogg`, … (created empty with `create_new`, so two egresses never get the same name).
pub fn claim_file(path: &Path) -> Result<(PathBuf, File), Error> {
    for n in 1..1000u32 {
        let candidate = numbered(path, n);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&candidate)
        {
            Ok(f) => return Ok((candidate, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(Error::Io(format!("creating {}: {e}", candidate.display())));
            }
        }
    }
    Err(Error::Io(format!(
        "{}: 999 recordings by that name already exist",
        path.display()
    )))
}

/// Claims a new directory (HLS), never reusing one: `dir`, else `dir-2`, …
pub fn claim_dir(path: &Path) -> Result<PathBuf, Error> {
    let path = path.components().as_path();
    for n in 1..1000u32 {
        let candidate = numbered(path, n);
        match std::fs::create_dir(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(Error::Io(format!("creating {}: {e}", candidate.display())));
            }
        }
    }
    Err(Error::Io(format!(
        "{}: 999 recordings by that name already exist",
        path.display()
    )))
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    if n == 1 {
        return path.to_path_buf();
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) if path.is_file() || !path.exists() => {
            format!("{stem}-{n}.{}", ext.to_string_lossy())
        }
        _ => format!(
            "{}-{n}",
            path.file_name().unwrap_or_default().to_string_lossy()
        ),
    };
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_from_locations() {
        let f = |s: &str| OutputSpec::parse(s, None).map(|o| o.format);
        assert_eq!(f("a/b.ogg").unwrap(), Format::Ogg);
        assert_eq!(f("b.OPUS").unwrap(), Format::Ogg);
        assert_eq!(f("x.webm").unwrap(), Format::Webm);
        assert_eq!(f("x.mp4").unwrap(), Format::Mp4);
        assert_eq!(f("x.aic").unwrap(), Format::Aic);
        assert_eq!(f("x.wav").unwrap(), Format::Wav);
        assert_eq!(f("hls/").unwrap(), Format::Hls);
        assert_eq!(f("rtmp://127.0.0.1/live/k").unwrap(), Format::Rtmp);
        assert_eq!(f("srt://127.0.0.1:9000").unwrap(), Format::Srt);
        assert!(f("x.flac").is_err());
        assert!(f("").is_err());
        // A scheme that does not match the named format is refused.
        assert!(OutputSpec::parse("rtmp://h/a/k", Some(Format::Ogg)).is_err());
        assert!(OutputSpec::parse("x.ogg", Some(Format::Srt)).is_err());
        assert!(
            OutputSpec::parse("x.ogg", None)
                .unwrap()
                .with_bitrate(1)
                .is_err()
        );
        assert!(
            OutputSpec::parse("h/", None)
                .unwrap()
                .with_segment_s(0)
                .is_err()
        );
    }

    #[test]
    fn claims_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rec.ogg");
        std::fs::write(&p, b"first").unwrap();
        let (p2, _) = claim_file(&p).unwrap();
        assert_eq!(p2, dir.path().join("rec-2.ogg"));
        let (p3, _) = claim_file(&p).unwrap();
        assert_eq!(p3, dir.path().join("rec-3.ogg"));
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        let d = dir.path().join("hls");
        assert_eq!(claim_dir(&d).unwrap(), d);
        assert_eq!(claim_dir(&d).unwrap(), dir.path().join("hls-2"));
    }
}
