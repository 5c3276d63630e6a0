//! The native `.aic` output: the stream's own AIC packets in container version 2
//! (`docs/bitstream.md` §3.2), one page flushed per second, so a crash leaves a file that
//! decodes up to the last flushed page and a recording costs the codec's bitrate plus ~2 %.
//!
//! Timeline positions are the page frame indices (the first frame is index 0). A missing frame
//! (a gap on the timeline, or a frame the pipeline could not code) is stored as lost, which the
//! decoder conceals (AIC fades its latent to silence within ~20 frames), up to the container's
//! bound of [`MAX_LOST_RUN`] in a row; past that, the last packet that coded silence (the
//! caller marks those `quiet`, or configures one) keeps the timeline going. A longer run with
//! no silent packet known fails the output with a clear error rather than writing a file its
//! readers refuse; everything flushed before stays readable.

use std::fs::File;
use std::path::Path;

use aic_codec::bitstream::container::{ArchiveWriter, Header, MAX_LOST_RUN};
use aic_codec::codec::CodecInfo;

use crate::Error;

/// Frames per page: 50 = 1 s, what a crash can lose at most.
pub const PAGE_FRAMES: usize = 50;

#[derive(Debug)]
pub struct AicOutput {
    w: ArchiveWriter<File>,
    /// Next timeline position.
    pos: u64,
    quiet: Option<Vec<u8>>,
    /// Lost frames stored in a row so far.
    lost_run: u32,
    pub location: String,
}

impl AicOutput {
    /// Writes the header (flushed) to the claimed `file`.
    pub fn start(info: &CodecInfo, file: File, path: &Path) -> Result<Self, Error> {
        let header = Header {
            info: info.clone(),
            total_samples: 0,
        };
        let w = ArchiveWriter::new(file, &header)
            .map_err(|e| Error::Archive(e.to_string()))?
            .with_page_frames(PAGE_FRAMES);
        Ok(Self {
            w,
            pos: 0,
            quiet: None,
            lost_run: 0,
            location: path.display().to_string(),
        })
    }

    /// A packet that codes silence, used to fill gaps (e.g. the encoder's output for a frame of
    /// zeros) until the stream itself provides one.
    pub fn set_quiet(&mut self, packet: Vec<u8>) {
        if !packet.is_empty() {
            self.quiet = Some(packet);
        }
    }

    /// Writes `fill` missing frames, then `packet` (`None`: missing too). `quiet` marks a
    /// packet that codes silence.
    pub fn write(&mut self, fill: u64, packet: Option<&[u8]>, quiet: bool) -> Result<(), Error> {
        for _ in 0..fill {
            self.missing()?;
        }
        match packet {
            None => self.missing()?,
            Some(p) => {
                self.push(Some(p))?;
                self.lost_run = 0;
                if quiet && self.quiet.as_deref() != Some(p) {
                    self.quiet = Some(p.to_vec());
                }
            }
        }
        Ok(())
    }

    fn missing(&mut self) -> Result<(), Error> {
        if self.lost_run < MAX_LOST_RUN {
            self.push(None)?;
            self.lost_run += 1;
            return Ok(());
        }
        let Some(q) = self.quiet.take() else {
            return Err(Error::Archive(format!(
                "over {MAX_LOST_RUN} missing frames in a row at {} ms and no silent packet to fill them",
                self.pos * 20
            )));
        };
        let r = self.push(Some(&q));
        self.quiet = Some(q);
        self.lost_run = 0;
        r
    }

    fn push(&mut self, packet: Option<&[u8]>) -> Result<(), Error> {
        self.w
            .push(self.pos, packet)
            .map_err(|e| Error::Archive(e.to_string()))?;
        self.pos += 1;
        Ok(())
    }

    /// Frames on the archive's timeline.
    pub fn frames(&self) -> u64 {
        self.pos
    }

    /// Bytes written to the file (header and flushed pages).
    pub fn bytes(&self) -> u64 {
        self.w.bytes_written()
    }

    /// Writes the pending page now.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.w
            .flush_page()
            .map_err(|e| Error::Archive(e.to_string()))
    }

    /// Writes the last page and syncs the file to disk.
    pub fn finish(self) -> Result<u64, Error> {
        let frames = self.pos;
        let f = self.w.finish().map_err(|e| Error::Archive(e.to_string()))?;
        f.sync_all()
            .map_err(|e| Error::Io(format!("syncing {}: {e}", self.location)))?;
        Ok(frames)
    }
}

#[cfg(test)]
mod tests {
    use aic_codec::bitstream::container::PacketReader;
    use aic_codec::codec::OperatingPoint;

    use super::*;

    fn info() -> CodecInfo {
        CodecInfo {
            codec: "aic".into(),
            model_id: "aic-speech-v2".into(),
            sample_rate: 16_000,
            frame_samples: 320,
            delay_samples: 0,
            point: OperatingPoint::Level(2),
        }
    }

    fn read_all(path: &Path) -> Vec<Option<Vec<u8>>> {
        let mut r = PacketReader::new(File::open(path).unwrap()).unwrap();
        let mut out = Vec::new();
        while let Some(p) = r.next_packet() {
            out.push(p.unwrap().map(<[u8]>::to_vec));
        }
        out
    }

    #[test]
    fn gaps_are_lost_frames_then_the_quiet_packet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.aic");
        let f = File::create(&path).unwrap();
        let mut o = AicOutput::start(&info(), f, &path).unwrap();
        o.write(0, Some(&[1, 2, 3]), false).unwrap();
        o.write(2, Some(&[4]), false).unwrap(); // a short gap: 2 lost frames
        o.write(0, Some(&[9, 9]), true).unwrap();
        let run = u64::from(MAX_LOST_RUN);
        o.write(run + 2, None, false).unwrap(); // 53 missing: 50 lost, the quiet packet, 2 lost
        assert_eq!(o.finish().unwrap(), 5 + run + 3);
        let got = read_all(&path);
        let mut want: Vec<Option<Vec<u8>>> = vec![
            Some(vec![1, 2, 3]),
            None,
            None,
            Some(vec![4]),
            Some(vec![9, 9]),
        ];
        want.extend(std::iter::repeat_n(None, MAX_LOST_RUN as usize));
        want.extend([Some(vec![9, 9]), None, None]);
        assert_eq!(got, want);
    }

    #[test]
    fn a_long_gap_with_nothing_to_fill_it_is_an_error_not_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.aic");
        let f = File::create(&path).unwrap();
        let mut o = AicOutput::start(&info(), f, &path).unwrap();
        o.write(0, Some(&[1]), false).unwrap();
        let e = o.write(500, Some(&[2]), false).unwrap_err();
        assert!(e.to_string().contains("no silent packet"), "{e}");
        // What was accepted before is still there and the file reads cleanly.
        o.flush().unwrap();
        let got = read_all(&path);
        assert_eq!(got[0], Some(vec![1]));
        assert_eq!(got.len(), 1 + MAX_LOST_RUN as usize);
    }

    #[test]
    fn each_flushed_page_is_on_disk_before_finish() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.aic");
        let f = File::create(&path).unwrap();
        let mut o = AicOutput::start(&info(), f, &path).unwrap();
        for i in 0..(PAGE_FRAMES as u64 * 2 + 7) {
            o.write(0, Some(&[i as u8 + 1]), false).unwrap();
        }
        // Two whole pages are on disk; the 7 pending frames are not (a crash loses < 1 s).
        assert_eq!(read_all(&path).len(), PAGE_FRAMES * 2);
        std::mem::forget(o); // as if killed: nothing more is written
        assert_eq!(read_all(&path).len(), PAGE_FRAMES * 2);
    }
}
