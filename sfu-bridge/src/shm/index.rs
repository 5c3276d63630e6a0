//! The ring protocol on four shared words, with no memory access of its own: which slot to
//! fill or drain next, when a slot may be reused, and when the other side must be woken.
//!
//! Each word has exactly one writer:
//! * `head` — slots published by the producer (wrapping `u32`),
//! * `tail` — slots released by the consumer (wrapping `u32`),
//! * `rx_waiting` — set by the consumer while it may sleep for data,
//! * `tx_waiting` — set by the producer while it may sleep for space.
//!
//! Each side keeps its own index privately and only *publishes* it: a peer that scribbles over
//! our word cannot change what we write next, and a peer's word is range-checked
//! (`0 <= head - tail <= slots`) before it is believed, so a corrupt or hostile peer gives
//! [`Corrupt`], never an out-of-bounds slot.
//!
//! Ordering: the producer fills a slot, then stores `head` with `Release`; the consumer loads
//! `head` with `Acquire` before reading the slot (and symmetrically `tail` hands a drained slot
//! back). Sleeping uses the Dekker pattern with two `SeqCst` fences: the sleeper stores its
//! `*_waiting` flag, fences, re-checks the index; the waker stores the index, fences, loads the
//! flag. At least one of them sees the other's store, so a wake-up is never lost. The loom
//! tests at the bottom check both properties on every interleaving (`scripts/test.sh` runs
//! them with `RUSTFLAGS="--cfg loom"`).

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, Ordering, fence};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU32, Ordering, fence};

/// The peer's published index is impossible: the mapping is corrupt or the peer is hostile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Corrupt {
    pub head: u32,
    pub tail: u32,
}

/// The shared words of one ring (see the module docs for who writes which).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Words<'a> {
    pub head: &'a AtomicU32,
    pub tail: &'a AtomicU32,
    pub rx_waiting: &'a AtomicU32,
    pub tx_waiting: &'a AtomicU32,
}

/// The producer's side: its private `head`.
#[derive(Debug)]
pub(crate) struct Producer {
    head: u32,
    slots: u32,
}

impl Producer {
    /// `slots` must be a power of two (so `index % slots` survives the `u32` wrap).
    pub fn new(slots: u32) -> Self {
        debug_assert!(slots.is_power_of_two());
        Self { head: 0, slots }
    }

    /// The slot to fill next, or `None` while the ring is full.
    pub fn reserve(&self, w: Words<'_>) -> Result<Option<u32>, Corrupt> {
        // Acquire: the consumer's reads of the slot we are about to overwrite happened before.
        let tail = w.tail.load(Ordering::Acquire);
        let used = self.head.wrapping_sub(tail);
        if used > self.slots {
            return Err(Corrupt {
                head: self.head,
                tail,
            });
        }
        Ok((used < self.slots).then_some(self.head % self.slots))
    }

    /// Publishes the slot returned by [`reserve`](Self::reserve). True when the consumer may be
    /// asleep and must be woken.
    pub fn publish(&mut self, w: Words<'_>) -> bool {
        self.head = self.head.wrapping_add(1);
        // Release: the slot's bytes are visible to whoever acquires this head.
        w.head.store(self.head, Ordering::Release);
        fence(Ordering::SeqCst);
        w.rx_waiting.load(Ordering::Relaxed) != 0
    }

    /// Announces that the producer is about to sleep for space, then re-checks. True: still
    /// full, sleep (the consumer will see the flag); false: space appeared, don't.
    pub fn prepare_wait(&self, w: Words<'_>) -> Result<bool, Corrupt> {
        w.tx_waiting.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let full = self.reserve(w)?.is_none();
        if !full {
            self.end_wait(w);
        }
        Ok(full)
    }

    pub fn end_wait(&self, w: Words<'_>) {
        w.tx_waiting.store(0, Ordering::Relaxed);
    }
}

/// The consumer's side: its private `tail`.
#[derive(Debug)]
pub(crate) struct Consumer {
    tail: u32,
    slots: u32,
}

impl Consumer {
    pub fn new(slots: u32) -> Self {
        debug_assert!(slots.is_power_of_two());
        Self { tail: 0, slots }
    }

    /// The slot to read next, or `None` while the ring is empty.
    pub fn peek(&self, w: Words<'_>) -> Result<Option<u32>, Corrupt> {
        // Acquire: the producer's writes of the slot happened before.
        let head = w.head.load(Ordering::Acquire);
        let used = head.wrapping_sub(self.tail);
        if used > self.slots {
            return Err(Corrupt {
                head,
                tail: self.tail,
            });
        }
        Ok((used > 0).then_some(self.tail % self.slots))
    }

    /// Hands the slot returned by [`peek`](Self::peek) back. True when the producer may be
    /// asleep and must be woken.
    pub fn release(&mut self, w: Words<'_>) -> bool {
        self.tail = self.tail.wrapping_add(1);
        // Release: our reads of the slot are done before the producer may reuse it.
        w.tail.store(self.tail, Ordering::Release);
        fence(Ordering::SeqCst);
        w.tx_waiting.load(Ordering::Relaxed) != 0
    }

    /// Announces that the consumer is about to sleep for data, then re-checks. True: still
    /// empty, sleep; false: data appeared, don't.
    pub fn prepare_wait(&self, w: Words<'_>) -> Result<bool, Corrupt> {
        w.rx_waiting.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let empty = self.peek(w)?.is_none();
        if !empty {
            self.end_wait(w);
        }
        Ok(empty)
    }

    pub fn end_wait(&self, w: Words<'_>) {
        w.rx_waiting.store(0, Ordering::Relaxed);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn words(a: &[AtomicU32; 4]) -> Words<'_> {
        Words {
            head: &a[0],
            tail: &a[1],
            rx_waiting: &a[2],
            tx_waiting: &a[3],
        }
    }

    #[test]
    fn fills_drains_and_wraps_u32() {
        let a = [const { AtomicU32::new(0) }; 4];
        let w = words(&a);
        let mut p = Producer::new(4);
        let mut c = Consumer::new(4);
        // Start just below the u32 wrap on both sides.
        p.head = u32::MAX - 5;
        c.tail = u32::MAX - 5;
        a[0].store(p.head, Ordering::Relaxed);
        a[1].store(c.tail, Ordering::Relaxed);
        let mut expect = Vec::new();
        for round in 0..5 {
            for _ in 0..4 {
                let s = p.reserve(w).unwrap().expect("space");
                expect.push(s);
                assert!(!p.publish(w));
            }
            assert_eq!(p.reserve(w).unwrap(), None, "full after 4 (round {round})");
            for _ in 0..4 {
                let s = c.peek(w).unwrap().expect("data");
                assert_eq!(s, expect.remove(0));
                assert!(!c.release(w));
            }
            assert_eq!(c.peek(w).unwrap(), None);
        }
    }

    #[test]
    fn hostile_indices_are_corrupt_not_out_of_bounds() {
        let a = [const { AtomicU32::new(0) }; 4];
        let w = words(&a);
        let p = Producer::new(8);
        let c = Consumer::new(8);
        a[0].store(9, Ordering::Relaxed); // 9 slots "published" in an 8-slot ring
        assert_eq!(c.peek(w), Err(Corrupt { head: 9, tail: 0 }));
        a[1].store(3, Ordering::Relaxed); // consumer "released" slots never published
        assert!(p.reserve(w).is_err());
    }

    #[test]
    fn wait_flags_tell_the_other_side_to_wake() {
        let a = [const { AtomicU32::new(0) }; 4];
        let w = words(&a);
        let mut p = Producer::new(2);
        let mut c = Consumer::new(2);
        assert!(c.prepare_wait(w).unwrap(), "empty: may sleep");
        p.reserve(w).unwrap().unwrap();
        assert!(p.publish(w), "consumer announced sleep: wake it");
        c.end_wait(w);
        p.reserve(w).unwrap().unwrap();
        assert!(!p.publish(w));
        assert!(p.prepare_wait(w).unwrap(), "full: may sleep");
        c.peek(w).unwrap().unwrap();
        assert!(c.release(w), "producer announced sleep: wake it");
        assert!(!c.prepare_wait(w).unwrap(), "data there: don't sleep");
    }
}

/// Every interleaving of a producer and a consumer thread: slot contents arrive intact and in
/// order (loom's `UnsafeCell` flags any slot access the orderings above fail to protect), and no
/// wake-up is lost (a lost one leaves a thread blocked forever, which loom reports as a
/// deadlock). Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p aic-sfu-bridge
/// --lib --release shm::index`.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::{Arc, Condvar, Mutex};

    /// An eventfd: a counter and a condition variable.
    #[derive(Default)]
    struct Event {
        count: Mutex<u64>,
        cv: Condvar,
    }
    impl Event {
        fn notify(&self) {
            *self.count.lock().unwrap() += 1;
            self.cv.notify_one();
        }
        fn wait(&self) {
            let mut c = self.count.lock().unwrap();
            while *c == 0 {
                c = self.cv.wait(c).unwrap();
            }
            *c = 0;
        }
    }

    struct Shared {
        words: [AtomicU32; 4],
        slots: [UnsafeCell<u32>; 2],
        data: Event,
        space: Event,
    }
    // SAFETY: the slot cells are only touched under the ring protocol, which is what this test
    // checks (loom's UnsafeCell panics on any unsynchronised access).
    unsafe impl Sync for Shared {}

    impl Shared {
        fn w(&self) -> Words<'_> {
            Words {
                head: &self.words[0],
                tail: &self.words[1],
                rx_waiting: &self.words[2],
                tx_waiting: &self.words[3],
            }
        }
    }

    #[test]
    fn spsc_in_order_no_lost_wakeup() {
        const N: u32 = 3;
        loom::model(|| {
            let s = Arc::new(Shared {
                words: [
                    AtomicU32::new(0),
                    AtomicU32::new(0),
                    AtomicU32::new(0),
                    AtomicU32::new(0),
                ],
                slots: [UnsafeCell::new(0), UnsafeCell::new(0)],
                data: Event::default(),
                space: Event::default(),
            });
            let s2 = s.clone();
            let producer = loom::thread::spawn(move || {
                let mut p = Producer::new(2);
                for v in 1..=N {
                    let slot = loop {
                        if let Some(slot) = p.reserve(s2.w()).unwrap() {
                            break slot;
                        }
                        if p.prepare_wait(s2.w()).unwrap() {
                            s2.space.wait();
                            p.end_wait(s2.w());
                        }
                    };
                    // SAFETY: the slot is reserved (the consumer released it with Release,
                    // `reserve` acquired that).
                    s2.slots[slot as usize].with_mut(|x| unsafe { *x = v });
                    if p.publish(s2.w()) {
                        s2.data.notify();
                    }
                }
            });
            let mut c = Consumer::new(2);
            for v in 1..=N {
                let slot = loop {
                    if let Some(slot) = c.peek(s.w()).unwrap() {
                        break slot;
                    }
                    if c.prepare_wait(s.w()).unwrap() {
                        s.data.wait();
                        c.end_wait(s.w());
                    }
                };
                // SAFETY: the slot is published (`peek` acquired the producer's Release).
                let got = s.slots[slot as usize].with(|x| unsafe { *x });
                assert_eq!(got, v);
                if c.release(s.w()) {
                    s.space.notify();
                }
            }
            producer.join().unwrap();
        });
    }
}
