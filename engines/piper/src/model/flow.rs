//! The normalising flow (`flow`): affine coupling layers over WaveNet
//! stacks, run in reverse from the prior to the decoder's latent.

use candle_core::Tensor;

use crate::onnx::OnnxWeights;
use crate::PiperError;

use super::layers::Conv1d;
use super::Result;

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
pub(super) struct CouplingLayer {
    pre: Conv1d,
    enc: WaveNet,
    post: Conv1d,
    half: usize,
    mean_only: bool,
}

impl CouplingLayer {
    pub(super) fn load(w: &OnnxWeights, module: &str) -> Result<Self> {
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
    pub(super) fn reach(&self) -> Result<usize> {
        let mut frames = self.pre.reach()? + self.post.reach()?;
        for (input, res_skip) in self.enc.in_layers.iter().zip(&self.enc.res_skip) {
            frames += input.reach()? + res_skip.reach()?;
        }
        Ok(frames)
    }

    pub(super) fn reverse(&self, x: &Tensor, speaker: Option<&Tensor>) -> Result<Tensor> {
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
