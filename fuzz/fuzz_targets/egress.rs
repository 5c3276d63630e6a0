//! What an EgressService client controls: output specs (location and format strings, bitrate,
//! segment) never panic and never yield a spec outside their bounds; and the timeline, fed any
//! order of frame indices, keeps `len = last − first + 1` and never moves backwards.
#![no_main]

use aic_egress::timeline::{Placement, Timeline};
use aic_egress::{Format, OutputSpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (nums, rest) = data.split_at(8);
    let bitrate = u32::from_le_bytes(nums[..4].try_into().unwrap());
    let segment = u32::from_le_bytes(nums[4..].try_into().unwrap());
    if let Ok(text) = std::str::from_utf8(rest) {
        let (fmt, loc) = text.split_once('\n').unwrap_or(("", text));
        let format = Format::parse(fmt).ok();
        if let Ok(spec) = OutputSpec::parse(loc, format) {
            assert!(!spec.location.is_empty());
            if let Ok(s) = spec.clone().with_bitrate(bitrate) {
                assert!((6_000..=256_000).contains(&s.bitrate_bps));
            }
            if let Ok(s) = spec.with_segment_s(segment) {
                assert!((1..=60).contains(&s.segment_s));
            }
        }
    }
    // The same bytes as frame indices (u16 steps so runs stay short).
    let mut t = Timeline::new();
    let mut max: Option<u64> = None;
    for c in rest.chunks_exact(2) {
        let i = u64::from(u16::from_le_bytes([c[0], c[1]]));
        match t.place(i) {
            Placement::Write { .. } => {
                assert!(max.is_none_or(|m| i > m));
                max = Some(i);
            }
            Placement::Behind => assert!(max.is_some_and(|m| i <= m)),
        }
        if let (Some(first), Some(m)) = (t.first(), max) {
            assert_eq!(t.len(), m - first + 1);
        }
    }
});
