//! The stochastic duration predictor (`dp`), run in reverse: log durations
//! per phoneme from the encoder's hidden state and noise.

use candle_core::Tensor;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

use crate::onnx::OnnxWeights;
use crate::spline;
use crate::PiperError;

use super::layers::{ChannelNorm, Conv1d};
use super::Result;

/// The duration predictor's spline domain, fixed in VITS' `ConvFlow`.
const SPLINE_TAIL_BOUND: f32 = 5.0;

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
pub(super) struct DurationPredictor {
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
    pub(super) fn load(w: &OnnxWeights) -> Result<Self> {
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
    pub(super) fn forward(
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
