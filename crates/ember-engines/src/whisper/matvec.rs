//! Products of a few rows by a weight matrix (`[m, in] × [in, out]`, m up to `MAX_ROWS`): a
//! decoding step's projections, output logits and cross-attention, on all threads.
//!
//! candle hands a one-row product to gemm's matrix-vector routine, which runs on one thread at
//! about the speed of a scalar loop (0.3 ms for 384 × 1536 here), and pays ~40 µs a call when
//! `RAYON_NUM_THREADS` is unset (candle re-reads `/proc/cpuinfo` for its thread count). These
//! loops stream each weight row once, adding it, scaled, into every output row (`y += x[k] ·
//! w[k, ..]`), in column blocks spread over rayon's threads: on AVX-512 sixteen columns of four
//! rows at a time in registers, elsewhere in a loop the compiler vectorizes. Results differ from
//! gemm's only in rounding, and not at all between the two loops.
//!
//! A decoding step reads every decoder weight once, so its speed is the memory's: weights that
//! came as f16 (CTranslate2's files) stay f16 here, half the bytes, and are widened to f32
//! (exactly) as they are loaded; the sums are the same as these loops make from f32 weights.
//! Measured in a release build on this 2-core VM, five rows by Whisper base's 512 × 51865
//! output projection: 4.5 ms from f32 in the compiler's loop, 2.6 ms from f16 in registers.

use candle_core::{DType, Device, Storage, Tensor};
use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// Above this many rows gemm's blocked kernels win over f32 weights: use `Tensor::matmul`.
pub(crate) const MAX_ROWS: usize = 8;
/// Over f16 weights the loops go on to this many rows (the steps of eight transcriptions,
/// `steps.rs`): gemm would first widen the whole weight, which for Whisper base's output
/// projection takes ten times the loops' 5 ms on five rows and still twice their 21 ms on
/// forty. Past it (a prompt, a window's alignment pass) gemm's speed on hundreds of rows pays.
const MAX_F16_ROWS: usize = 64;
/// Most output columns per task: an `m × 512` accumulator stays in L1/L2 while the rows stream.
const MAX_BLOCK: usize = 512;
/// Fewest output columns per task (a 256-byte run of each weight row).
const MIN_BLOCK: usize = 64;

/// `x [m, in] × w [in, out]` for a contiguous f32 or f16 `w`, through these loops when `m` is
/// small.
pub(crate) fn matmul(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let (m, inner) = x.dims2()?;
    let max_rows = match w.dtype() {
        DType::F16 => MAX_F16_ROWS,
        _ => MAX_ROWS,
    };
    if m > max_rows {
        return x.matmul(&w.to_dtype(DType::F32)?);
    }
    let (w_inner, out) = w.dims2()?;
    if w_inner != inner {
        return Err(candle_core::Error::Msg(format!(
            "matvec: [{m}, {inner}] × [{w_inner}, {out}]"
        )));
    }
    let x = x.flatten_all()?.to_vec1::<f32>()?;
    let y = match w.dtype() {
        DType::F16 => with_slice(w, |w: &[f16]| Ok(product(&x, m, w, out)))?,
        _ => with_slice(w, |w: &[f32]| Ok(product(&x, m, w, out)))?,
    };
    Tensor::from_vec(y, (m, out), &Device::Cpu)
}

/// Per head: `x [h, m, in] × w [h, in, out]` → `[h, m, out]`, heads in parallel.
pub(crate) fn matmul_heads(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let (heads, m, inner) = x.dims3()?;
    if m > MAX_ROWS {
        return x.matmul(w);
    }
    let (_, _, out) = w.dims3()?;
    let x = x.flatten_all()?.to_vec1::<f32>()?;
    let y = with_slice(w, |w: &[f32]| {
        let per_head: Vec<Vec<f32>> = (0..heads)
            .into_par_iter()
            .map(|h| {
                let x = &x[h * m * inner..(h + 1) * m * inner];
                let w = &w[h * inner * out..(h + 1) * inner * out];
                let operands = Operands {
                    x,
                    m,
                    inner,
                    w,
                    out,
                };
                let mut y = vec![0f32; m * out];
                operands.accumulate(0..out, &mut y);
                y
            })
            .collect();
        Ok(per_head.concat())
    })?;
    Tensor::from_vec(y, (heads, m, out), &Device::Cpu)
}

/// Runs `f` on the data of a contiguous CPU tensor of `T`.
pub(crate) fn with_slice<T: candle_core::WithDType, R>(
    t: &Tensor,
    f: impl FnOnce(&[T]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    if !t.is_contiguous() {
        return Err(candle_core::Error::Msg(
            "matvec: the weight is not contiguous".into(),
        ));
    }
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(candle_core::Error::Msg(
            "matvec: the weight is not on the CPU".into(),
        ));
    };
    let data = cpu.as_slice::<T>()?;
    let start = layout.start_offset();
    f(&data[start..start + t.elem_count()])
}

/// `x [m, in] × w [in, out]` (row-major), column blocks on rayon's threads. Narrow outputs
/// (384 columns for tiny's second FFN projection) still make two blocks per thread: a decoding
/// step reads its weights from memory, so every thread must stream its share.
fn product<W: WeightRow>(x: &[f32], m: usize, w: &[W], out: usize) -> Vec<f32> {
    let inner = x.len() / m.max(1);
    let tasks = 2 * rayon::current_num_threads();
    let block = out
        .div_ceil(tasks)
        .next_multiple_of(16)
        .clamp(MIN_BLOCK, MAX_BLOCK);
    let operands = Operands {
        x,
        m,
        inner,
        w,
        out,
    };
    let blocks: Vec<Vec<f32>> = (0..out.div_ceil(block))
        .into_par_iter()
        .map(|b| {
            let cols = b * block..out.min((b + 1) * block);
            let mut y = vec![0f32; m * cols.len()];
            operands.accumulate(cols, &mut y);
            y
        })
        .collect();
    let mut y = vec![0f32; m * out];
    for (b, part) in blocks.iter().enumerate() {
        let width = part.len() / m.max(1);
        for r in 0..m {
            let start = r * out + b * block;
            y[start..start + width].copy_from_slice(&part[r * width..(r + 1) * width]);
        }
    }
    y
}

/// A weight element type the loops read: f32 as it is, f16 widened to f32 (exactly).
trait WeightRow: Copy + Send + Sync + Sized {
    /// `row` as f32: itself, or widened into `buffer`.
    fn widened<'a>(row: &'a [Self], buffer: &'a mut [f32]) -> &'a [f32];

    /// The 16 elements from `at`, as f32.
    ///
    /// # Safety
    /// `at` must point at 16 readable elements.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    #[allow(unsafe_code)]
    unsafe fn load16(at: *const Self) -> std::arch::x86_64::__m512;
}

impl WeightRow for f32 {
    fn widened<'a>(row: &'a [f32], _: &'a mut [f32]) -> &'a [f32] {
        row
    }

    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    #[allow(unsafe_code)]
    unsafe fn load16(at: *const f32) -> std::arch::x86_64::__m512 {
        // SAFETY: the caller guarantees 16 readable elements.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(at) }
    }
}

impl WeightRow for f16 {
    fn widened<'a>(row: &'a [f16], buffer: &'a mut [f32]) -> &'a [f32] {
        let buffer = &mut buffer[..row.len()];
        row.convert_to_f32_slice(buffer);
        buffer
    }

    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    #[allow(unsafe_code)]
    unsafe fn load16(at: *const f16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees 16 readable elements (32 bytes).
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(at as *const __m256i)) }
    }
}

/// The operands of one product: `x [m, inner]` by `w [inner, out]`, both row-major.
#[derive(Clone, Copy)]
struct Operands<'a, W> {
    x: &'a [f32],
    m: usize,
    inner: usize,
    w: &'a [W],
    out: usize,
}

impl<W: WeightRow> Operands<'_, W> {
    /// `y [m, cols] += x × w[.., cols]`: in registers where the CPU has AVX-512, else `plain`.
    fn accumulate(&self, cols: std::ops::Range<usize>, y: &mut [f32]) {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
        self.avx512(cols, y);
        #[cfg(not(all(target_arch = "x86_64", target_feature = "avx512f")))]
        self.plain(cols, y);
    }

    /// `accumulate` on AVX-512, when `inner` is a multiple of four (every Whisper width is):
    /// each 16 columns of four weight rows are loaded once (f16 widened by `vcvtph2ps`) and added
    /// into every output row in `plain`'s order of operations, so the sums are the same. Columns
    /// past the last 16 go through `plain`.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    #[allow(unsafe_code)] // SIMD intrinsics; bounds checked once, before the loops
    fn avx512(&self, cols: std::ops::Range<usize>, y: &mut [f32]) {
        use std::arch::x86_64::*;
        let Operands {
            x,
            m,
            inner,
            w,
            out,
        } = *self;
        let width = cols.len();
        let lanes = width / 16 * 16;
        if !inner.is_multiple_of(4) || lanes == 0 {
            return self.plain(cols, y);
        }
        assert!(x.len() >= m * inner && y.len() >= m * width);
        assert!(cols.end <= out && inner * out <= w.len());
        for k in (0..inner).step_by(4) {
            for j in (0..lanes).step_by(16) {
                // SAFETY: k + 3 < inner and cols.start + j + 16 <= cols.end <= out, so every load
                // is inside `w`; r < m and j + 16 <= width, so every load and store of y is inside
                // row r (asserted above).
                unsafe {
                    let load = |kk: usize| W::load16(w.as_ptr().add(kk * out + cols.start + j));
                    let (w0, w1, w2, w3) = (load(k), load(k + 1), load(k + 2), load(k + 3));
                    for r in 0..m {
                        let a = |i: usize| _mm512_set1_ps(*x.get_unchecked(r * inner + k + i));
                        let sum = _mm512_add_ps(
                            _mm512_add_ps(
                                _mm512_add_ps(_mm512_mul_ps(a(0), w0), _mm512_mul_ps(a(1), w1)),
                                _mm512_mul_ps(a(2), w2),
                            ),
                            _mm512_mul_ps(a(3), w3),
                        );
                        let at = y.as_mut_ptr().add(r * width + j);
                        _mm512_storeu_ps(at, _mm512_add_ps(_mm512_loadu_ps(at), sum));
                    }
                }
            }
        }
        if lanes < width {
            let tail = cols.start + lanes..cols.end;
            let mut rest: Vec<f32> = (0..m)
                .flat_map(|r| y[r * width + lanes..(r + 1) * width].to_vec())
                .collect();
            self.plain(tail.clone(), &mut rest);
            for (r, part) in rest.chunks(tail.len()).enumerate() {
                y[r * width + lanes..(r + 1) * width].copy_from_slice(part);
            }
        }
    }

    /// `y [m, cols] += x × w[.., cols]` for the column range `cols` of `w`. Four weight rows per
    /// pass: each output element is loaded and stored once per four rows.
    fn plain(&self, cols: std::ops::Range<usize>, y: &mut [f32]) {
        let Operands {
            x,
            m,
            inner,
            w,
            out,
        } = *self;
        let width = cols.len();
        let row = |k: usize| &w[k * out + cols.start..k * out + cols.end];
        let mut buffers = [[0f32; MAX_BLOCK]; 4];
        let [b0, b1, b2, b3] = &mut buffers;
        let mut k = 0;
        while k + 4 <= inner {
            let (w0, w1) = (W::widened(row(k), b0), W::widened(row(k + 1), b1));
            let (w2, w3) = (W::widened(row(k + 2), b2), W::widened(row(k + 3), b3));
            for r in 0..m {
                let a = &x[r * inner + k..r * inner + k + 4];
                let y = &mut y[r * width..(r + 1) * width];
                for j in 0..width {
                    y[j] += a[0] * w0[j] + a[1] * w1[j] + a[2] * w2[j] + a[3] * w3[j];
                }
            }
            k += 4;
        }
        for k in k..inner {
            let w = W::widened(row(k), b0);
            for r in 0..m {
                let a = x[r * inner + k];
                for (y, &w) in y[r * width..(r + 1) * width].iter_mut().zip(w) {
                    *y += a * w;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_candle() {
        let dev = Device::Cpu;
        for (m, inner, out) in [(1, 7, 1300), (5, 64, 3), (3, 16, 1024)] {
            let x = Tensor::randn(0f32, 1.0, (m, inner), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (inner, out), &dev).unwrap();
            let diff = (matmul(&x, &w).unwrap() - x.matmul(&w).unwrap()).unwrap();
            let max = diff
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(max < 1e-4, "{m}×{inner}×{out}: {max}");
        }
        // The register loop adds exactly as the plain one does (a tail of 7 columns included).
        let (m, inner, out) = (5, 64, 183);
        let x: Vec<f32> = (0..m * inner).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..inner * out).map(|i| (i as f32 * 0.11).cos()).collect();
        let (mut plain, mut block) = (vec![0.5f32; m * out], vec![0.5f32; m * out]);
        let operands = Operands {
            x: &x,
            m,
            inner,
            w: &w,
            out,
        };
        operands.plain(0..out, &mut plain);
        operands.accumulate(0..out, &mut block);
        assert_eq!(plain, block);
        // f16 weights give exactly what the same weights widened to f32 give in these loops, and
        // what gemm gives but for rounding past their rows.
        for m in [5, 12] {
            let x = Tensor::randn(0f32, 1.0, (m, 64), &dev).unwrap();
            let w16 = Tensor::randn(0f32, 1.0, (64, 1300), &dev)
                .unwrap()
                .to_dtype(DType::F16)
                .unwrap();
            let w32 = w16.to_dtype(DType::F32).unwrap();
            let (a, b) = (matmul(&x, &w16).unwrap(), matmul(&x, &w32).unwrap());
            if m <= MAX_ROWS {
                assert_eq!(
                    a.to_vec2::<f32>().unwrap(),
                    b.to_vec2::<f32>().unwrap(),
                    "{m} rows"
                );
            }
            let largest = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            assert!(largest.to_scalar::<f32>().unwrap() < 1e-4, "{m} rows");
        }
        let x = Tensor::randn(0f32, 1.0, (3, 2, 8), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (3, 8, 5), &dev).unwrap();
        let diff = (matmul_heads(&x, &w).unwrap() - x.matmul(&w).unwrap()).unwrap();
        assert!(
            diff.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                < 1e-4
        );
    }
}
