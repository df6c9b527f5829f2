//! A fused 1-D convolution as a candle custom op, for the convolutions that
//! dominate synthesis time (HiFi-GAN resblocks, flow WaveNets).
//!
//! candle's CPU conv1d materialises the whole im2col matrix, then transposes
//! the result: several passes over buffers as large as the audio times the
//! channels times the kernel. Here the time axis is cut into blocks whose
//! im2col slice stays in cache; each block is one GEMM (matrixmultiply, via
//! ndarray's safe API) written straight into the output, with the input's
//! leaky ReLU, the bias and the residual connection folded into the passes
//! that already touch the data. Blocks run in parallel on rayon's pool, which
//! honours `RAYON_NUM_THREADS` like candle's own kernels.

use std::cell::RefCell;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use ndarray::{linalg::general_mat_mul, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

/// im2col floats per block: about a per-core L2 cache, large enough that
/// re-packing the weights for each block stays cheap.
const BLOCK_FLOATS: usize = 128 * 1024;

thread_local! {
    /// Each worker's im2col buffer, reused across blocks and calls: fresh
    /// allocations of this size cost page faults and zeroing every time.
    static COL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

#[derive(Debug, Clone)]
pub struct FusedConv1d {
    /// `[c_out, c_in * k]`, PyTorch's weight layout flattened.
    weight: Vec<f32>,
    bias: Vec<f32>,
    c_in: usize,
    c_out: usize,
    k: usize,
    dilation: usize,
    padding: usize,
    /// Leaky ReLU slope applied to the input before convolving.
    input_slope: Option<f32>,
    /// Add the (pre-activation) input to the output.
    residual: bool,
}

impl FusedConv1d {
    pub fn new(
        weight: &Tensor,
        bias: Option<&Tensor>,
        dilation: usize,
        padding: usize,
    ) -> candle_core::Result<Self> {
        let (c_out, c_in, k) = weight.dims3()?;
        let bias = match bias {
            Some(b) => b.flatten_all()?.to_vec1::<f32>()?,
            None => vec![0.0; c_out],
        };
        Ok(Self {
            weight: weight.flatten_all()?.to_vec1::<f32>()?,
            bias,
            c_in,
            c_out,
            k,
            dilation,
            padding,
            input_slope: None,
            residual: false,
        })
    }

    pub fn with_input_leaky_relu(mut self, slope: f32) -> Self {
        self.input_slope = Some(slope);
        self
    }

    pub fn with_residual(mut self) -> Self {
        self.residual = true;
        self
    }

    /// Input steps on either side that one output step reads.
    pub fn reach(&self) -> usize {
        let span = self.dilation * (self.k - 1);
        self.padding.max(span.saturating_sub(self.padding))
    }

    /// Fills `col` (`[c_in * k, n]`) with the activated, zero-padded input
    /// windows for output steps `t0 .. t0 + n`.
    fn im2col(&self, x: &[f32], t: usize, t0: usize, n: usize, col: &mut [f32]) {
        for ci in 0..self.c_in {
            let xrow = &x[ci * t..(ci + 1) * t];
            for kk in 0..self.k {
                let row = &mut col[(ci * self.k + kk) * n..][..n];
                // Output step t0 + j reads input t0 + j + kk * dilation - padding.
                let shift = t0 + kk * self.dilation;
                let lo = self.padding.saturating_sub(shift).min(n);
                let hi = (t + self.padding).saturating_sub(shift).min(n).max(lo);
                row[..lo].fill(0.0);
                row[hi..].fill(0.0);
                if lo == hi {
                    continue;
                }
                let src = &xrow[shift + lo - self.padding..shift + hi - self.padding];
                match self.input_slope {
                    Some(s) => {
                        for (d, &v) in row[lo..hi].iter_mut().zip(src) {
                            *d = if v < 0.0 { v * s } else { v };
                        }
                    }
                    None => row[lo..hi].copy_from_slice(src),
                }
            }
        }
    }
}

impl CustomOp1 for FusedConv1d {
    fn name(&self) -> &'static str {
        "piper-fused-conv1d"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c, t) = layout.shape().dims3()?;
        if b != 1 || c != self.c_in {
            candle_core::bail!(
                "fused conv1d: input {:?} for {} input channels",
                layout.shape(),
                self.c_in
            )
        }
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("fused conv1d: f32 input required")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("fused conv1d: contiguous input required")
        };
        let x = &data[start..end];
        let (out, t_out) = self.run(x, t)?;
        Ok((CpuStorage::F32(out), Shape::from((1, self.c_out, t_out))))
    }
}

impl FusedConv1d {
    /// Convolves `x` (`[c_in, t]`, contiguous); returns `[c_out, t_out]` and
    /// `t_out`.
    fn run(&self, x: &[f32], t: usize) -> candle_core::Result<(Vec<f32>, usize)> {
        let span = self.dilation * (self.k - 1);
        let t_out = (t + 2 * self.padding).saturating_sub(span);
        if self.residual && (t_out != t || self.c_out != self.c_in) {
            candle_core::bail!("fused conv1d: residual needs a same-shape output")
        }
        let rows = self.c_in * self.k;
        let block = (BLOCK_FLOATS / rows).clamp(64, 4096);
        let w = ArrayView2::from_shape((self.c_out, rows), &self.weight)
            .map_err(candle_core::Error::wrap)?;

        let mut out = vec![0f32; self.c_out * t_out];
        let mut out_view = ArrayViewMut2::from_shape((self.c_out, t_out), &mut out)
            .map_err(candle_core::Error::wrap)?;
        out_view
            .axis_chunks_iter_mut(Axis(1), block)
            .into_par_iter()
            .enumerate()
            .try_for_each(|(i, mut dst)| -> candle_core::Result<()> {
                let t0 = i * block;
                let n = dst.ncols();
                for (o, mut row) in dst.axis_iter_mut(Axis(0)).enumerate() {
                    let bias = self.bias[o];
                    if self.residual {
                        let res = &x[o * t + t0..o * t + t0 + n];
                        for (d, &r) in row.iter_mut().zip(res) {
                            *d = r + bias;
                        }
                    } else {
                        row.fill(bias);
                    }
                }
                COL.with_borrow_mut(|col| -> candle_core::Result<()> {
                    // im2col overwrites every element, so stale contents
                    // from an earlier block are harmless.
                    if col.len() < rows * n {
                        col.resize(rows * n, 0.0);
                    }
                    let col = &mut col[..rows * n];
                    self.im2col(x, t, t0, n, col);
                    let col = ArrayView2::from_shape((rows, n), &*col)
                        .map_err(candle_core::Error::wrap)?;
                    general_mat_mul(1.0, &w, &col, 1.0, &mut dst);
                    Ok(())
                })
            })?;
        Ok((out, t_out))
    }
}

/// `ConvTranspose1d` (PyTorch weight `[c_in, c_out, k]`) with a leaky ReLU on
/// its input, computed polyphase: output phase `r` of stride `s` is an
/// ordinary convolution of the input with taps `r, r + s, ...` of the
/// kernel. That reuses the blocked GEMM above and writes each output sample
/// once, where col2im would accumulate `k / s` partial sums per sample.
#[derive(Debug, Clone)]
pub struct FusedConvTranspose1d {
    phases: Vec<FusedConv1d>,
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
}

impl FusedConvTranspose1d {
    pub fn new(
        weight: &Tensor,
        bias: &Tensor,
        stride: usize,
        padding: usize,
        input_slope: f32,
    ) -> candle_core::Result<Self> {
        let (c_in, c_out, k) = weight.dims3()?;
        if stride == 0 || stride > k {
            candle_core::bail!("conv transpose: stride {stride} with kernel {k}")
        }
        let w = weight.flatten_all()?.to_vec1::<f32>()?;
        let mut phases = Vec::with_capacity(stride);
        for r in 0..stride {
            // Taps r + j * stride; output position q takes input q - j, so
            // the phase kernel is those taps in reverse order.
            let taps = (k - r).div_ceil(stride);
            let mut pw = vec![0f32; c_out * c_in * taps];
            for o in 0..c_out {
                for ci in 0..c_in {
                    for kk in 0..taps {
                        let tap = r + (taps - 1 - kk) * stride;
                        pw[(o * c_in + ci) * taps + kk] = w[(ci * c_out + o) * k + tap];
                    }
                }
            }
            let pw = Tensor::from_vec(pw, (c_out, c_in, taps), weight.device())?;
            phases.push(
                FusedConv1d::new(&pw, Some(bias), 1, taps - 1)?.with_input_leaky_relu(input_slope),
            );
        }
        Ok(Self {
            phases,
            c_in,
            c_out,
            k,
            stride,
            padding,
        })
    }

    /// Input steps on either side of `output / stride` that one output step
    /// reads (rounded up).
    pub fn reach(&self) -> usize {
        let span = self.k - 1;
        let side = self.padding.max(span.saturating_sub(self.padding));
        side.div_ceil(self.stride) + 1
    }
}

impl CustomOp1 for FusedConvTranspose1d {
    fn name(&self) -> &'static str {
        "piper-fused-conv-transpose1d"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c, t) = layout.shape().dims3()?;
        if b != 1 || c != self.c_in || t == 0 {
            candle_core::bail!(
                "fused conv transpose: input {:?} for {} input channels",
                layout.shape(),
                self.c_in
            )
        }
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("fused conv transpose: f32 input required")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("fused conv transpose: contiguous input required")
        };
        let x = &data[start..end];
        let full = (t - 1) * self.stride + self.k;
        let Some(t_out) = full.checked_sub(2 * self.padding) else {
            candle_core::bail!("fused conv transpose: padding exceeds output")
        };
        let phases = self
            .phases
            .iter()
            .map(|p| p.run(x, t))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut out = vec![0f32; self.c_out * t_out];
        out.par_chunks_mut(t_out.max(1))
            .enumerate()
            .for_each(|(o, row)| {
                for (m, y) in row.iter_mut().enumerate() {
                    let pos = m + self.padding;
                    let (q, r) = (pos / self.stride, pos % self.stride);
                    let (phase, len) = &phases[r];
                    *y = phase[o * len + q];
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((1, self.c_out, t_out))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn check(
        c_in: usize,
        c_out: usize,
        k: usize,
        dilation: usize,
        t: usize,
    ) -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (1, c_in, t), &dev)?;
        let w = Tensor::randn(0f32, 0.3, (c_out, c_in, k), &dev)?;
        let b = Tensor::randn(0f32, 1.0, c_out, &dev)?;
        let padding = dilation * (k - 1) / 2;
        let op = FusedConv1d::new(&w, Some(&b), dilation, padding)?;
        let got = x.apply_op1_no_bwd(&op)?;
        let want = x
            .conv1d(&w, padding, 1, dilation, 1)?
            .broadcast_add(&b.reshape((c_out, 1))?)?;
        let err = (got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-4, "plain: {err}");

        if c_in == c_out {
            let op = op.with_input_leaky_relu(0.1).with_residual();
            let got = x.apply_op1_no_bwd(&op)?;
            let act = x.maximum(&(&x * 0.1)?)?;
            let want = (act
                .conv1d(&w, padding, 1, dilation, 1)?
                .broadcast_add(&b.reshape((c_out, 1))?)?
                + &x)?;
            let err = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(err < 1e-4, "fused: {err}");
        }
        Ok(())
    }

    #[test]
    fn transpose_matches_candle() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        for (c_in, c_out, k, stride, padding, t) in
            [(6, 4, 16, 8, 4, 9), (4, 3, 8, 4, 2, 3), (3, 2, 5, 2, 1, 7)]
        {
            let x = Tensor::randn(0f32, 1.0, (1, c_in, t), &dev)?;
            let w = Tensor::randn(0f32, 0.3, (c_in, c_out, k), &dev)?;
            let b = Tensor::randn(0f32, 1.0, c_out, &dev)?;
            let op = FusedConvTranspose1d::new(&w, &b, stride, padding, 0.1)?;
            let got = x.apply_op1_no_bwd(&op)?;
            let act = x.maximum(&(&x * 0.1)?)?;
            let want = act
                .conv_transpose1d(&w, padding, 0, stride, 1, 1)?
                .broadcast_add(&b.reshape((c_out, 1))?)?;
            assert_eq!(got.dims(), want.dims());
            let err = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(err < 1e-4, "k={k} s={stride}: {err}");
        }
        Ok(())
    }

    #[test]
    fn matches_candle_conv1d() -> candle_core::Result<()> {
        check(8, 8, 3, 1, 50)?;
        check(8, 8, 7, 12, 300)?; // receptive field wider than some blocks' padding
        check(6, 10, 5, 2, 5000)?; // several blocks
        check(4, 4, 5, 6, 3)?; // shorter than the padding
        Ok(())
    }
}

#[cfg(test)]
mod speed {
    use super::*;
    use candle_core::Device;

    /// Multiply-adds per second of the fused conv on the decoder's and
    /// flow's shapes (run with --ignored --nocapture).
    #[test]
    #[ignore = "measurement, not a check"]
    fn fused_conv_speed() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        for (c_in, c_out, k, dilation, t) in [
            (32, 32, 7, 3, 60_000),
            (64, 64, 7, 3, 15_000),
            (128, 128, 3, 1, 3_700),
            (192, 384, 5, 1, 240),
            (192, 256, 7, 1, 240),
        ] {
            let x = Tensor::randn(0f32, 1.0, (1, c_in, t), &dev)?;
            let w = Tensor::randn(0f32, 0.3, (c_out, c_in, k), &dev)?;
            let op = FusedConv1d::new(&w, None, dilation, dilation * (k - 1) / 2)?;
            let flops = 2.0 * (c_in * c_out * k * t) as f64;
            let mut best = f64::INFINITY;
            for _ in 0..5 {
                let started = std::time::Instant::now();
                let y = x.apply_op1_no_bwd(&op)?;
                best = best.min(started.elapsed().as_secs_f64());
                drop(y);
            }
            eprintln!(
                "c_in {c_in:>3} c_out {c_out:>3} k {k} t {t:>6}: {:6.2} ms, {:5.1} GFLOP/s",
                best * 1e3,
                flops / best / 1e9
            );
        }
        Ok(())
    }
}
