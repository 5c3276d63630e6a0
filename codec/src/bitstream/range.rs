//! The AIC range coder: a byte-oriented arithmetic coder with a minimal ending.
//!
//! Why our own and not a crate: the bytes it writes *are* the AIC wire format, so they must be
//! specified (`docs/bitstream.md`) and must never change under a dependency upgrade; and AIC's
//! lowest level carries ~10 bits per frame, where the 2–4 bytes a general coder spends on its
//! final flush would double the bitrate. This coder ends with the fewest bytes that pin the
//! interval, then drops trailing zero bytes (the decoder reads zeros past the end).
//!
//! Design (the classic carry-propagating range coder, as in LZMA / Opus' `ec_enc`): a 32-bit
//! `range`, a 33-bit `low` whose carry ripples into a cached byte and a run of pending `0xFF`
//! bytes, renormalised a byte at a time whenever `range < 2^24`. Symbol probabilities are
//! integer frequencies summing to `2^PRECISION_BITS`.

use super::BitstreamError;

/// Frequencies of every table sum to `1 << PRECISION_BITS`.
pub const PRECISION_BITS: u32 = 15;
const TOTAL: u32 = 1 << PRECISION_BITS;
const TOP: u32 = 1 << 24;

/// A static symbol model: cumulative frequencies over an alphabet of `len()` symbols.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreqTable {
    /// `cum[s]..cum[s+1]` is symbol `s`'s slice of `0..TOTAL`; `cum[0] = 0`, `cum[n] = TOTAL`.
    cum: Vec<u32>,
}

impl FreqTable {
    /// Every frequency must be ≥ 1 (every symbol stays codable) and they must sum to 2^15.
    pub fn new(freqs: &[u32]) -> Result<Self, BitstreamError> {
        if freqs.is_empty() || freqs.len() > TOTAL as usize {
            return Err(BitstreamError::BadFreqTable(format!(
                "{} symbols (expected 1..={TOTAL})",
                freqs.len()
            )));
        }
        let mut cum = Vec::with_capacity(freqs.len() + 1);
        let mut acc = 0u64;
        cum.push(0);
        for (i, &f) in freqs.iter().enumerate() {
            if f == 0 {
                return Err(BitstreamError::BadFreqTable(format!(
                    "symbol {i} has frequency 0"
                )));
            }
            acc += u64::from(f);
            if acc > u64::from(TOTAL) {
                break;
            }
            cum.push(acc as u32);
        }
        if acc != u64::from(TOTAL) {
            return Err(BitstreamError::BadFreqTable(format!(
                "frequencies sum to {acc}, expected {TOTAL}"
            )));
        }
        Ok(Self { cum })
    }

    /// A flat table over `n` symbols (n ≤ 2^15), for models without statistics and for tests.
    pub fn uniform(n: usize) -> Result<Self, BitstreamError> {
        if n == 0 || n > TOTAL as usize {
            return Err(BitstreamError::BadFreqTable(format!("{n} symbols")));
        }
        let base = TOTAL / n as u32;
        let extra = (TOTAL - base * n as u32) as usize;
        let freqs: Vec<u32> = (0..n).map(|i| base + u32::from(i < extra)).collect();
        Self::new(&freqs)
    }

    pub fn len(&self) -> usize {
        self.cum.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn range_of(&self, s: usize) -> (u32, u32) {
        (self.cum[s], self.cum[s + 1] - self.cum[s])
    }

    /// Ideal code length of `s` in bits (for rate estimates).
    pub fn cost_bits(&self, s: usize) -> f64 {
        let (_, f) = self.range_of(s);
        f64::from(PRECISION_BITS) - f64::from(f).log2()
    }

    /// The symbol whose slice holds `target` (binary search over the cumulative table).
    fn find(&self, target: u32) -> usize {
        // cum is strictly increasing; find the last s with cum[s] <= target.
        self.cum.partition_point(|&c| c <= target) - 1
    }
}

/// Encodes symbols into a byte vector it borrows (cleared by the caller), allocation-free
/// once the vector has capacity.
#[derive(Debug)]
pub struct RangeEncoder<'a> {
    low: u64,
    range: u32,
    /// The byte that a carry may still change; `None` before the first byte is settled.
    cache: Option<u8>,
    /// Number of 0xFF bytes waiting behind `cache` for the carry to be known.
    pending_ff: usize,
    out: &'a mut Vec<u8>,
}

impl<'a> RangeEncoder<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        Self {
            low: 0,
            range: u32::MAX,
            cache: None,
            pending_ff: 0,
            out,
        }
    }

    pub fn encode(&mut self, table: &FreqTable, symbol: usize) -> Result<(), BitstreamError> {
        if symbol >= table.len() {
            return Err(BitstreamError::SymbolOutOfRange {
                symbol,
                alphabet: table.len(),
            });
        }
        let (start, size) = table.range_of(symbol);
        let r = self.range >> PRECISION_BITS;
        self.low += u64::from(r) * u64::from(start);
        self.range = r * size;
        while self.range < TOP {
            self.range <<= 8;
            self.shift_low();
        }
        Ok(())
    }

    /// Moves the top byte of `low` out, resolving carries.
    fn shift_low(&mut self) {
        let carry = (self.low >> 32) as u8;
        let top = (self.low >> 24) as u8; // bits 24..32
        if carry != 0 || top != 0xFF {
            if let Some(c) = self.cache {
                self.out.push(c.wrapping_add(carry));
            }
            // The very first window can never carry (low + range <= 2^32 there), so dropping
            // the placeholder byte LZMA writes first loses nothing.
            for _ in 0..self.pending_ff {
                self.out.push(0xFFu8.wrapping_add(carry));
            }
            self.pending_ff = 0;
            self.cache = Some(top);
        } else {
            self.pending_ff += 1;
        }
        self.low = (self.low << 8) & 0xFFFF_FFFF;
    }

    /// Ends the stream with the fewest bytes that identify the final interval, and drops
    /// trailing zero bytes (the decoder supplies zeros past the end).
    pub fn finish(mut self) {
        let hi = self.low + u64::from(self.range); // exclusive
        // Pick the value in [low, hi) with the most trailing zero bits, byte-granular.
        for k in (0..=32u32).rev().step_by(8) {
            let unit = 1u64 << k;
            let v = self.low.div_ceil(unit) * unit;
            if v < hi {
                self.low = v;
                break;
            }
        }
        for _ in 0..5 {
            self.shift_low();
        }
        while self.out.last() == Some(&0) {
            self.out.pop();
        }
    }
}

/// Decodes symbols from a byte slice; reads past the end as zeros.
#[derive(Debug)]
pub struct RangeDecoder<'a> {
    code: u32,
    range: u32,
    input: &'a [u8],
    pos: usize,
}

impl<'a> RangeDecoder<'a> {
    pub fn new(input: &'a [u8]) -> Self {
        let mut d = Self {
            code: 0,
            range: u32::MAX,
            input,
            pos: 0,
        };
        for _ in 0..4 {
            d.code = (d.code << 8) | u32::from(d.next_byte());
        }
        d
    }

    fn next_byte(&mut self) -> u8 {
        let b = self.input.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    pub fn decode(&mut self, table: &FreqTable) -> Result<usize, BitstreamError> {
        let r = self.range >> PRECISION_BITS;
        let target = self.code / r;
        if target >= TOTAL {
            // Only reachable with bytes no encoder wrote.
            return Err(BitstreamError::CorruptPayload);
        }
        let s = table.find(target);
        let (start, size) = table.range_of(s);
        self.code -= r * start;
        self.range = r * size;
        while self.range < TOP {
            self.range <<= 8;
            self.code = (self.code << 8) | u32::from(self.next_byte());
        }
        Ok(s)
    }

    /// Bytes of input consumed beyond what was supplied (zeros read past the end).
    pub fn overread(&self) -> usize {
        self.pos.saturating_sub(self.input.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(tables: &[FreqTable], syms: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut e = RangeEncoder::new(&mut out);
        for (i, &s) in syms.iter().enumerate() {
            e.encode(&tables[i % tables.len()], s).unwrap();
        }
        e.finish();
        let mut d = RangeDecoder::new(&out);
        for (i, &s) in syms.iter().enumerate() {
            assert_eq!(
                d.decode(&tables[i % tables.len()]).unwrap(),
                s,
                "symbol {i}"
            );
        }
        out
    }

    #[test]
    fn one_uniform_10_bit_symbol_costs_two_bytes() {
        let t = FreqTable::uniform(1024).unwrap();
        for s in [0, 1, 511, 1023] {
            let out = roundtrip(std::slice::from_ref(&t), &[s]);
            assert!(out.len() <= 2, "symbol {s} took {} bytes", out.len());
        }
    }

    #[test]
    fn skewed_table_compresses() {
        let mut f = vec![1u32; 1024];
        f[7] = TOTAL - 1023;
        let t = FreqTable::new(&f).unwrap();
        let syms = vec![7usize; 400];
        let out = roundtrip(std::slice::from_ref(&t), &syms);
        assert!(
            out.len() < 8,
            "{} bytes for 400 near-certain symbols",
            out.len()
        );
    }

    #[test]
    fn rejects_bad_tables() {
        assert!(FreqTable::new(&[]).is_err());
        assert!(FreqTable::new(&[TOTAL, 0]).is_err());
        assert!(FreqTable::new(&[1, 2, 3]).is_err());
        assert!(FreqTable::new(&[TOTAL, 1]).is_err());
    }

    #[test]
    fn symbol_out_of_range_is_an_error() {
        let t = FreqTable::uniform(4).unwrap();
        let mut out = Vec::new();
        let mut e = RangeEncoder::new(&mut out);
        assert!(matches!(
            e.encode(&t, 4),
            Err(BitstreamError::SymbolOutOfRange { .. })
        ));
    }

    fn arb_table() -> impl Strategy<Value = FreqTable> {
        (2usize..300, any::<u64>()).prop_map(|(n, seed)| {
            // Random positive weights normalised to TOTAL with every entry >= 1.
            let mut x = seed | 1;
            let w: Vec<u64> = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    1 + (x % 1000) * (x % 7)
                })
                .collect();
            let sum: u64 = w.iter().sum();
            let spare = u64::from(TOTAL) - n as u64;
            let mut f: Vec<u32> = w.iter().map(|&v| 1 + (v * spare / sum) as u32).collect();
            let s: u32 = f.iter().sum();
            f[0] += TOTAL - s;
            FreqTable::new(&f).unwrap()
        })
    }

    proptest! {
        #[test]
        fn roundtrips_any_symbols(tables in proptest::collection::vec(arb_table(), 1..4),
                                  raw in proptest::collection::vec(any::<u32>(), 0..200)) {
            let syms: Vec<usize> = raw.iter().enumerate()
                .map(|(i, &r)| r as usize % tables[i % tables.len()].len()).collect();
            let out = roundtrip(&tables, &syms);
            // Within 2 bytes of the ideal code length.
            let ideal: f64 = syms.iter().enumerate()
                .map(|(i, &s)| tables[i % tables.len()].cost_bits(s)).sum();
            prop_assert!((out.len() as f64) <= ideal / 8.0 + 2.0, "{} bytes vs ideal {} bits", out.len(), ideal);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let t = FreqTable::uniform(1000).unwrap();
            let mut d = RangeDecoder::new(&bytes);
            for _ in 0..40 {
                if d.decode(&t).is_err() { break; }
            }
        }
    }
}
