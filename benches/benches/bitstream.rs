//! Entropy coder and RVQ search throughput, on seeded inputs.

use aic_codec::bitstream::EntropyModel;
use aic_codec::bitstream::range::FreqTable;
use aic_kernels::rvq::Codebooks;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn lcg(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

fn skewed_table(seed: &mut u64) -> FreqTable {
    // Zipf-like weights, like real codebook usage.
    let w: Vec<f64> = (0..1024)
        .map(|i| 1.0 / (1.0 + i as f64).powf(0.8))
        .collect();
    let sum: f64 = w.iter().sum();
    let mut f: Vec<u32> = w
        .iter()
        .map(|x| 1 + (x / sum * (32768.0 - 1024.0)) as u32)
        .collect();
    let s: u32 = f.iter().sum();
    f[(lcg(seed) % 1024) as usize] += 32768 - s;
    FreqTable::new(&f).unwrap()
}

fn bench_frames(c: &mut Criterion) {
    let mut seed = 42;
    let model =
        EntropyModel::new((0..12).map(|_| skewed_table(&mut seed)).collect(), *b"bnch").unwrap();
    let frames: Vec<Vec<u16>> = (0..256)
        .map(|_| (0..12).map(|_| (lcg(&mut seed) % 1024) as u16).collect())
        .collect();
    let mut g = c.benchmark_group("aic_frame");
    g.throughput(Throughput::Elements(frames.len() as u64));
    let mut out = Vec::with_capacity(64);
    g.bench_function("write_level12", |b| {
        b.iter(|| {
            for (i, ix) in frames.iter().enumerate() {
                model.write_frame(i as u8, black_box(ix), &mut out).unwrap();
            }
        })
    });
    let coded: Vec<Vec<u8>> = frames
        .iter()
        .map(|ix| {
            let mut o = Vec::new();
            model.write_frame(0, ix, &mut o).unwrap();
            o
        })
        .collect();
    let mut ix = Vec::with_capacity(12);
    g.bench_function("read_level12", |b| {
        b.iter(|| {
            for f in &coded {
                model.read_frame(black_box(f), &mut ix).unwrap();
            }
        })
    });
    g.finish();
}

fn bench_rvq(c: &mut Criterion) {
    let mut seed = 7;
    let (k, n, d) = (12, 1024, 64);
    let data = (0..k * n * d)
        .map(|_| (lcg(&mut seed) % 2000) as f32 / 1000.0 - 1.0)
        .collect();
    let books = Codebooks::new(k, n, d, data).unwrap();
    let z: Vec<f32> = (0..d)
        .map(|_| (lcg(&mut seed) % 2000) as f32 / 1000.0 - 1.0)
        .collect();
    let mut g = c.benchmark_group("rvq_cpu");
    g.throughput(Throughput::Elements(1));
    let (mut ix, mut r) = (vec![0u16; k], vec![0.0f32; d]);
    g.bench_function("encode_12x1024x64", |b| {
        b.iter(|| books.encode(black_box(&z), &mut ix, &mut r).unwrap())
    });
    let mut q = vec![0.0f32; d];
    g.bench_function("decode_12x1024x64", |b| {
        b.iter(|| books.decode(black_box(&ix), &mut q).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench_frames, bench_rvq);
criterion_main!(benches);
