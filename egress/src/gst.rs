//! The GStreamer outputs: 16 kHz mono PCM in through `appsrc`, stamped from timeline positions
//! (never from arrival times), encoded, muxed and written by GStreamer's own elements.
//!
//! Each pipeline is built from a fixed description per [`Format`]; only numbers we validated
//! go into the description, paths and URLs are set as properties afterwards (no user text is
//! ever parsed as pipeline syntax). Files are written unbuffered (`filesink buffer-mode=2`), so
//! a crash loses nothing GStreamer had written; Ogg pages, WebM clusters and MP4 fragments are
//! closed at least every second.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use crate::spec::{Format, OutputSpec};
use crate::timeline::Timeline;
use crate::{Error, FRAME_SAMPLES};

/// Bytes `appsrc` holds before the output counts as full: 2 s of 16 kHz s16.
const MAX_QUEUED_BYTES: u64 = 64_000;
/// Silence is pushed in buffers of at most this many frames.
const FILL_CHUNK_FRAMES: u64 = 50;

static INIT: OnceLock<Result<(), String>> = OnceLock::new();

/// Initialises GStreamer once per process.
pub fn init() -> Result<(), Error> {
    INIT.get_or_init(|| gst::init().map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| Error::Gst(format!("GStreamer did not initialise: {e}")))
}

/// The elements a format needs (checked before a pipeline is built, so a missing plugin is
/// a clear error naming the Debian package).
fn required(format: Format) -> &'static [&'static str] {
    match format {
        Format::Ogg => &["appsrc", "opusenc", "oggmux", "filesink"],
        Format::Webm => &["appsrc", "opusenc", "webmmux", "filesink"],
        Format::Mp4 => &["appsrc", "voaacenc", "aacparse", "mp4mux", "filesink"],
        Format::Wav => &["appsrc", "wavenc", "filesink"],
        Format::Hls => &["appsrc", "voaacenc", "aacparse", "hlssink2", "mpegtsmux"],
        Format::Rtmp => &["appsrc", "voaacenc", "aacparse", "flvmux", "rtmp2sink"],
        Format::Srt => &["appsrc", "voaacenc", "aacparse", "mpegtsmux", "srtsink"],
        Format::Aic => &[],
    }
}

/// Whether this machine's GStreamer has what `format` needs; `Err` names what is missing.
pub fn available(format: Format) -> Result<(), Error> {
    init()?;
    let missing: Vec<&str> = required(format)
        .iter()
        .copied()
        .filter(|e| gst::ElementFactory::find(e).is_none())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Gst(format!(
            "{} output needs GStreamer elements {} (Debian: gstreamer1.0-plugins-base/-good/-bad)",
            format.name(),
            missing.join(", ")
        )))
    }
}

fn description(spec: &OutputSpec) -> String {
    const SRC: &str = "appsrc name=src format=time is-live=false block=false \
        caps=audio/x-raw,format=S16LE,layout=interleaved,rate=16000,channels=1 ! audioconvert";
    let opus = format!(
        "opusenc bitrate={} frame-size=20 bitrate-type=vbr audio-type=voice",
        spec.bitrate_bps
    );
    // AAC at 48 kHz: what HLS/RTMP/SRT players expect.
    let aac = format!(
        "audioresample ! audio/x-raw,rate=48000 ! voaacenc bitrate={} ! aacparse",
        spec.bitrate_bps.max(16_000)
    );
    const FILE: &str = "filesink name=sink buffer-mode=2 sync=false async=false";
    match spec.format {
        Format::Ogg => format!("{SRC} ! {opus} ! oggmux max-delay=500000000 ! {FILE}"),
        Format::Webm => format!(
            "{SRC} ! {opus} ! webmmux min-cluster-duration=1000000000 max-cluster-duration=1000000000 ! {FILE}"
        ),
        // AAC, not Opus: GStreamer 1.22's mp4mux writes the Opus `dOps` pre-skip in the wrong
        // byte order (312 becomes 14 337), so players drop the first 0.3 s; AAC-LC in MP4 is
        // also what every player plays.
        Format::Mp4 => format!("{SRC} ! {aac} ! mp4mux fragment-duration=1000 ! {FILE}"),
        Format::Wav => format!("{SRC} ! wavenc ! {FILE}"),
        Format::Hls => format!(
            "{SRC} ! {aac} ! hls.audio hlssink2 name=hls target-duration={} max-files=0 playlist-length=0 send-keyframe-requests=false",
            spec.segment_s
        ),
        Format::Rtmp => {
            format!("{SRC} ! {aac} ! flvmux streamable=true ! rtmp2sink name=sink sync=false")
        }
        // SRT's live mode drops what a burst sends faster than real time (a burst at the end
        // is lost when the socket closes), so the sink is paced by the media's timestamps.
        Format::Srt => format!(
            "{SRC} ! {aac} ! mpegtsmux alignment=7 ! srtsink name=sink sync=true wait-for-connection=false"
        ),
        Format::Aic => unreachable!("the .aic output is not a GStreamer pipeline"),
    }
}

/// What one poll of the pipeline's bus found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BusNews {
    /// The pipeline reached PLAYING (the sink took its first data).
    pub playing: bool,
    pub error: Option<String>,
}

#[derive(Debug)]
pub struct GstOutput {
    format: Format,
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
    bus: gst::Bus,
    /// Next timeline position to push.
    pos: u64,
    /// Positions not pushed yet because the output was full; pushed as silence when it drains.
    owed: u64,
    /// Frames dropped because the output was full.
    pub dropped: u64,
    pub location: String,
    playing: bool,
    /// Offline rendering: wait for the sink to take data instead of owing frames (never set
    /// for live media, whose path must not block).
    pub wait_for_room: bool,
}

/// How long an SRT output stays connected after its last data (see [`GstOutput::finish`]).
const SRT_DRAIN: Duration = Duration::from_millis(500);
/// How long an offline write waits for a sink that takes nothing.
const ROOM_TIMEOUT: Duration = Duration::from_secs(10);

impl GstOutput {
    /// Builds and starts the pipeline for `spec` writing to `target` (the claimed file or HLS
    /// directory; `None` for network outputs, which use `spec.location`).
    pub fn start(spec: &OutputSpec, target: Option<&Path>) -> Result<Self, Error> {
        available(spec.format)?;
        let desc = description(spec);
        let pipeline = gst::parse::launch(&desc)
            .map_err(|e| Error::Gst(format!("{} pipeline: {e}", spec.format.name())))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| Error::Gst("not a pipeline".into()))?;
        let src = pipeline
            .by_name("src")
            .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
            .ok_or_else(|| Error::Gst("appsrc missing".into()))?;
        src.set_max_bytes(MAX_QUEUED_BYTES * 2);
        let location = match spec.format {
            Format::Hls => {
                let dir = target.ok_or_else(|| Error::Spec("HLS needs a directory".into()))?;
                let hls = pipeline
                    .by_name("hls")
                    .ok_or_else(|| Error::Gst("hlssink2 missing".into()))?;
                let seg = dir.join("segment%05d.ts");
                let playlist = dir.join("index.m3u8");
                hls.set_property("location", path_str(&seg)?);
                hls.set_property("playlist-location", path_str(&playlist)?);
                playlist.display().to_string()
            }
            Format::Rtmp | Format::Srt => {
                let sink = pipeline
                    .by_name("sink")
                    .ok_or_else(|| Error::Gst("sink missing".into()))?;
                let prop = if spec.format == Format::Rtmp {
                    "location"
                } else {
                    "uri"
                };
                sink.set_property(prop, spec.location.as_str());
                spec.location.clone()
            }
            _ => {
                let file = target.ok_or_else(|| Error::Spec("file output needs a path".into()))?;
                let sink = pipeline
                    .by_name("sink")
                    .ok_or_else(|| Error::Gst("filesink missing".into()))?;
                sink.set_property("location", path_str(file)?);
                file.display().to_string()
            }
        };
        let bus = pipeline
            .bus()
            .ok_or_else(|| Error::Gst("pipeline without a bus".into()))?;
        if pipeline.set_state(gst::State::Playing).is_err() {
            let why = drain_error(&bus).unwrap_or_else(|| "state change refused".into());
            let _ = pipeline.set_state(gst::State::Null);
            return Err(Error::Gst(format!(
                "{} output {location}: {why}",
                spec.format.name()
            )));
        }
        Ok(Self {
            format: spec.format,
            pipeline,
            src,
            bus,
            pos: 0,
            owed: 0,
            dropped: 0,
            location,
            playing: false,
            wait_for_room: false,
        })
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Frames on the output's timeline (pushed + owed).
    pub fn frames(&self) -> u64 {
        self.pos + self.owed
    }

    /// Whether frames wait (owed silence, or `appsrc` holding data the sink has not taken).
    pub fn waiting(&self) -> bool {
        self.owed > 0 || self.src.current_level_bytes() >= MAX_QUEUED_BYTES
    }

    fn room(&self) -> bool {
        self.src.current_level_bytes() < MAX_QUEUED_BYTES
    }

    fn push(&mut self, frames: u64, pcm: Option<&[i16]>) -> Result<(), Error> {
        let n = frames as usize * FRAME_SAMPLES;
        let mut buf = gst::Buffer::with_size(n * 2).map_err(|e| Error::Gst(e.to_string()))?;
        {
            let b = buf.get_mut().expect("a new buffer is writable");
            b.set_pts(gst::ClockTime::from_nseconds(Timeline::pts_ns(self.pos)));
            b.set_duration(gst::ClockTime::from_nseconds(Timeline::pts_ns(frames)));
            let mut map = b.map_writable().map_err(|e| Error::Gst(e.to_string()))?;
            match pcm {
                Some(pcm) => {
                    for (d, s) in map.chunks_exact_mut(2).zip(pcm) {
                        d.copy_from_slice(&s.to_le_bytes());
                    }
                }
                None => map.fill(0),
            }
        }
        self.src.push_buffer(buf).map_err(|e| {
            Error::Gst(format!("{} output refused data: {e:?}", self.format.name()))
        })?;
        self.pos += frames;
        Ok(())
    }

    /// Writes `fill` silent frames, then `pcm` (one 20 ms frame). When the output is full the
    /// frame is not pushed but owed: the timeline keeps its place and gets silence once the
    /// sink drains. Returns whether `pcm` itself was pushed.
    pub fn write(&mut self, fill: u64, pcm: &[i16]) -> Result<bool, Error> {
        debug_assert_eq!(pcm.len(), FRAME_SAMPLES);
        if self.wait_for_room {
            let deadline = std::time::Instant::now() + ROOM_TIMEOUT;
            while !self.room() {
                if std::time::Instant::now() > deadline {
                    return Err(Error::Gst(format!(
                        "{} output took no data for {} s",
                        self.format.name(),
                        ROOM_TIMEOUT.as_secs()
                    )));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        self.owed += fill;
        while self.owed > 0 && self.room() {
            let n = self.owed.min(FILL_CHUNK_FRAMES);
            self.push(n, None)?;
            self.owed -= n;
        }
        if self.owed == 0 && self.room() {
            self.push(1, Some(pcm))?;
            Ok(true)
        } else {
            self.owed += 1;
            self.dropped += 1;
            Ok(false)
        }
    }

    /// Reads the bus without blocking.
    pub fn poll(&mut self) -> BusNews {
        let mut news = BusNews::default();
        while let Some(msg) = self.bus.pop() {
            match msg.view() {
                gst::MessageView::Error(e) => {
                    news.error.get_or_insert_with(|| describe(e));
                }
                gst::MessageView::StateChanged(s)
                    if s.src() == Some(self.pipeline.upcast_ref::<gst::Object>())
                        && s.current() == gst::State::Playing =>
                {
                    self.playing = true;
                }
                _ => {}
            }
        }
        // A sink that takes data without a state change (already PLAYING) still counts.
        news.playing = self.playing;
        news
    }

    /// Pushes what is owed, ends the stream and waits up to `timeout` for the muxer to finish
    /// (trailers, last fragment, playlist `#EXT-X-ENDLIST`). The pipeline is shut down either
    /// way.
    pub fn finish(mut self, timeout: Duration) -> Result<u64, Error> {
        let deadline = std::time::Instant::now() + timeout;
        while self.owed > 0 && std::time::Instant::now() < deadline {
            if self.room() {
                let n = self.owed.min(FILL_CHUNK_FRAMES);
                self.push(n, None)?;
                self.owed -= n;
            } else {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = self.src.end_of_stream();
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let msg = self.bus.timed_pop_filtered(
            gst::ClockTime::from_nseconds(left.as_nanos() as u64),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        );
        if self.format == Format::Srt
            && matches!(
                msg.as_ref().map(|m| m.view()),
                Some(gst::MessageView::Eos(_))
            )
        {
            // libsrt's live mode drops what is unsent when the socket closes, and the receiver
            // holds packets for its latency (120 ms by default) before it delivers them: keep
            // the connection open while the tail goes out.
            std::thread::sleep(SRT_DRAIN);
        }
        let _ = self.pipeline.set_state(gst::State::Null);
        match msg.as_ref().map(|m| m.view()) {
            Some(gst::MessageView::Eos(_)) => {
                if self.format == Format::Hls {
                    let media_s = Timeline::pts_ns(self.pos) as f64 / 1e9;
                    fix_last_extinf(Path::new(&self.location), media_s)?;
                }
                Ok(self.pos)
            }
            Some(gst::MessageView::Error(e)) => Err(Error::Gst(describe(e))),
            _ => Err(Error::Gst(format!(
                "{} output did not finish within {} ms",
                self.format.name(),
                timeout.as_millis()
            ))),
        }
    }
}

impl Drop for GstOutput {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

fn describe(e: &gst::message::Error) -> String {
    let from = e
        .src()
        .map(|s| s.name().to_string())
        .unwrap_or_else(|| "?".into());
    format!("{from}: {}", e.error())
}

fn drain_error(bus: &gst::Bus) -> Option<String> {
    let msg = bus.timed_pop_filtered(
        gst::ClockTime::from_mseconds(200),
        &[gst::MessageType::Error],
    )?;
    match msg.view() {
        gst::MessageView::Error(e) => Some(describe(e)),
        _ => None,
    }
}

/// hlssink2 (GStreamer 1.22) gives the last segment of a playlist the duration up to its last
/// buffer's start, one AAC frame (21 ms) short, so the playlist sums to less than the media.
/// The media time is known exactly from the timeline: the last `#EXTINF` becomes the media time
/// minus the segments before it (only a correction of under 100 ms is made; anything larger
/// means the playlist is not what we think and is left alone). Written to a temporary file and
/// renamed over the playlist, so a reader never sees half of it.
pub fn fix_last_extinf(playlist: &Path, media_s: f64) -> Result<(), Error> {
    let io = |e: std::io::Error| Error::Io(format!("{}: {e}", playlist.display()));
    let text = std::fs::read_to_string(playlist).map_err(io)?;
    let extinf = |l: &str| -> Option<f64> {
        l.strip_prefix("#EXTINF:")?
            .split(',')
            .next()?
            .trim()
            .parse()
            .ok()
    };
    let durations: Vec<f64> = text.lines().filter_map(extinf).collect();
    let Some((&last, before)) = durations.split_last() else {
        return Ok(());
    };
    let fixed = media_s - before.iter().sum::<f64>();
    if fixed <= 0.0 || (fixed - last).abs() >= 0.1 {
        return Ok(());
    }
    let at = text.rfind("#EXTINF:").expect("an #EXTINF line was parsed");
    let end = at + text[at..].find('\n').unwrap_or(text.len() - at);
    let out = format!("{}#EXTINF:{fixed:.6},{}", &text[..at], &text[end..]);
    let tmp = playlist.with_extension("m3u8.tmp");
    std::fs::write(&tmp, out).map_err(io)?;
    std::fs::rename(&tmp, playlist).map_err(io)
}

fn path_str(p: &Path) -> Result<&str, Error> {
    p.to_str()
        .ok_or_else(|| Error::Spec(format!("{} is not UTF-8", p.display())))
}

/// The directory an HLS output's playlist and segments are in.
pub fn hls_playlist(dir: &Path) -> PathBuf {
    dir.join("index.m3u8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_extinf_is_made_to_sum_to_the_media_time() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("index.m3u8");
        let text = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n\n#EXTINF:1.984,\ns0.ts\n#EXTINF:1.6213,\ns1.ts\n#EXT-X-ENDLIST\n";
        std::fs::write(&p, text).unwrap();
        fix_last_extinf(&p, 3.632).unwrap();
        let got = std::fs::read_to_string(&p).unwrap();
        assert_eq!(
            got,
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n\n#EXTINF:1.984,\ns0.ts\n#EXTINF:1.648000,\ns1.ts\n#EXT-X-ENDLIST\n"
        );
        // A discrepancy that large is not hlssink2's missing frame: left alone.
        fix_last_extinf(&p, 9.0).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), got);
    }
}
