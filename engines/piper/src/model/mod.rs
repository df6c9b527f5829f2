//! The VITS generator as Piper exports it: text encoder, stochastic duration
//! predictor, length regulation, normalising flow and HiFi-GAN decoder.
//!
//! Follows the inference path of Piper's `SynthesizerTrn.infer`. Layer sizes
//! come from the weight shapes and the convolution attributes of the exported
//! graph, so every Piper quality level loads through the same code.

mod decoder;
mod duration;
mod encoder;
mod flow;
mod layers;

use std::ops::Range;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use crate::onnx::OnnxWeights;
use crate::PiperError;

use decoder::Decoder;
use duration::DurationPredictor;
use encoder::TextEncoder;
use flow::CouplingLayer;

type Result<T> = std::result::Result<T, PiperError>;

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
