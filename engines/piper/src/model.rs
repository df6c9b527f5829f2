//! The VITS generator as Piper exports it: text encoder, stochastic duration
//! predictor, length regulation, normalising flow and HiFi-GAN decoder.
//!
//! Follows the inference path of Piper's `SynthesizerTrn.infer`. Layer sizes
//! come from the weight shapes and the convolution attributes of the exported
//! graph, so every Piper quality level loads through the same code.

use std::ops::Range;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Module, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use crate::conv::{FusedConv1d, FusedConvTranspose1d};
use crate::onnx::{ConvAttrs, OnnxWeights};
use crate::spline;
use crate::PiperError;

type Result<T> = std::result::Result<T, PiperError>;

/// Slope PyTorch's HiFi-GAN uses between its layers (`LRELU_SLOPE`).
const LRELU_SLOPE: f64 = 0.1;
/// `F.leaky_relu` default, used once before `conv_post`.
const LRELU_DEFAULT_SLOPE: f64 = 0.01;
/// `modules.LayerNorm` epsilon.
const LAYER_NORM_EPS: f64 = 1e-5;
/// The duration predictor's spline domain, fixed in VITS' `ConvFlow`.
const SPLINE_TAIL_BOUND: f32 = 5.0;

fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    // max(x, slope * x) equals leaky ReLU for 0 < slope < 1 in two passes
    // over memory instead of candle_nn's five.
    Ok(x.maximum(&(x * slope)?)?)
}

/// A 1-D convolution with the hyper-parameters its ONNX node used.
#[derive(Debug, Clone)]
struct Conv1d {
    weight: Tensor,
    /// `[c_out, 1]`, ready to broadcast over time.
    bias: Option<Tensor>,
    attrs: ConvAttrs,
    /// The fast path for ordinary (ungrouped, unstrided) wide kernels.
    fused: Option<FusedConv1d>,
}

impl Conv1d {
    fn load(w: &OnnxWeights, module: &str) -> Result<Self> {
        let weight = w.get(&format!("{module}.weight"))?;
        let bias_name = format!("{module}.bias");
        let bias = if w.contains(&bias_name) {
            let b = w.get(&bias_name)?;
            let n = b.elem_count();
            Some(b.reshape((n, 1))?)
        } else {
            None
        };
        let attrs = w.conv_attrs(module)?;
        let fused = if attrs.groups == 1 && attrs.stride == 1 && weight.dim(2)? > 1 {
            Some(FusedConv1d::new(
                &weight,
                bias.as_ref(),
                attrs.dilation,
                attrs.padding,
            )?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            attrs,
            fused,
        })
    }

    /// `conv(leaky_relu(x))`, plus `x` itself when `residual`, in one pass.
    fn fused_variant(&self, slope: f64, residual: bool) -> Result<FusedConv1d> {
        let a = self.attrs;
        if a.groups != 1 || a.stride != 1 {
            return Err(PiperError::Format(format!("cannot fuse conv {a:?}")));
        }
        let op = FusedConv1d::new(&self.weight, self.bias.as_ref(), a.dilation, a.padding)?
            .with_input_leaky_relu(slope as f32);
        Ok(if residual { op.with_residual() } else { op })
    }

    /// Speaker-conditioning convs exist only in multi-speaker voices.
    fn load_optional(w: &OnnxWeights, module: &str) -> Result<Option<Self>> {
        if w.contains(&format!("{module}.weight")) {
            Ok(Some(Self::load(w, module)?))
        } else {
            Ok(None)
        }
    }

    fn out_channels(&self) -> Result<usize> {
        Ok(self.weight.dim(0)?)
    }

    fn in_channels(&self) -> Result<usize> {
        Ok(self.weight.dim(1)? * self.attrs.groups)
    }

    /// Input steps on either side that one output step reads.
    fn reach(&self) -> Result<usize> {
        let span = self.attrs.dilation * (self.weight.dim(2)? - 1);
        Ok(self
            .attrs
            .padding
            .max(span.saturating_sub(self.attrs.padding)))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = self.attrs;
        if let Some(op) = &self.fused {
            return Ok(x.contiguous()?.apply_op1_no_bwd(op)?);
        }
        let y = if a.groups > 1 {
            depthwise_conv1d(x, &self.weight, a)?
        } else if self.weight.dim(2)? == 1 && a.stride == 1 {
            // A pointwise conv is a plain matmul; skip im2col.
            let (b, _, t) = x.dims3()?;
            let w = self.weight.squeeze(2)?;
            let x2 = x.squeeze(0)?;
            w.matmul(&x2)?.reshape((b, w.dim(0)?, t))?
        } else {
            x.conv1d(&self.weight, a.padding, a.stride, a.dilation, 1)?
        };
        match &self.bias {
            Some(b) => Ok(y.broadcast_add(b)?),
            None => Ok(y),
        }
    }
}

/// Depthwise (groups == channels) convolution; candle would run one conv per
/// channel, which is far slower than this direct loop for the duration
/// predictor's short sequences.
fn depthwise_conv1d(x: &Tensor, weight: &Tensor, a: ConvAttrs) -> Result<Tensor> {
    let (b, c, t) = x.dims3()?;
    let (wc, per_group, k) = weight.dims3()?;
    if b != 1 || wc != c || per_group != 1 || a.groups != c || a.stride != 1 {
        return Err(PiperError::Format(format!(
            "unsupported grouped convolution: input {:?}, weight {:?}, {a:?}",
            x.dims(),
            weight.dims()
        )));
    }
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let ws = weight.flatten_all()?.to_vec1::<f32>()?;
    let t_out = (t + 2 * a.padding).saturating_sub(a.dilation * (k - 1));
    let mut out = vec![0f32; c * t_out];
    for ch in 0..c {
        let xrow = &xs[ch * t..(ch + 1) * t];
        let wrow = &ws[ch * k..(ch + 1) * k];
        for (o, slot) in out[ch * t_out..(ch + 1) * t_out].iter_mut().enumerate() {
            let mut acc = 0f32;
            for (j, wv) in wrow.iter().enumerate() {
                let pos = o + j * a.dilation;
                if pos >= a.padding && pos - a.padding < t {
                    acc += wv * xrow[pos - a.padding];
                }
            }
            *slot = acc;
        }
    }
    Ok(Tensor::from_vec(out, (1, c, t_out), x.device())?)
}

/// VITS' channel-wise LayerNorm over `[1, C, T]`.
#[derive(Debug, Clone)]
struct ChannelNorm {
    gamma: Tensor,
    beta: Tensor,
}

impl ChannelNorm {
    fn load(w: &OnnxWeights, module: &str) -> Result<Self> {
        let gamma = w.get(&format!("{module}.gamma"))?;
        let beta = w.get(&format!("{module}.beta"))?;
        let c = gamma.elem_count();
        Ok(Self {
            gamma: gamma.reshape((c, 1))?,
            beta: beta.reshape((c, 1))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(1)?;
        let xn = xc.broadcast_div(&(var + LAYER_NORM_EPS)?.sqrt()?)?;
        Ok(xn.broadcast_mul(&self.gamma)?.broadcast_add(&self.beta)?)
    }
}

/// Multi-head self-attention with windowed relative position embeddings
/// (shared across heads), as in VITS' `attentions.MultiHeadAttention`.
#[derive(Debug, Clone)]
struct RelAttention {
    conv_q: Conv1d,
    conv_k: Conv1d,
    conv_v: Conv1d,
    conv_o: Conv1d,
    /// `[2 * window + 1, k_channels]`
    emb_rel_k: Tensor,
    emb_rel_v: Tensor,
    n_heads: usize,
    k_channels: usize,
    window: usize,
}

impl RelAttention {
    fn load(w: &OnnxWeights, module: &str) -> Result<Self> {
        let conv_q = Conv1d::load(w, &format!("{module}.conv_q"))?;
        let emb_rel_k = w.get(&format!("{module}.emb_rel_k"))?;
        let emb_rel_v = w.get(&format!("{module}.emb_rel_v"))?;
        let (shared, span, k_channels) = emb_rel_k.dims3()?;
        if shared != 1 || span % 2 == 0 || k_channels == 0 {
            return Err(PiperError::Format(format!(
                "{module}: unsupported relative embedding shape {:?}",
                emb_rel_k.dims()
            )));
        }
        let channels = conv_q.out_channels()?;
        Ok(Self {
            conv_k: Conv1d::load(w, &format!("{module}.conv_k"))?,
            conv_v: Conv1d::load(w, &format!("{module}.conv_v"))?,
            conv_o: Conv1d::load(w, &format!("{module}.conv_o"))?,
            conv_q,
            emb_rel_k: emb_rel_k.squeeze(0)?,
            emb_rel_v: emb_rel_v.squeeze(0)?,
            n_heads: channels / k_channels,
            k_channels,
            window: (span - 1) / 2,
        })
    }

    fn heads(&self, x: &Tensor, t: usize) -> Result<Tensor> {
        // [1, C, T] -> [H, T, Kc]
        Ok(x.reshape((self.n_heads, self.k_channels, t))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let t = x.dim(2)?;
        let scale = 1.0 / (self.k_channels as f64).sqrt();
        let q = (self.heads(&self.conv_q.forward(x)?, t)? * scale)?;
        let k = self.heads(&self.conv_k.forward(x)?, t)?;
        let v = self.heads(&self.conv_v.forward(x)?, t)?;
        let span = 2 * self.window + 1;
        let h = self.n_heads;

        let scores = q.matmul(&k.t()?)?;
        // Relative logits [H, T, span]: logit for key j from query i sits at
        // column j - i + window; keys outside the window get nothing.
        let rel =
            q.matmul(&self.emb_rel_k.t()?.unsqueeze(0)?.broadcast_as((
                h,
                self.k_channels,
                span,
            ))?)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut local = vec![0f32; h * t * t];
        for head in 0..h {
            for i in 0..t {
                for r in 0..span {
                    let j = i + r;
                    if j < self.window || j - self.window >= t {
                        continue;
                    }
                    local[(head * t + i) * t + j - self.window] = rel[(head * t + i) * span + r];
                }
            }
        }
        let scores = (scores + Tensor::from_vec(local, (h, t, t), x.device())?)?;
        let p = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = p.matmul(&v)?;

        // And the value side: the attention weight on key j feeds relative
        // value embedding j - i + window.
        let pv = p.flatten_all()?.to_vec1::<f32>()?;
        let mut rel_w = vec![0f32; h * t * span];
        for head in 0..h {
            for i in 0..t {
                for r in 0..span {
                    let j = i + r;
                    if j < self.window || j - self.window >= t {
                        continue;
                    }
                    rel_w[(head * t + i) * span + r] = pv[(head * t + i) * t + j - self.window];
                }
            }
        }
        let rel_w = Tensor::from_vec(rel_w, (h * t, span), x.device())?;
        let rel_out = rel_w
            .matmul(&self.emb_rel_v)?
            .reshape((h, t, self.k_channels))?;
        let out =
            (out + rel_out)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((1, h * self.k_channels, t))?;
        self.conv_o.forward(&out)
    }
}

#[derive(Debug, Clone)]
struct Ffn {
    conv_1: Conv1d,
    conv_2: Conv1d,
    /// Both convs as fused ops with their "same" padding (the ReLU folded
    /// into the second), for odd kernels, where that padding is symmetric.
    fused: Option<(FusedConv1d, FusedConv1d)>,
}

impl Ffn {
    fn load(w: &OnnxWeights, module: &str) -> Result<Self> {
        let conv_1 = Conv1d::load(w, &format!("{module}.conv_1"))?;
        let conv_2 = Conv1d::load(w, &format!("{module}.conv_2"))?;
        let same = |c: &Conv1d| -> Result<Option<FusedConv1d>> {
            let k = c.weight.dim(2)?;
            let plain = c.attrs.groups == 1
                && c.attrs.stride == 1
                && c.attrs.dilation == 1
                && c.attrs.padding == 0;
            Ok((plain && k % 2 == 1)
                .then(|| FusedConv1d::new(&c.weight, c.bias.as_ref(), 1, (k - 1) / 2))
                .transpose()?)
        };
        let fused = match (same(&conv_1)?, same(&conv_2)?) {
            (Some(a), Some(b)) => Some((a, b.with_input_leaky_relu(0.0))),
            _ => None,
        };
        Ok(Self {
            conv_1,
            conv_2,
            fused,
        })
    }

    fn conv_same(conv: &Conv1d, x: &Tensor) -> Result<Tensor> {
        // VITS pads the FFN convs itself ("same" padding, extra on the right
        // for even kernels) and exports them with explicit Pad nodes.
        let k = conv.weight.dim(2)?;
        let x = x.pad_with_zeros(2, (k - 1) / 2, k / 2)?;
        let y = x.conv1d(&conv.weight, 0, 1, 1, 1)?;
        match &conv.bias {
            Some(b) => Ok(y.broadcast_add(b)?),
            None => Ok(y),
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some((c1, c2)) = &self.fused {
            let h = x.contiguous()?.apply_op1_no_bwd(c1)?;
            return Ok(h.apply_op1_no_bwd(c2)?);
        }
        let h = Self::conv_same(&self.conv_1, x)?.relu()?;
        Self::conv_same(&self.conv_2, &h)
    }
}

#[derive(Debug, Clone)]
struct TextEncoder {
    emb: candle_nn::Embedding,
    hidden: usize,
    attn: Vec<RelAttention>,
    norm_1: Vec<ChannelNorm>,
    ffn: Vec<Ffn>,
    norm_2: Vec<ChannelNorm>,
    proj: Conv1d,
}

impl TextEncoder {
    fn load(w: &OnnxWeights) -> Result<Self> {
        let emb_w = w.get("enc_p.emb.weight")?;
        let hidden = emb_w.dim(1)?;
        let mut attn = Vec::new();
        let mut norm_1 = Vec::new();
        let mut ffn = Vec::new();
        let mut norm_2 = Vec::new();
        let mut i = 0;
        while w.contains(&format!("enc_p.encoder.attn_layers.{i}.conv_q.weight")) {
            let p = "enc_p.encoder";
            attn.push(RelAttention::load(w, &format!("{p}.attn_layers.{i}"))?);
            norm_1.push(ChannelNorm::load(w, &format!("{p}.norm_layers_1.{i}"))?);
            ffn.push(Ffn::load(w, &format!("{p}.ffn_layers.{i}"))?);
            norm_2.push(ChannelNorm::load(w, &format!("{p}.norm_layers_2.{i}"))?);
            i += 1;
        }
        if attn.is_empty() {
            return Err(PiperError::MissingWeight(
                "enc_p.encoder.attn_layers.0".into(),
            ));
        }
        Ok(Self {
            emb: candle_nn::Embedding::new(emb_w, hidden),
            hidden,
            attn,
            norm_1,
            ffn,
            norm_2,
            proj: Conv1d::load(w, "enc_p.proj")?,
        })
    }

    /// Returns `(x, m_p, logs_p)`, each `[1, C, T]`.
    fn forward(&self, ids: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let x = (self.emb.forward(ids)? * (self.hidden as f64).sqrt())?;
        let mut x = x.transpose(1, 2)?.contiguous()?;
        for l in 0..self.attn.len() {
            let y = self.attn[l].forward(&x)?;
            x = self.norm_1[l].forward(&(x + y)?)?;
            let y = self.ffn[l].forward(&x)?;
            x = self.norm_2[l].forward(&(x + y)?)?;
        }
        let stats = self.proj.forward(&x)?;
        let half = stats.dim(1)? / 2;
        let m = stats.narrow(1, 0, half)?;
        let logs = stats.narrow(1, half, half)?;
        Ok((x, m, logs))
    }
}

/// Dilated depthwise-separable conv stack (`modules.DDSConv`).
#[derive(Debug, Clone)]
struct DdsConv {
    sep: Vec<Conv1d>,
    pointwise: Vec<Conv1d>,
    norm_1: Vec<ChannelNorm>,
    norm_2: Vec<ChannelNorm>,
}

impl DdsConv {
    fn load(w: &OnnxWeights, module: &str) -> Result<Self> {
        let mut s = Self {
            sep: Vec::new(),
            pointwise: Vec::new(),
            norm_1: Vec::new(),
            norm_2: Vec::new(),
        };
        let mut i = 0;
        while w.contains(&format!("{module}.convs_sep.{i}.weight")) {
            s.sep
                .push(Conv1d::load(w, &format!("{module}.convs_sep.{i}"))?);
            s.pointwise
                .push(Conv1d::load(w, &format!("{module}.convs_1x1.{i}"))?);
            s.norm_1
                .push(ChannelNorm::load(w, &format!("{module}.norms_1.{i}"))?);
            s.norm_2
                .push(ChannelNorm::load(w, &format!("{module}.norms_2.{i}"))?);
            i += 1;
        }
        Ok(s)
    }

    fn forward(&self, x: &Tensor, g: Option<&Tensor>) -> Result<Tensor> {
        let mut x = match g {
            Some(g) => (x + g)?,
            None => x.clone(),
        };
        for i in 0..self.sep.len() {
            let y = self.sep[i].forward(&x)?;
            let y = self.norm_1[i].forward(&y)?.gelu_erf()?;
            let y = self.pointwise[i].forward(&y)?;
            let y = self.norm_2[i].forward(&y)?.gelu_erf()?;
            x = (x + y)?;
        }
        Ok(x)
    }
}

/// `ConvFlow`: a rational-quadratic spline coupling layer.
#[derive(Debug, Clone)]
struct ConvFlow {
    pre: Conv1d,
    convs: DdsConv,
    proj: Conv1d,
    filter_channels: usize,
    num_bins: usize,
}

impl ConvFlow {
    fn load(w: &OnnxWeights, module: &str) -> Result<Self> {
        let pre = Conv1d::load(w, &format!("{module}.pre"))?;
        let proj = Conv1d::load(w, &format!("{module}.proj"))?;
        let half = pre.in_channels()?;
        let params = proj.out_channels()? / half.max(1);
        if half != 1 || (params + 1) % 3 != 0 {
            return Err(PiperError::Format(format!(
                "{module}: unsupported spline flow with {half} channels and {params} parameters"
            )));
        }
        Ok(Self {
            filter_channels: pre.out_channels()?,
            num_bins: (params + 1) / 3,
            convs: DdsConv::load(w, &format!("{module}.convs"))?,
            pre,
            proj,
        })
    }

    /// Reverse pass on `z` = `[z0, z1]` (each a length-T row), conditioned on
    /// the predictor's hidden state `g`.
    fn reverse(&self, z0: &[f32], z1: &mut [f32], g: &Tensor) -> Result<()> {
        let t = z0.len();
        let x0 = Tensor::from_slice(z0, (1, 1, t), g.device())?;
        let h = self.pre.forward(&x0)?;
        let h = self.convs.forward(&h, Some(g))?;
        let h = self.proj.forward(&h)?.squeeze(0)?.t()?.contiguous()?;
        let h = h.flatten_all()?.to_vec1::<f32>()?;
        let n = self.num_bins;
        let stride = 3 * n - 1;
        let scale = 1.0 / (self.filter_channels as f32).sqrt();
        for (i, x) in z1.iter_mut().enumerate() {
            let p = &h[i * stride..(i + 1) * stride];
            let widths: Vec<f32> = p[..n].iter().map(|v| v * scale).collect();
            let heights: Vec<f32> = p[n..2 * n].iter().map(|v| v * scale).collect();
            *x = spline::inverse_rq_spline_linear_tails(
                *x,
                &widths,
                &heights,
                &p[2 * n..],
                SPLINE_TAIL_BOUND,
            );
        }
        Ok(())
    }
}

/// `StochasticDurationPredictor`, reverse direction only.
#[derive(Debug, Clone)]
struct DurationPredictor {
    pre: Conv1d,
    cond: Option<Conv1d>,
    convs: DdsConv,
    proj: Conv1d,
    /// Applied in reverse order, each followed (in forward order) by a flip.
    flows: Vec<ConvFlow>,
    affine_m: [f32; 2],
    affine_exp_neg_logs: [f32; 2],
}

impl DurationPredictor {
    fn load(w: &OnnxWeights) -> Result<Self> {
        // Forward order: ElementwiseAffine, then (ConvFlow, Flip) pairs. The
        // first ConvFlow is skipped at inference and not exported.
        let mut flows = Vec::new();
        // Index 1 is the ConvFlow VITS drops at inference; start past it.
        let mut i = 2;
        while i < 64 {
            let module = format!("dp.flows.{i}");
            if w.contains(&format!("{module}.pre.weight")) {
                flows.push((i, ConvFlow::load(w, &module)?));
            }
            i += 1;
        }
        if flows.is_empty() {
            return Err(PiperError::MissingWeight("dp.flows.*.pre.weight".into()));
        }
        let pair = |t: Tensor| -> Result<[f32; 2]> {
            let v = t.flatten_all()?.to_vec1::<f32>()?;
            match v.as_slice() {
                [a, b] => Ok([*a, *b]),
                _ => Err(PiperError::Format("dp.flows.0: expected 2 channels".into())),
            }
        };
        let affine_m = pair(w.get("dp.flows.0.m")?)?;
        // The exporter folds exp(-logs) into a constant when it can.
        let affine_exp_neg_logs = if w.contains("dp.flows.0.logs") {
            let l = pair(w.get("dp.flows.0.logs")?)?;
            [(-l[0]).exp(), (-l[1]).exp()]
        } else {
            pair(w.node_input("/dp/flows.0/Mul", 1)?)?
        };
        Ok(Self {
            pre: Conv1d::load(w, "dp.pre")?,
            cond: Conv1d::load_optional(w, "dp.cond")?,
            convs: DdsConv::load(w, "dp.convs")?,
            proj: Conv1d::load(w, "dp.proj")?,
            flows: flows.into_iter().map(|(_, f)| f).collect(),
            affine_m,
            affine_exp_neg_logs,
        })
    }

    /// log durations per phoneme.
    fn forward(
        &self,
        x: &Tensor,
        speaker: Option<&Tensor>,
        noise_w: f32,
        rng: &mut StdRng,
    ) -> Result<Vec<f32>> {
        let t = x.dim(2)?;
        let mut h = self.pre.forward(x)?;
        if let (Some(cond), Some(g)) = (&self.cond, speaker) {
            h = h.broadcast_add(&cond.forward(g)?)?;
        }
        let h = self.convs.forward(&h, None)?;
        let g = self.proj.forward(&h)?;

        let mut z = [vec![0f32; t], vec![0f32; t]];
        if noise_w != 0.0 {
            for row in z.iter_mut() {
                for v in row.iter_mut() {
                    let n: f32 = StandardNormal.sample(rng);
                    *v = n * noise_w;
                }
            }
        }
        // Reverse order: each Flip (swapping the two channels) comes before
        // the ConvFlow it followed in the forward direction.
        let [mut z0, mut z1] = z;
        for flow in self.flows.iter().rev() {
            std::mem::swap(&mut z0, &mut z1);
            flow.reverse(&z0, &mut z1, &g)?;
        }
        // The last flip (after the skipped first ConvFlow) and the affine.
        std::mem::swap(&mut z0, &mut z1);
        Ok(z0
            .iter()
            .map(|v| (v - self.affine_m[0]) * self.affine_exp_neg_logs[0])
            .collect())
    }
}

/// WaveNet-style gated residual stack (`modules.WN`) without conditioning.
#[derive(Debug, Clone)]
struct WaveNet {
    in_layers: Vec<Conv1d>,
    /// Speaker conditioning for every layer at once (`2 * hidden` each).
    cond_layer: Option<Conv1d>,
    res_skip: Vec<Conv1d>,
    hidden: usize,
}

impl WaveNet {
    fn load(w: &OnnxWeights, module: &str) -> Result<Self> {
        let mut in_layers = Vec::new();
        let mut res_skip = Vec::new();
        let mut i = 0;
        while w.contains(&format!("{module}.in_layers.{i}.weight")) {
            in_layers.push(Conv1d::load(w, &format!("{module}.in_layers.{i}"))?);
            res_skip.push(Conv1d::load(w, &format!("{module}.res_skip_layers.{i}"))?);
            i += 1;
        }
        let hidden = in_layers
            .first()
            .ok_or_else(|| PiperError::MissingWeight(format!("{module}.in_layers.0.weight")))?
            .out_channels()?
            / 2;
        Ok(Self {
            in_layers,
            cond_layer: Conv1d::load_optional(w, &format!("{module}.cond_layer"))?,
            res_skip,
            hidden,
        })
    }

    fn forward(&self, x: &Tensor, speaker: Option<&Tensor>) -> Result<Tensor> {
        let mut x = x.clone();
        let mut output: Option<Tensor> = None;
        let n = self.in_layers.len();
        let g = match (&self.cond_layer, speaker) {
            (Some(cond), Some(g)) => Some(cond.forward(g)?),
            _ => None,
        };
        for i in 0..n {
            let mut x_in = self.in_layers[i].forward(&x)?;
            if let Some(g) = &g {
                let width = 2 * self.hidden;
                x_in = x_in.broadcast_add(&g.narrow(1, i * width, width)?)?;
            }
            let a = x_in.narrow(1, 0, self.hidden)?.tanh()?;
            let b = candle_nn::ops::sigmoid(&x_in.narrow(1, self.hidden, self.hidden)?)?;
            let acts = (a * b)?;
            let rs = self.res_skip[i].forward(&acts)?;
            let skip = if i + 1 < n {
                x = (x + rs.narrow(1, 0, self.hidden)?)?;
                rs.narrow(1, self.hidden, self.hidden)?
            } else {
                rs
            };
            output = Some(match output {
                Some(o) => (o + skip)?,
                None => skip,
            });
        }
        output.ok_or_else(|| PiperError::Format("empty WaveNet".into()))
    }
}

#[derive(Debug, Clone)]
struct CouplingLayer {
    pre: Conv1d,
    enc: WaveNet,
    post: Conv1d,
    half: usize,
    mean_only: bool,
}

impl CouplingLayer {
    fn load(w: &OnnxWeights, module: &str) -> Result<Self> {
        let pre = Conv1d::load(w, &format!("{module}.pre"))?;
        let post = Conv1d::load(w, &format!("{module}.post"))?;
        let half = pre.in_channels()?;
        Ok(Self {
            enc: WaveNet::load(w, &format!("{module}.enc"))?,
            mean_only: post.out_channels()? == half,
            pre,
            post,
            half,
        })
    }

    /// Frames on either side of an output frame that can influence it.
    fn reach(&self) -> Result<usize> {
        let mut frames = self.pre.reach()? + self.post.reach()?;
        for (input, res_skip) in self.enc.in_layers.iter().zip(&self.enc.res_skip) {
            frames += input.reach()? + res_skip.reach()?;
        }
        Ok(frames)
    }

    fn reverse(&self, x: &Tensor, speaker: Option<&Tensor>) -> Result<Tensor> {
        let x0 = x.narrow(1, 0, self.half)?;
        let x1 = x.narrow(1, self.half, self.half)?;
        let h = self.pre.forward(&x0)?;
        let h = self.enc.forward(&h, speaker)?;
        let stats = self.post.forward(&h)?;
        let x1 = if self.mean_only {
            (x1 - stats)?
        } else {
            let m = stats.narrow(1, 0, self.half)?;
            let logs = stats.narrow(1, self.half, self.half)?;
            ((x1 - m)? * logs.neg()?.exp()?)?
        };
        Ok(Tensor::cat(&[&x0, &x1], 1)?)
    }
}

/// HiFi-GAN residual blocks, each conv fused with the leaky ReLU before it.
#[derive(Debug, Clone)]
enum ResBlock {
    /// ResBlock1: pairs of convs per dilation; the second adds the residual.
    One(Vec<(FusedConv1d, FusedConv1d)>),
    /// ResBlock2: one conv per dilation, residual included.
    Two(Vec<FusedConv1d>),
}

impl ResBlock {
    fn load(w: &OnnxWeights, module: &str) -> Result<Self> {
        let mut i = 0;
        if w.contains(&format!("{module}.convs1.0.weight")) {
            let mut pairs = Vec::new();
            while w.contains(&format!("{module}.convs1.{i}.weight")) {
                pairs.push((
                    Conv1d::load(w, &format!("{module}.convs1.{i}"))?
                        .fused_variant(LRELU_SLOPE, false)?,
                    Conv1d::load(w, &format!("{module}.convs2.{i}"))?
                        .fused_variant(LRELU_SLOPE, false)?,
                ));
                i += 1;
            }
            Ok(Self::One(pairs))
        } else {
            let mut convs = Vec::new();
            while w.contains(&format!("{module}.convs.{i}.weight")) {
                convs.push(
                    Conv1d::load(w, &format!("{module}.convs.{i}"))?
                        .fused_variant(LRELU_SLOPE, true)?,
                );
                i += 1;
            }
            if convs.is_empty() {
                return Err(PiperError::MissingWeight(format!(
                    "{module}.convs.0.weight"
                )));
            }
            Ok(Self::Two(convs))
        }
    }

    /// Input steps on either side that one output step depends on.
    fn reach(&self) -> usize {
        match self {
            Self::One(pairs) => pairs.iter().map(|(c1, c2)| c1.reach() + c2.reach()).sum(),
            Self::Two(convs) => convs.iter().map(FusedConv1d::reach).sum(),
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.contiguous()?;
        match self {
            Self::One(pairs) => {
                for (c1, c2) in pairs {
                    let xt = x.apply_op1_no_bwd(c1)?;
                    let xt = xt.apply_op1_no_bwd(c2)?;
                    x = (xt + x)?;
                }
            }
            Self::Two(convs) => {
                for c in convs {
                    x = x.apply_op1_no_bwd(c)?;
                }
            }
        }
        Ok(x)
    }
}

#[derive(Debug, Clone)]
struct Upsample {
    /// `leaky_relu` then `ConvTranspose1d`, as one op.
    op: FusedConvTranspose1d,
    stride: usize,
}

impl Upsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.contiguous()?.apply_op1_no_bwd(&self.op)?)
    }
}

/// HiFi-GAN generator (`dec`).
#[derive(Debug, Clone)]
struct Decoder {
    conv_pre: Conv1d,
    cond: Option<Conv1d>,
    ups: Vec<Upsample>,
    resblocks: Vec<ResBlock>,
    conv_post: Conv1d,
}

impl Decoder {
    fn load(w: &OnnxWeights) -> Result<Self> {
        let mut ups = Vec::new();
        let mut i = 0;
        while w.contains(&format!("dec.ups.{i}.weight")) {
            let attrs = w.conv_attrs(&format!("dec.ups.{i}"))?;
            if attrs.dilation != 1 || attrs.groups != 1 {
                return Err(PiperError::Format(format!(
                    "dec.ups.{i}: unsupported {attrs:?}"
                )));
            }
            let op = FusedConvTranspose1d::new(
                &w.get(&format!("dec.ups.{i}.weight"))?,
                &w.get(&format!("dec.ups.{i}.bias"))?,
                attrs.stride,
                attrs.padding,
                LRELU_SLOPE as f32,
            )?;
            ups.push(Upsample {
                op,
                stride: attrs.stride,
            });
            i += 1;
        }
        let mut resblocks = Vec::new();
        let mut i = 0;
        while w.contains(&format!("dec.resblocks.{i}.convs.0.weight"))
            || w.contains(&format!("dec.resblocks.{i}.convs1.0.weight"))
        {
            resblocks.push(ResBlock::load(w, &format!("dec.resblocks.{i}"))?);
            i += 1;
        }
        if ups.is_empty() || resblocks.is_empty() || resblocks.len() % ups.len() != 0 {
            return Err(PiperError::Format(format!(
                "decoder: {} upsamplers and {} resblocks",
                ups.len(),
                resblocks.len()
            )));
        }
        Ok(Self {
            conv_pre: Conv1d::load(w, "dec.conv_pre")?,
            cond: Conv1d::load_optional(w, "dec.cond")?,
            ups,
            resblocks,
            conv_post: Conv1d::load(w, "dec.conv_post")?,
        })
    }

    fn hop_length(&self) -> usize {
        self.ups.iter().map(|u| u.stride).product()
    }

    /// Latent frames on either side of an output sample that can influence
    /// it: the decoder's receptive field, rounded up to whole frames.
    fn receptive_field_frames(&self) -> Result<usize> {
        let hop = self.hop_length();
        let per_stage = self.resblocks.len() / self.ups.len();
        // Output samples per step at the rate of the layer at hand.
        let mut step = hop;
        let mut samples = self.conv_pre.reach()? * step;
        for (i, up) in self.ups.iter().enumerate() {
            samples += up.op.reach() * step;
            step /= up.stride;
            let widest = self.resblocks[i * per_stage..(i + 1) * per_stage]
                .iter()
                .map(ResBlock::reach)
                .max()
                .unwrap_or(0);
            samples += widest * step;
        }
        samples += self.conv_post.reach()?;
        Ok(samples.div_ceil(hop))
    }

    fn forward(&self, z: &Tensor, speaker: Option<&Tensor>) -> Result<Tensor> {
        let per_stage = self.resblocks.len() / self.ups.len();
        let mut x = self.conv_pre.forward(z)?;
        if let (Some(cond), Some(g)) = (&self.cond, speaker) {
            x = x.broadcast_add(&cond.forward(g)?)?;
        }
        for (i, up) in self.ups.iter().enumerate() {
            x = up.forward(&x)?;
            let mut acc: Option<Tensor> = None;
            for rb in &self.resblocks[i * per_stage..(i + 1) * per_stage] {
                let y = rb.forward(&x)?;
                acc = Some(match acc {
                    Some(a) => (a + y)?,
                    None => y,
                });
            }
            x = match acc {
                Some(a) => (a / per_stage as f64)?,
                None => x,
            };
        }
        let x = leaky_relu(&x, LRELU_DEFAULT_SLOPE)?;
        Ok(self.conv_post.forward(&x)?.tanh()?)
    }
}

/// The whole generator.
#[derive(Debug, Clone)]
pub struct Vits {
    enc_p: TextEncoder,
    /// Speaker embeddings `[n_speakers, gin]`, in multi-speaker voices.
    emb_g: Option<Tensor>,
    dp: DurationPredictor,
    /// Coupling layers in forward order; each is followed by a channel flip.
    flows: Vec<CouplingLayer>,
    /// The flow's receptive field in frames (its layers' reaches added up).
    flow_context: usize,
    dec: Decoder,
    device: Device,
}

impl Vits {
    pub fn load(w: &OnnxWeights, device: &Device) -> Result<Self> {
        let emb_g = if w.contains("emb_g.weight") {
            Some(w.get("emb_g.weight")?)
        } else {
            None
        };
        let mut flows = Vec::new();
        for i in 0..64 {
            let module = format!("flow.flows.{i}");
            if w.contains(&format!("{module}.pre.weight")) {
                flows.push(CouplingLayer::load(w, &module)?);
            }
        }
        if flows.is_empty() {
            return Err(PiperError::MissingWeight("flow.flows.0.pre.weight".into()));
        }
        let flow_context = flows
            .iter()
            .map(CouplingLayer::reach)
            .sum::<Result<usize>>()?;
        Ok(Self {
            enc_p: TextEncoder::load(w)?,
            emb_g,
            dp: DurationPredictor::load(w)?,
            flows,
            flow_context,
            dec: Decoder::load(w)?,
            device: device.clone(),
        })
    }

    pub fn hop_length(&self) -> usize {
        self.dec.hop_length()
    }

    /// Speakers the model was trained with (1 for single-speaker voices).
    pub fn num_speakers(&self) -> Result<usize> {
        Ok(match &self.emb_g {
            Some(e) => e.dim(0)?,
            None => 1,
        })
    }

    /// The flow's receptive field in latent frames: how far the prior at
    /// one frame can reach the flow's output.
    pub fn flow_receptive_field_frames(&self) -> usize {
        self.flow_context
    }

    /// The decoder's receptive field in latent frames (see
    /// [`Vits::decode_frames`]).
    pub fn receptive_field_frames(&self) -> Result<usize> {
        self.dec.receptive_field_frames()
    }

    /// Text encoder, durations and noise for one sentence: the latent the
    /// flow and decoder turn into audio, as far as [`Vits::decode_frames`]
    /// asks. Every random draw happens here, so decoding the latent in
    /// pieces changes nothing but the arithmetic.
    pub fn latent(
        &self,
        ids: &[i64],
        speaker_id: i64,
        noise_scale: f32,
        length_scale: f32,
        noise_w: f32,
        seed: u64,
    ) -> Result<Latent> {
        let vocab = self.enc_p.emb.embeddings().dim(0)?;
        let ids_u32 = ids
            .iter()
            .map(|&id| {
                u32::try_from(id)
                    .ok()
                    .filter(|&v| (v as usize) < vocab)
                    .ok_or(PiperError::InvalidPhonemeId(id))
            })
            .collect::<Result<Vec<u32>>>()?;
        if ids_u32.is_empty() {
            return Err(PiperError::EmptyInput);
        }
        let speaker = match &self.emb_g {
            Some(table) => {
                let n = table.dim(0)?;
                let sid = u32::try_from(speaker_id)
                    .ok()
                    .filter(|&s| (s as usize) < n)
                    .ok_or(PiperError::InvalidSpeaker(speaker_id))?;
                // [1, gin, 1], broadcast over time by every consumer.
                Some(
                    table
                        .narrow(0, sid as usize, 1)?
                        .unsqueeze(2)?
                        .contiguous()?,
                )
            }
            None if speaker_id == 0 => None,
            None => return Err(PiperError::InvalidSpeaker(speaker_id)),
        };
        let g = speaker.as_ref();
        let mut rng = StdRng::seed_from_u64(seed);
        let t = ids_u32.len();
        let ids = Tensor::from_vec(ids_u32, (1, t), &self.device)?;
        let started = Instant::now();
        let (x, m_p, logs_p) = self.enc_p.forward(&ids)?;
        let encoder = started.elapsed();

        let started = Instant::now();
        let logw = self.dp.forward(&x, g, noise_w, &mut rng)?;
        // Frames per phoneme: ceil(exp(logw) * length_scale), as Piper does.
        let mut frame_src: Vec<u32> = Vec::new();
        for (i, lw) in logw.iter().enumerate() {
            let frames = (lw.exp() * length_scale).ceil();
            let frames = if frames.is_finite() && frames > 0.0 {
                frames as usize
            } else {
                0
            };
            frame_src.extend(std::iter::repeat_n(i as u32, frames));
        }
        if frame_src.is_empty() {
            // Piper clamps the output length to one frame.
            frame_src.push(0);
        }
        let n_frames = frame_src.len();
        let idx = Tensor::from_vec(frame_src, n_frames, &self.device)?;
        let m = m_p.index_select(&idx, 2)?;
        let z_p = if noise_scale != 0.0 {
            let logs = logs_p.index_select(&idx, 2)?;
            let c = m.dim(1)?;
            let noise: Vec<f32> = (0..c * n_frames)
                .map(|_| {
                    let n: f32 = StandardNormal.sample(&mut rng);
                    n * noise_scale
                })
                .collect();
            let noise = Tensor::from_vec(noise, (1, c, n_frames), &self.device)?;
            (m + (noise * logs.exp()?)?)?
        } else {
            m
        };

        Ok(Latent {
            z_p,
            z: None,
            frames: n_frames,
            speaker,
            times: StageTimes {
                encoder,
                durations: started.elapsed(),
                ..StageTimes::default()
            },
        })
    }

    /// Runs the reverse flow until `latent.z` covers frames `..end`. The
    /// flow is convolutional, so each new stretch is computed from the prior
    /// widened by the flow's receptive field and equals the whole-sentence
    /// result; the first window need not wait for the sentence's flow.
    fn flow_through(&self, latent: &mut Latent, end: usize, context: usize) -> Result<()> {
        let done = latent.flowed();
        if end <= done {
            return Ok(());
        }
        let n = latent.frames;
        // Each stretch pays the context on both sides, so run to at least
        // four times what is done: few stretches, the first still short, and
        // each cheap beside the audio already decoded ahead of it.
        let end = end.max(4 * done).min(n);
        let lo = done.saturating_sub(context);
        let hi = (end + context).min(n);
        let mut z = if lo == 0 && hi == n {
            latent.z_p.clone()
        } else {
            latent.z_p.narrow(2, lo, hi - lo)?.contiguous()?
        };
        let g = latent.speaker.as_ref();
        for flow in self.flows.iter().rev() {
            z = z.flip(&[1])?;
            z = flow.reverse(&z, g)?;
        }
        let piece = if lo == done && hi == end {
            z
        } else {
            z.narrow(2, done - lo, end - done)?
        };
        latent.z = Some(match latent.z.take() {
            None => piece.contiguous()?,
            Some(before) => Tensor::cat(&[&before, &piece], 2)?,
        });
        Ok(())
    }

    /// Audio for latent frames `frames` (each `hop_length` samples), decoded
    /// from that range widened by `context` frames on each side (less at the
    /// sentence's edges) and cut back to the range. With `context` at least
    /// [`Vits::receptive_field_frames`] the samples equal those of decoding
    /// the whole latent, up to float rounding; less context trades accuracy
    /// at the cut for less work.
    pub fn decode_frames(
        &self,
        latent: &mut Latent,
        frames: Range<usize>,
        context: Context,
    ) -> Result<Vec<f32>> {
        let n = latent.frames;
        if frames.start >= frames.end || frames.end > n {
            return Err(PiperError::Format(format!(
                "decode window {frames:?} outside a latent of {n} frames"
            )));
        }
        let lo = frames.start.saturating_sub(context.decoder);
        let hi = (frames.end + context.decoder).min(n);
        let started = Instant::now();
        self.flow_through(latent, hi, context.flow)?;
        latent.times.flow += started.elapsed();
        let started = Instant::now();
        let z = latent
            .z
            .as_ref()
            .ok_or_else(|| PiperError::Format("the flow produced nothing".into()))?;
        let z = if lo == 0 && hi == z.dim(2)? {
            z.clone()
        } else {
            z.narrow(2, lo, hi - lo)?
        };
        let audio = self.dec.forward(&z, latent.speaker.as_ref())?;
        let hop = self.hop_length();
        let audio = audio
            .flatten_all()?
            .narrow(0, (frames.start - lo) * hop, frames.len() * hop)?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        latent.times.decoder += started.elapsed();
        Ok(audio)
    }
}

/// Latent frames of context on each side of a window: what the flow and the
/// decoder each run over beyond the frames they are asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    pub decoder: usize,
    pub flow: usize,
}

/// One sentence's latent and its speaker conditioning.
#[derive(Debug, Clone)]
pub struct Latent {
    /// The prior sample `[1, C, frames]`, before the flow.
    z_p: Tensor,
    /// The flow's output for the first frames, as far as decoding needed.
    z: Option<Tensor>,
    frames: usize,
    speaker: Option<Tensor>,
    times: StageTimes,
}

/// Where one sentence's synthesis time went so far, by stage (wall time on
/// the calling thread, threads inside each stage included).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimes {
    /// Text encoder over the whole sentence.
    pub encoder: Duration,
    /// Duration predictor, length regulation and the prior's noise.
    pub durations: Duration,
    /// Reverse flow, over the stretches decoded so far.
    pub flow: Duration,
    /// HiFi-GAN decoder, over the windows decoded so far.
    pub decoder: Duration,
}

impl Latent {
    /// Time spent on this sentence so far.
    pub fn times(&self) -> StageTimes {
        self.times
    }

    /// Latent frames; the audio is `frames * hop_length` samples.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Frames the flow has run over so far.
    fn flowed(&self) -> usize {
        self.z
            .as_ref()
            .map_or(0, |z| z.dims().get(2).copied().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depthwise_matches_direct_definition() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::from_vec(vec![1f32, 2., 3., 4., 10., 20., 30., 40.], (1, 2, 4), &dev)?;
        let w = Tensor::from_vec(vec![1f32, 0., -1., 0.5, 0.5, 0.5], (2, 1, 3), &dev)?;
        let a = ConvAttrs {
            dilation: 1,
            padding: 1,
            stride: 1,
            groups: 2,
        };
        let y = depthwise_conv1d(&x, &w, a)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        // channel 0: y[i] = x[i-1] - x[i+1]; channel 1: 0.5 * window sum.
        assert_eq!(y, vec![-2., -2., -2., 3., 15., 30., 45., 35.]);
        Ok(())
    }
}
