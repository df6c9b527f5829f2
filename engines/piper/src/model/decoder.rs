//! The HiFi-GAN decoder (`dec`): upsamplers and residual blocks from latent
//! frames to samples.

use candle_core::Tensor;

use crate::conv::{FusedConv1d, FusedConvTranspose1d};
use crate::onnx::OnnxWeights;
use crate::PiperError;

use super::layers::{leaky_relu, Conv1d, LRELU_SLOPE};
use super::Result;

/// `F.leaky_relu` default, used once before `conv_post`.
const LRELU_DEFAULT_SLOPE: f64 = 0.01;

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
pub(super) struct Decoder {
    conv_pre: Conv1d,
    cond: Option<Conv1d>,
    ups: Vec<Upsample>,
    resblocks: Vec<ResBlock>,
    conv_post: Conv1d,
}

impl Decoder {
    pub(super) fn load(w: &OnnxWeights) -> Result<Self> {
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

    pub(super) fn hop_length(&self) -> usize {
        self.ups.iter().map(|u| u.stride).product()
    }

    /// Latent frames on either side of an output sample that can influence
    /// it: the decoder's receptive field, rounded up to whole frames.
    pub(super) fn receptive_field_frames(&self) -> Result<usize> {
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

    pub(super) fn forward(&self, z: &Tensor, speaker: Option<&Tensor>) -> Result<Tensor> {
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
