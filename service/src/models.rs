//! The served models side by side: each with its own pipeline (own workers and model sessions)
//! and its own measured rate–quality table; requests pick one by `model_id` (empty: the
//! default, the first given). One slot count for the whole server ([`Slots`]): a session takes
//! a slot when it opens, whichever model it uses, and gives it back when its pipeline stream is
//! done. Frames sent to the wrong model are told apart from damaged ones ([`FrameCheck`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aic_codec::bitstream::frame::EntropyModel;
use aic_pipeline::driver::{Pipeline, StreamSender};
use aic_pipeline::engine::{EngineError, Output, StreamConfig};
use aic_pipeline::hints::RateQualityTable;
use aic_pipeline::model::AicModel;
use tonic::Status;

use crate::svc::{ex, open_error};

/// One served model.
pub(crate) struct Served {
    pub(crate) model: Arc<AicModel>,
    pub(crate) pipeline: Arc<Pipeline>,
    /// The model's measured rate–quality table (`rate_quality.json` beside its manifest), or
    /// why `Hints` is unavailable for it.
    pub(crate) table: Result<RateQualityTable, String>,
}

impl Served {
    pub(crate) fn id(&self) -> &str {
        &self.model.manifest.model_id
    }
}

/// Every served model, the default first.
pub(crate) struct Models {
    all: Vec<Served>,
}

impl Models {
    /// `all` must not be empty; its first is the default.
    pub(crate) fn new(all: Vec<Served>) -> Self {
        assert!(!all.is_empty(), "at least one model is served");
        Self { all }
    }

    pub(crate) fn all(&self) -> &[Served] {
        &self.all
    }

    pub(crate) fn default_model(&self) -> &Served {
        &self.all[0]
    }

    /// The model a request names (`model_id`; empty = the default); INVALID_ARGUMENT naming
    /// the served ones otherwise.
    pub(crate) fn pick(&self, model_id: &str) -> Result<&Served, Status> {
        if model_id.is_empty() {
            return Ok(self.default_model());
        }
        self.all.iter().find(|s| s.id() == model_id).ok_or_else(|| {
            Status::invalid_argument(format!(
                "model_id {} is not served here (served: {}; empty = {})",
                ex(model_id),
                self.ids().join(", "),
                self.default_model().id()
            ))
        })
    }

    pub(crate) fn ids(&self) -> Vec<&str> {
        self.all.iter().map(Served::id).collect()
    }

    /// The frame check of a decode stream of `served`: the other models' frames are told apart.
    pub(crate) fn frame_check(&self, served: &Served) -> FrameCheck {
        FrameCheck {
            own: served.model.entropy.clone(),
            own_id: served.id().to_owned(),
            others: self
                .all
                .iter()
                .filter(|s| s.id() != served.id())
                .map(|s| (s.id().to_owned(), s.model.entropy.clone()))
                .collect(),
            good: 0,
            run: 0,
            indices: Vec::with_capacity(16),
        }
    }
}

/// The server's one slot count: at most `max` pipeline streams open at once, over every model
/// and the bridge together.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    used: AtomicUsize,
}

/// One taken slot; given back when dropped.
#[derive(Debug)]
pub struct Slot(Arc<Slots>);

impl Slots {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            used: AtomicUsize::new(0),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// A free slot, or None when all `max` are taken.
    pub fn take(self: &Arc<Self>) -> Option<Slot> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }

    /// Opens a stream on `pipeline` holding one of the server's slots: the slot comes first
    /// (none free: the same "all N slots" refusal as a full pipeline), then the pipeline's own.
    pub(crate) fn open(
        self: &Arc<Self>,
        pipeline: &Pipeline,
        cfg: StreamConfig,
    ) -> Result<(StreamSender, std::sync::mpsc::Receiver<Output>, Arc<Slot>), EngineError> {
        let slot = self.take().ok_or(EngineError::Full(self.max))?;
        let (tx, rx) = pipeline.open(cfg)?.split();
        Ok((tx, rx, Arc::new(slot)))
    }

    /// [`open`](Self::open) with a full server or pipeline as its gRPC status.
    pub(crate) fn open_status(
        self: &Arc<Self>,
        pipeline: &Pipeline,
        cfg: StreamConfig,
    ) -> Result<(StreamSender, std::sync::mpsc::Receiver<Output>, Arc<Slot>), Status> {
        self.open(pipeline, cfg)
            .map_err(|e| open_error(e, self.max))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Consecutive frames that fail the stream's model yet pass another served model's integrity
/// check before the stream is ended (once frames of its own model have passed: a damaged frame
/// passes some other model's 8-bit CRC by chance one time in 256, so one is not enough).
const WRONG_MODEL_RUN: u32 = 3;

/// Tells a decode stream's frames of another served model from damaged ones. Each frame's CRC
/// is keyed by its model's tag: a frame that fails the stream's model but passes another's was
/// encoded with that other model, and decoding it would only give concealment. The stream
/// ends with INVALID_ARGUMENT naming the model, when its first frame is such a frame, or
/// after [`WRONG_MODEL_RUN`] in a row; other frames that fail are concealed as before.
pub(crate) struct FrameCheck {
    own: EntropyModel,
    own_id: String,
    others: Vec<(String, EntropyModel)>,
    /// Frames that passed the stream's own model.
    good: u64,
    /// Frames in a row that failed the own model and passed another.
    run: u32,
    indices: Vec<u16>,
}

impl FrameCheck {
    /// Checks frame number `n` (0-based) of the stream; an empty frame (a loss) is not looked at.
    pub(crate) fn check(&mut self, n: u64, frame: &[u8]) -> Result<(), Status> {
        if frame.is_empty() || self.others.is_empty() {
            return Ok(());
        }
        if self.own.read_frame(frame, &mut self.indices).is_ok() {
            self.good += 1;
            self.run = 0;
            return Ok(());
        }
        let Some((other, _)) = self
            .others
            .iter()
            .find(|(_, e)| e.read_frame(frame, &mut self.indices).is_ok())
        else {
            self.run = 0; // damaged: concealed
            return Ok(());
        };
        self.run += 1;
        if self.good == 0 || self.run >= WRONG_MODEL_RUN {
            return Err(Status::invalid_argument(format!(
                "frame {n} was encoded with model {other:?}, not this stream's model {:?} \
                 (each frame's CRC is keyed by its model); open the stream with model_id {other:?}",
                self.own_id
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_over_everyone_and_given_back() {
        let s = Slots::new(2);
        let a = s.take().unwrap();
        let b = s.take().unwrap();
        assert!(s.take().is_none());
        assert_eq!(s.in_use(), 2);
        drop(a);
        let c = s.take().unwrap();
        assert!(s.take().is_none());
        drop((b, c));
        assert_eq!(s.in_use(), 0);
    }

    fn entropy(tag: [u8; 4]) -> EntropyModel {
        let t = aic_codec::bitstream::range::FreqTable::new(&[2048; 16]).unwrap();
        EntropyModel::new(vec![t.clone(), t], tag).unwrap()
    }

    fn check() -> FrameCheck {
        FrameCheck {
            own: entropy(*b"aaaa"),
            own_id: "a".into(),
            others: vec![("b".into(), entropy(*b"bbbb"))],
            good: 0,
            run: 0,
            indices: Vec::new(),
        }
    }

    /// A frame of `e` that the other model's CRC rejects (the CRC is 8 bits: pick one).
    fn frame_of(e: &EntropyModel, not: &EntropyModel) -> Vec<u8> {
        let mut out = Vec::new();
        let mut ix = Vec::new();
        for i in 0..16u16 {
            e.write_frame(0, &[i, 15 - i], &mut out).unwrap();
            if not.read_frame(&out, &mut ix).is_err() {
                return out;
            }
        }
        panic!("no frame told apart");
    }

    #[test]
    fn another_models_frames_are_named_and_damaged_ones_concealed() {
        let (a, b) = (entropy(*b"aaaa"), entropy(*b"bbbb"));
        let fa = frame_of(&a, &b);
        let fb = frame_of(&b, &a);
        // The first frame already belongs to the other model: told at once.
        let e = check().check(0, &fb).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("\"b\""), "{e}");
        // After good frames, one stray frame is taken for damage; three in a row are not.
        let mut c = check();
        c.check(0, &fa).unwrap();
        c.check(1, &fb).unwrap();
        c.check(2, &fa).unwrap();
        c.check(3, &fb).unwrap();
        c.check(4, &fb).unwrap();
        assert!(c.check(5, &fb).is_err());
        // Losses and frames no model accepts are not errors.
        let mut c = check();
        c.check(0, &[]).unwrap();
        let mut junk = fa.clone();
        junk[1] ^= 0x5A;
        if a.read_frame(&junk, &mut Vec::new()).is_err()
            && b.read_frame(&junk, &mut Vec::new()).is_err()
        {
            c.check(1, &junk).unwrap();
        }
    }
}
