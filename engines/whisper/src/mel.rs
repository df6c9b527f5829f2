//! Whisper's log-mel features, for exactly the frames the encoder reads.
//!
//! The arithmetic is candle-transformers' `pcm_to_mel` (which the model's
//! accuracy figures were measured with): periodic Hann window, 400-sample
//! frames every 160 samples from the start of the audio, power spectrum with
//! the mirrored half folded in, the checkpoint's mel filters, log10 floored
//! at 1e-10, everything within 8 of the loudest value, scaled by 1/4 plus 1.
//! What differs is the cost. That function pads the audio with 15 to 45 s of
//! silence and runs a textbook recursive FFT on every frame of it, about a
//! third of a second per call on this project's 2-core machine, paid on every
//! partial and every final. Here a planned real FFT runs only on frames that
//! touch audio (a frame of silence is the floor, no FFT needed), and each mel
//! filter sums only the bins where it is not zero.

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

/// Samples per frame and between frames (Whisper's N_FFT and HOP_LENGTH).
const FRAME: usize = 400;
const HOP: usize = 160;
const BINS: usize = FRAME / 2 + 1;
/// log10 of the power floor: the value of a frame of silence before scaling.
const FLOOR_LOG: f32 = -10.0;

#[derive(Clone)]
pub(crate) struct MelFilterbank {
    n_mels: usize,
    /// `n_mels` rows of `BINS` weights.
    filters: Vec<f32>,
    /// Per filter, the bins `[start, end)` outside of which its weight is 0.
    support: Vec<(usize, usize)>,
    hann: Vec<f32>,
    fft: Arc<dyn RealToComplex<f32>>,
}

impl std::fmt::Debug for MelFilterbank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MelFilterbank")
            .field("n_mels", &self.n_mels)
            .finish_non_exhaustive()
    }
}

impl MelFilterbank {
    /// `filters`: `n_mels × 201` weights, row by row (the checkpoint's
    /// `mel_filters_N.f32le`). `None` when the length does not match.
    pub(crate) fn new(filters: Vec<f32>, n_mels: usize) -> Option<MelFilterbank> {
        if n_mels == 0 || filters.len() != n_mels * BINS {
            return None;
        }
        let support = filters
            .chunks_exact(BINS)
            .map(|row| {
                let start = row.iter().position(|&w| w != 0.0).unwrap_or(0);
                let end = row.iter().rposition(|&w| w != 0.0).map_or(0, |i| i + 1);
                (start, end.max(start))
            })
            .collect();
        let hann = (0..FRAME)
            .map(|i| {
                let phase = 2.0 * std::f32::consts::PI * i as f32 / FRAME as f32;
                0.5 * (1.0 - phase.cos())
            })
            .collect();
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(FRAME);
        Some(MelFilterbank {
            n_mels,
            filters,
            support,
            hann,
            fft,
        })
    }

    /// Features of the first `frames` frames of `pcm` followed by silence:
    /// `n_mels` rows of `frames` values, row by row.
    pub(crate) fn log_mel(&self, pcm: &[f32], frames: usize) -> Vec<f32> {
        let mut mel = vec![FLOOR_LOG; self.n_mels * frames];
        let mut input = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = [0.0f32; BINS];
        // Frames starting at or past the end of the audio are silence.
        let audible = pcm.len().div_ceil(HOP).min(frames);
        for frame in 0..audible {
            let offset = frame * HOP;
            let samples = &pcm[offset..(offset + FRAME).min(pcm.len())];
            for (i, slot) in input.iter_mut().enumerate() {
                *slot = samples.get(i).map_or(0.0, |s| s * self.hann[i]);
            }
            if self
                .fft
                .process_with_scratch(&mut input, &mut spectrum, &mut scratch)
                .is_err()
            {
                // Only on buffer lengths that do not match the plan, which
                // the buffers above cannot have; the frame stays silent.
                continue;
            }
            for (k, (p, c)) in power.iter_mut().zip(&spectrum).enumerate() {
                let energy = c.re * c.re + c.im * c.im;
                // The mirrored negative frequency, as the full-spectrum fold
                // does: every bin but DC and Nyquist counts twice.
                *p = if k == 0 || k == BINS - 1 {
                    energy
                } else {
                    2.0 * energy
                };
            }
            for (m, &(start, end)) in self.support.iter().enumerate() {
                let row = &self.filters[m * BINS..(m + 1) * BINS];
                let sum: f32 = row[start..end]
                    .iter()
                    .zip(&power[start..end])
                    .map(|(w, p)| w * p)
                    .sum();
                mel[m * frames + frame] = sum.max(1e-10).log10();
            }
        }
        let loudest = mel.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let floor = loudest - 8.0;
        for v in &mut mel {
            *v = v.max(floor) / 4.0 + 1.0;
        }
        mel
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_transformers::models::whisper::{audio, Config};

    /// Triangular filters over the 201 bins, like a mel bank's shape; the
    /// values matter less than that both sides use the same ones.
    fn filters(n_mels: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; n_mels * BINS];
        for m in 0..n_mels {
            let centre = 2 + m * (BINS - 4) / n_mels;
            let width = 2 + m / 8;
            for k in centre.saturating_sub(width)..(centre + width).min(BINS) {
                let distance = (k as f32 - centre as f32).abs() / width as f32;
                out[m * BINS + k] = (1.0 - distance).max(0.0) * 0.01;
            }
        }
        out
    }

    fn config() -> Config {
        serde_json::from_value(serde_json::json!({
            "num_mel_bins": 80, "max_source_positions": 1500, "d_model": 384,
            "encoder_attention_heads": 6, "encoder_layers": 4, "vocab_size": 51864,
            "max_target_positions": 448, "decoder_attention_heads": 6, "decoder_layers": 4,
            "suppress_tokens": []
        }))
        .expect("a whisper config")
    }

    /// A voice-like test signal: a gliding tone with harmonics, amplitude
    /// bursts and a little noise.
    fn signal(seconds: f32) -> Vec<f32> {
        let n = (seconds * 16_000.0) as usize;
        let mut noise = 0x1234_5678u32;
        (0..n)
            .map(|i| {
                let t = i as f32 / 16_000.0;
                let f = 120.0 + 80.0 * (t * 1.3).sin();
                let envelope = (0.5 + 0.5 * (t * 7.0).sin()).powi(2);
                noise = noise.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let hiss = (noise >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                envelope
                    * (0.3 * (2.0 * std::f32::consts::PI * f * t).sin()
                        + 0.1 * (6.0 * std::f32::consts::PI * f * t).sin())
                    + 0.01 * hiss
            })
            .collect()
    }

    #[test]
    fn matches_candles_pcm_to_mel_on_the_frames_the_encoder_reads() {
        let bank = MelFilterbank::new(filters(80), 80).expect("filters");
        for (seconds, frames) in [(0.4f32, 100usize), (4.25, 600), (12.0, 1300), (30.0, 3000)] {
            let pcm = signal(seconds);
            let reference = audio::pcm_to_mel(&config(), &pcm, &filters(80));
            let reference_frames = reference.len() / 80;
            assert!(reference_frames >= frames);
            let ours = bank.log_mel(&pcm, frames);
            let mut worst = 0.0f32;
            for m in 0..80 {
                for f in 0..frames {
                    let want = reference[m * reference_frames + f];
                    let have = ours[m * frames + f];
                    worst = worst.max((want - have).abs());
                }
            }
            assert!(worst < 1e-3, "{seconds} s: max difference {worst}");
        }
    }

    #[test]
    fn silence_is_the_floor_everywhere() {
        let bank = MelFilterbank::new(filters(80), 80).expect("filters");
        let mel = bank.log_mel(&[0.0; 8_000], 200);
        assert!(mel.iter().all(|&v| v == FLOOR_LOG / 4.0 + 1.0));
    }

    #[test]
    fn a_filter_bank_of_the_wrong_size_is_refused() {
        assert!(MelFilterbank::new(vec![0.0; 80 * 200], 80).is_none());
        assert!(MelFilterbank::new(Vec::new(), 0).is_none());
    }
}
