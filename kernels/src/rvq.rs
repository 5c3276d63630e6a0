//! Residual vector quantisation: nearest-codeword search (encode) and codeword sums (decode).
//!
//! Stage `i` picks `argmin_j ||r - c_ij||²` over codebook `i`, then subtracts that codeword from
//! the residual `r`. The distance is computed as `||c||² - 2 r·c` (the `||r||²` term is common to
//! all candidates), with `||c||²` precomputed once per model. Ties go to the lowest index, so the
//! result is deterministic and identical across backends.

use crate::KernelError;

#[derive(Debug, Clone)]
pub struct Codebooks {
    num_codebooks: usize,
    size: usize,
    dim: usize,
    /// `[num_codebooks][size][dim]`, row-major.
    data: Vec<f32>,
    /// `||c||²` for every codeword, `[num_codebooks][size]`.
    norms: Vec<f32>,
}

impl Codebooks {
    pub fn new(
        num_codebooks: usize,
        size: usize,
        dim: usize,
        data: Vec<f32>,
    ) -> Result<Self, KernelError> {
        if num_codebooks == 0 || size == 0 || dim == 0 || data.len() != num_codebooks * size * dim {
            return Err(KernelError::Shape(format!(
                "{} values for [{num_codebooks}, {size}, {dim}]",
                data.len()
            )));
        }
        let norms = data
            .chunks_exact(dim)
            .map(|c| c.iter().map(|x| x * x).sum())
            .collect();
        Ok(Self {
            num_codebooks,
            size,
            dim,
            data,
            norms,
        })
    }

    pub fn num_codebooks(&self) -> usize {
        self.num_codebooks
    }
    pub fn size(&self) -> usize {
        self.size
    }
    pub fn dim(&self) -> usize {
        self.dim
    }

    fn codeword(&self, book: usize, j: usize) -> &[f32] {
        let o = (book * self.size + j) * self.dim;
        &self.data[o..o + self.dim]
    }

    /// Quantises one latent vector with the first `indices.len()` codebooks. `residual` is
    /// scratch of `dim` floats (kept by the caller so the hot path never allocates).
    pub fn encode(
        &self,
        latent: &[f32],
        indices: &mut [u16],
        residual: &mut [f32],
    ) -> Result<(), KernelError> {
        if latent.len() != self.dim
            || residual.len() != self.dim
            || indices.len() > self.num_codebooks
        {
            return Err(KernelError::Shape(format!(
                "latent {} / residual {} (dim {}), {} stages (have {})",
                latent.len(),
                residual.len(),
                self.dim,
                indices.len(),
                self.num_codebooks
            )));
        }
        residual.copy_from_slice(latent);
        for (book, slot) in indices.iter_mut().enumerate() {
            let norms = &self.norms[book * self.size..(book + 1) * self.size];
            let mut best = (f32::INFINITY, 0usize);
            for (j, &n) in norms.iter().enumerate() {
                let d = n - 2.0 * dot(self.codeword(book, j), residual);
                if d < best.0 {
                    best = (d, j);
                }
            }
            *slot = best.1 as u16;
            for (r, c) in residual.iter_mut().zip(self.codeword(book, best.1)) {
                *r -= c;
            }
        }
        Ok(())
    }

    /// Writes the sum of the chosen codewords (the quantised latent) into `out`.
    pub fn decode(&self, indices: &[u16], out: &mut [f32]) -> Result<(), KernelError> {
        if out.len() != self.dim || indices.len() > self.num_codebooks {
            return Err(KernelError::Shape(format!(
                "out {} (dim {}), {} stages",
                out.len(),
                self.dim,
                indices.len()
            )));
        }
        out.fill(0.0);
        for (book, &ix) in indices.iter().enumerate() {
            let j = usize::from(ix);
            if j >= self.size {
                return Err(KernelError::Index {
                    index: j,
                    size: self.size,
                });
            }
            for (o, c) in out.iter_mut().zip(self.codeword(book, j)) {
                *o += c;
            }
        }
        Ok(())
    }
}

/// Dot product with 8 independent partial sums, so the compiler can vectorise it (a single
/// running sum is a strict sequential dependency for floats).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}

/// Batches smaller than this use the row-by-row search; a matrix product only pays off with
/// enough rows to amortise its packing.
const GEMM_MIN_BATCH: usize = 4;

/// Reusable buffers for [`Codebooks::encode_batch`] (sized on first use, then kept).
#[derive(Debug, Default)]
pub struct BatchScratch {
    residual: Vec<f32>,
    dots: Vec<f32>,
}

impl Codebooks {
    /// Quantises `batch` latents (`[batch, dim]`) with the first `levels` codebooks, writing
    /// `[batch, levels]` indices. Same result as [`Codebooks::encode`] row by row (up to float
    /// rounding in near-ties), but each stage is one matrix product `R · Cᵀ` over the whole
    /// batch, which is what makes batching pay off on a CPU.
    pub fn encode_batch(
        &self,
        latents: &[f32],
        batch: usize,
        levels: usize,
        indices: &mut [u16],
        scratch: &mut BatchScratch,
    ) -> Result<(), KernelError> {
        let (d, n) = (self.dim, self.size);
        if latents.len() != batch * d
            || indices.len() != batch * levels
            || levels > self.num_codebooks
        {
            return Err(KernelError::Shape(format!(
                "latents {} for [{batch}, {d}], indices {} for [{batch}, {levels}] (have {} codebooks)",
                latents.len(),
                indices.len(),
                self.num_codebooks
            )));
        }
        if batch < GEMM_MIN_BATCH {
            scratch.residual.resize(d, 0.0);
            for b in 0..batch {
                self.encode(
                    &latents[b * d..(b + 1) * d],
                    &mut indices[b * levels..(b + 1) * levels],
                    &mut scratch.residual,
                )?;
            }
            return Ok(());
        }
        scratch.residual.clear();
        scratch.residual.extend_from_slice(latents);
        scratch.dots.resize(batch * n, 0.0);
        for book in 0..levels {
            let cb = ndarray::ArrayView2::from_shape(
                (n, d),
                &self.data[book * n * d..(book + 1) * n * d],
            )
            .map_err(|e| KernelError::Shape(e.to_string()))?;
            let r = ndarray::ArrayView2::from_shape((batch, d), &scratch.residual[..])
                .map_err(|e| KernelError::Shape(e.to_string()))?;
            let mut dots = ndarray::ArrayViewMut2::from_shape((batch, n), &mut scratch.dots[..])
                .map_err(|e| KernelError::Shape(e.to_string()))?;
            ndarray::linalg::general_mat_mul(1.0, &r, &cb.t(), 0.0, &mut dots);
            let norms = &self.norms[book * n..(book + 1) * n];
            for b in 0..batch {
                let row = &scratch.dots[b * n..(b + 1) * n];
                let mut best = (f32::INFINITY, 0usize);
                for (j, (&dot, &nrm)) in row.iter().zip(norms).enumerate() {
                    let dist = nrm - 2.0 * dot;
                    if dist < best.0 {
                        best = (dist, j);
                    }
                }
                indices[b * levels + book] = best.1 as u16;
                let c = self.codeword(book, best.1);
                for (x, y) in scratch.residual[b * d..(b + 1) * d].iter_mut().zip(c) {
                    *x -= y;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn books(seed: u64, k: usize, n: usize, d: usize) -> Codebooks {
        let mut x = seed | 1;
        let data = (0..k * n * d)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 2001) as f32 / 1000.0 - 1.0
            })
            .collect();
        Codebooks::new(k, n, d, data).unwrap()
    }

    #[test]
    fn exact_codeword_sums_are_recovered() {
        let b = books(7, 3, 64, 8);
        let ix = [5u16, 17, 63];
        let mut z = vec![0.0; 8];
        b.decode(&ix[..1], &mut z).unwrap();
        let mut got = [0u16; 1];
        b.encode(&z, &mut got, &mut [0.0; 8]).unwrap();
        assert_eq!(got, [5]);
        b.decode(&ix, &mut z).unwrap();
        let mut q = vec![0.0; 8];
        let mut got = [0u16; 3];
        b.encode(&z, &mut got, &mut [0.0; 8]).unwrap();
        b.decode(&got, &mut q).unwrap();
        let err: f32 = z.iter().zip(&q).map(|(a, b)| (a - b).powi(2)).sum();
        let norm: f32 = z.iter().map(|a| a * a).sum();
        assert!(err < norm, "residual VQ must not increase the error");
    }

    #[test]
    fn bad_shapes_and_indices_are_errors() {
        assert!(Codebooks::new(2, 4, 3, vec![0.0; 5]).is_err());
        let b = books(1, 2, 4, 3);
        assert!(b.decode(&[4], &mut [0.0; 3]).is_err());
        assert!(b.encode(&[0.0; 2], &mut [0; 1], &mut [0.0; 3]).is_err());
        assert!(b.encode(&[0.0; 3], &mut [0; 3], &mut [0.0; 3]).is_err());
    }

    proptest! {
        /// Each stage's choice is the true nearest codeword (brute-force check).
        #[test]
        fn first_stage_is_nearest(seed in any::<u64>(), z in proptest::collection::vec(-2.0f32..2.0, 6)) {
            let b = books(seed, 1, 32, 6);
            let mut got = [0u16; 1];
            b.encode(&z, &mut got, &mut [0.0; 6]).unwrap();
            let dist = |j: usize| -> f32 { b.codeword(0, j).iter().zip(&z).map(|(c, x)| (c - x).powi(2)).sum() };
            let best = (0..32).map(dist).fold(f32::INFINITY, f32::min);
            prop_assert!(dist(usize::from(got[0])) <= best + 1e-4);
        }

        /// The batched search picks what the row-by-row search picks.
        #[test]
        fn batch_matches_rows(seed in any::<u64>(), z in proptest::collection::vec(-64i32..64, 5 * 6)) {
            // Values on a 1/64 grid make every dot product exact in f32, whatever the
            // summation order, so the two searches must agree exactly, ties included.
            let z: Vec<f32> = z.iter().map(|&v| v as f32 / 64.0).collect();
            let grid: Vec<f32> = books(seed, 3, 64, 6).data.iter().map(|v| (v * 64.0).round() / 64.0).collect();
            let b = Codebooks::new(3, 64, 6, grid).unwrap();
            let mut batched = vec![0u16; 5 * 3];
            b.encode_batch(&z, 5, 3, &mut batched, &mut BatchScratch::default()).unwrap();
            for row in 0..5 {
                let mut one = [0u16; 3];
                b.encode(&z[row * 6..(row + 1) * 6], &mut one, &mut [0.0; 6]).unwrap();
                prop_assert_eq!(&batched[row * 3..(row + 1) * 3], &one[..]);
            }
        }

        /// The encoder's final residual is exactly the latent minus the decoded codeword sum.
        #[test]
        fn residual_matches_decode(seed in any::<u64>(), z in proptest::collection::vec(-1.0f32..1.0, 6)) {
            let b = books(seed, 4, 64, 6);
            for k in 1..=4 {
                let (mut ix, mut q, mut r) = (vec![0u16; k], vec![0.0; 6], vec![0.0; 6]);
                b.encode(&z, &mut ix, &mut r).unwrap();
                b.decode(&ix, &mut q).unwrap();
                for i in 0..6 {
                    prop_assert!((z[i] - q[i] - r[i]).abs() < 1e-5);
                }
            }
        }
    }
}
