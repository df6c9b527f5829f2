//! A fused 1-D convolution as a candle custom op, for the convolutions that
//! dominate synthesis time (HiFi-GAN resblocks and upsamplers, flow
//! WaveNets).
//!
//! candle's CPU conv1d materialises the whole im2col matrix, then transposes
//! the result; an im2col + GEMM library call (matrixmultiply) was the next
//! step, but packing the im2col copy again into the GEMM's panel layout cost
//! over half the multiply itself for these narrow layers (32 to 256
//! channels). Here the convolution is computed directly: the input is
//! activated (leaky ReLU) and zero-padded once, and register tiles of 4
//! output channels by 3 vectors of time steps accumulate every input
//! channel and tap from unaligned loads of the padded rows, the weights
//! regrouped at load time so each tile reads them in order. SIMD comes from
//! `pulp` (runtime dispatch to AVX2/FMA where the CPU has it, scalar
//! otherwise; no `unsafe` here). Bias and the residual connection start the
//! accumulators. Time blocks run in parallel on rayon's pool, which honours
//! `RAYON_NUM_THREADS` like candle's own kernels.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use ndarray::{ArrayViewMut2, Axis};
use rayon::prelude::*;

/// Multiply-adds of work per parallel block, about: enough that a task
/// outweighs rayon's hand-off, small enough that both cores get a share of
/// a first window.
const BLOCK_FLOATS: usize = 128 * 1024;

#[derive(Debug, Clone)]
pub struct FusedConv1d {
    /// `[c_out / 4][c_in][k][4]`, PyTorch's `[c_out, c_in, k]` regrouped for
    /// the register tiles (output channels past `c_out` are zero).
    tiled_weights: Vec<f32>,
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
        let flat = weight.flatten_all()?.to_vec1::<f32>()?;
        let blocks = c_out.div_ceil(TILE_CHANNELS);
        let mut tiled_weights = vec![0f32; blocks * c_in * k * TILE_CHANNELS];
        for o in 0..c_out {
            let (cb, c) = (o / TILE_CHANNELS, o % TILE_CHANNELS);
            for ci in 0..c_in {
                for kk in 0..k {
                    tiled_weights[((cb * c_in + ci) * k + kk) * TILE_CHANNELS + c] =
                        flat[(o * c_in + ci) * k + kk];
                }
            }
        }
        Ok(Self {
            tiled_weights,
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
        let mut out = vec![0f32; self.c_out * t_out];
        if t_out == 0 {
            return Ok((out, 0));
        }
        // The activated input, zero-padded on both sides, once: output step
        // m reads padded step m + kk * dilation for tap kk. The slack lets the
        // last tile load whole vectors.
        let width = t_out + span + TILE_SLACK;
        let mut padded = vec![0f32; self.c_in * width];
        padded
            .par_chunks_mut(width)
            .zip(x.par_chunks(t.max(1)))
            .for_each(|(row, src)| {
                let dst = &mut row[self.padding..self.padding + t];
                match self.input_slope {
                    Some(s) => {
                        for (d, &v) in dst.iter_mut().zip(src) {
                            *d = if v < 0.0 { v * s } else { v };
                        }
                    }
                    None => dst.copy_from_slice(src),
                }
            });
        let rows = self.c_in * self.k;
        // Columns per parallel block: enough work per task that splitting
        // pays, few enough blocks that both cores get some of a short input.
        let threads = rayon::current_num_threads().max(1);
        let block = (BLOCK_FLOATS / rows)
            .clamp(96, 4096)
            .min(t_out.div_ceil(2 * threads).next_multiple_of(TILE_SLACK))
            .max(TILE_SLACK);
        let mut out_view = ArrayViewMut2::from_shape((self.c_out, t_out), &mut out)
            .map_err(candle_core::Error::wrap)?;
        out_view
            .axis_chunks_iter_mut(Axis(1), block)
            .into_par_iter()
            .enumerate()
            .for_each(|(i, mut dst)| {
                let t0 = i * block;
                let n = dst.ncols();
                // This block's output, channels rounded up to whole tiles,
                // started from the bias (and the residual).
                let channels = self.c_out.next_multiple_of(TILE_CHANNELS);
                let mut acc = vec![0f32; channels * n];
                for (o, row) in acc.chunks_exact_mut(n).take(self.c_out).enumerate() {
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
                pulp::Arch::new().dispatch(DirectConv {
                    shape: ConvShape {
                        weights: &self.tiled_weights,
                        padded: &padded,
                        width,
                        c_in: self.c_in,
                        k: self.k,
                        dilation: self.dilation,
                        t0,
                        n,
                    },
                    acc: &mut acc,
                });
                for (o, mut row) in dst.axis_iter_mut(Axis(0)).enumerate() {
                    let src = &acc[o * n..(o + 1) * n];
                    for (d, &v) in row.iter_mut().zip(src) {
                        *d = v;
                    }
                }
            });
        Ok((out, t_out))
    }
}

/// Output channels per register tile of the direct convolution.
const TILE_CHANNELS: usize = 4;
/// Vectors of time steps per register tile: 4 channels x 3 vectors is 12
/// accumulators, which with 3 input vectors and a broadcast weight fills
/// AVX2's 16 registers.
const TILE_VECTORS: usize = 3;
/// Widest tile in time steps (3 AVX-512 vectors), the zero slack after each
/// padded input row.
const TILE_SLACK: usize = TILE_VECTORS * 16;

/// One block of output steps of a convolution, computed straight from the
/// padded input (no im2col, no packing): each register tile of 4 channels
/// by 3 vectors of time steps accumulates weight x input over every input
/// channel and tap, the input read as unaligned vectors at the tap's shift
/// and each weight broadcast.
struct DirectConv<'a> {
    shape: ConvShape<'a>,
    /// `[c_out rounded up to 4][n]`, holding the bias; the sums are added.
    acc: &'a mut [f32],
}

#[derive(Clone, Copy)]
struct ConvShape<'a> {
    /// `[c_out / 4][c_in][k][4]`: the 4 weights a tile needs per input
    /// channel and tap, side by side.
    weights: &'a [f32],
    padded: &'a [f32],
    width: usize,
    c_in: usize,
    k: usize,
    dilation: usize,
    /// The block's first output step.
    t0: usize,
    n: usize,
}

#[inline(always)]
fn load<S: pulp::Simd>(v: &[f32]) -> S::f32s {
    bytemuck::pod_read_unaligned(bytemuck::cast_slice(&v[..S::F32_LANES]))
}

#[inline(always)]
fn store<S: pulp::Simd>(v: &mut [f32], x: S::f32s) {
    bytemuck::cast_slice_mut::<f32, u8>(&mut v[..S::F32_LANES])
        .copy_from_slice(bytemuck::bytes_of(&x));
}

impl ConvShape<'_> {
    /// One tile: 4 channels (`w`, their weights) of `rows` (4 rows of
    /// `stride`) at column `col`, output steps `t0 + step ..`.
    #[inline(always)]
    fn tile<S: pulp::Simd>(
        &self,
        s: S,
        w: &[f32],
        rows: &mut [f32],
        stride: usize,
        col: usize,
        step: usize,
    ) {
        let l = S::F32_LANES;
        let mut acc = [[s.splat_f32s(0.0); TILE_VECTORS]; TILE_CHANNELS];
        for (c, a) in acc.iter_mut().enumerate() {
            for (v, slot) in a.iter_mut().enumerate() {
                *slot = load::<S>(&rows[c * stride + col + v * l..]);
            }
        }
        let base = self.t0 + step;
        let reach = (self.k - 1) * self.dilation + TILE_VECTORS * l;
        for ci in 0..self.c_in {
            let xr = &self.padded[ci * self.width + base..][..reach];
            let wr = &w[ci * self.k * TILE_CHANNELS..][..self.k * TILE_CHANNELS];
            for kk in 0..self.k {
                let xs = &xr[kk * self.dilation..];
                let xv: [S::f32s; TILE_VECTORS] = std::array::from_fn(|v| load::<S>(&xs[v * l..]));
                let wk = &wr[kk * TILE_CHANNELS..][..TILE_CHANNELS];
                for (c, a) in acc.iter_mut().enumerate() {
                    let wv = s.splat_f32s(wk[c]);
                    for (slot, &x) in a.iter_mut().zip(&xv) {
                        *slot = s.mul_add_f32s(wv, x, *slot);
                    }
                }
            }
        }
        for (c, a) in acc.iter().enumerate() {
            for (v, &slot) in a.iter().enumerate() {
                store::<S>(&mut rows[c * stride + col + v * l..], slot);
            }
        }
    }
}

impl pulp::WithSimd for DirectConv<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, s: S) {
        let shape = self.shape;
        let tile = TILE_VECTORS * S::F32_LANES;
        let n = shape.n;
        let per_block = shape.c_in * shape.k * TILE_CHANNELS;
        let full = n - n % tile;
        for (cb, rows) in self.acc.chunks_exact_mut(TILE_CHANNELS * n).enumerate() {
            let w = &shape.weights[cb * per_block..][..per_block];
            let mut j = 0;
            while j < full {
                shape.tile(s, w, rows, n, j, j);
                j += tile;
            }
            if full < n {
                // The ragged end through a tile-wide copy.
                let rest = n - full;
                let mut tmp = [0f32; TILE_CHANNELS * TILE_SLACK];
                for c in 0..TILE_CHANNELS {
                    tmp[c * tile..c * tile + rest]
                        .copy_from_slice(&rows[c * n + full..(c + 1) * n]);
                }
                shape.tile(s, w, &mut tmp, tile, 0, full);
                for c in 0..TILE_CHANNELS {
                    rows[c * n + full..(c + 1) * n]
                        .copy_from_slice(&tmp[c * tile..c * tile + rest]);
                }
            }
        }
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
