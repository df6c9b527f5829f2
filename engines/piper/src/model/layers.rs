//! The building blocks every part of the generator shares: 1-D convolutions
//! with the attributes of their ONNX nodes, VITS' channel norm and the leaky
//! ReLU.

use candle_core::Tensor;

use crate::conv::FusedConv1d;
use crate::onnx::{ConvAttrs, OnnxWeights};
use crate::PiperError;

use super::Result;

/// Slope PyTorch's HiFi-GAN uses between its layers (`LRELU_SLOPE`).
pub(super) const LRELU_SLOPE: f64 = 0.1;
/// `modules.LayerNorm` epsilon.
const LAYER_NORM_EPS: f64 = 1e-5;

pub(super) fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    // max(x, slope * x) equals leaky ReLU for 0 < slope < 1 in two passes
    // over memory instead of candle_nn's five.
    Ok(x.maximum(&(x * slope)?)?)
}

/// A 1-D convolution with the hyper-parameters its ONNX node used.
#[derive(Debug, Clone)]
pub(super) struct Conv1d {
    pub(super) weight: Tensor,
    /// `[c_out, 1]`, ready to broadcast over time.
    pub(super) bias: Option<Tensor>,
    pub(super) attrs: ConvAttrs,
    /// The fast path for ordinary (ungrouped, unstrided) wide kernels.
    fused: Option<FusedConv1d>,
}

impl Conv1d {
    pub(super) fn load(w: &OnnxWeights, module: &str) -> Result<Self> {
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
    pub(super) fn fused_variant(&self, slope: f64, residual: bool) -> Result<FusedConv1d> {
        let a = self.attrs;
        if a.groups != 1 || a.stride != 1 {
            return Err(PiperError::Format(format!("cannot fuse conv {a:?}")));
        }
        let op = FusedConv1d::new(&self.weight, self.bias.as_ref(), a.dilation, a.padding)?
            .with_input_leaky_relu(slope as f32);
        Ok(if residual { op.with_residual() } else { op })
    }

    /// Speaker-conditioning convs exist only in multi-speaker voices.
    pub(super) fn load_optional(w: &OnnxWeights, module: &str) -> Result<Option<Self>> {
        if w.contains(&format!("{module}.weight")) {
            Ok(Some(Self::load(w, module)?))
        } else {
            Ok(None)
        }
    }

    pub(super) fn out_channels(&self) -> Result<usize> {
        Ok(self.weight.dim(0)?)
    }

    pub(super) fn in_channels(&self) -> Result<usize> {
        Ok(self.weight.dim(1)? * self.attrs.groups)
    }

    /// Input steps on either side that one output step reads.
    pub(super) fn reach(&self) -> Result<usize> {
        let span = self.attrs.dilation * (self.weight.dim(2)? - 1);
        Ok(self
            .attrs
            .padding
            .max(span.saturating_sub(self.attrs.padding)))
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
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
pub(super) struct ChannelNorm {
    gamma: Tensor,
    beta: Tensor,
}

impl ChannelNorm {
    pub(super) fn load(w: &OnnxWeights, module: &str) -> Result<Self> {
        let gamma = w.get(&format!("{module}.gamma"))?;
        let beta = w.get(&format!("{module}.beta"))?;
        let c = gamma.elem_count();
        Ok(Self {
            gamma: gamma.reshape((c, 1))?,
            beta: beta.reshape((c, 1))?,
        })
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(1)?;
        let xn = xc.broadcast_div(&(var + LAYER_NORM_EPS)?.sqrt()?)?;
        Ok(xn.broadcast_mul(&self.gamma)?.broadcast_add(&self.beta)?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

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
