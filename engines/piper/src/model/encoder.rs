//! The text encoder (`enc_p`): phoneme embeddings through a transformer
//! with windowed relative attention, projected to the prior's mean and log
//! scale.

use candle_core::{Module, Tensor};

use crate::conv::FusedConv1d;
use crate::onnx::OnnxWeights;
use crate::PiperError;

use super::layers::{ChannelNorm, Conv1d};
use super::Result;

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
pub(super) struct TextEncoder {
    pub(super) emb: candle_nn::Embedding,
    hidden: usize,
    attn: Vec<RelAttention>,
    norm_1: Vec<ChannelNorm>,
    ffn: Vec<Ffn>,
    norm_2: Vec<ChannelNorm>,
    proj: Conv1d,
}

impl TextEncoder {
    pub(super) fn load(w: &OnnxWeights) -> Result<Self> {
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
    pub(super) fn forward(&self, ids: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
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
