//! Audio plumbing the workers share: sample-rate conversion (FFT-based, from
//! `rubato`) and conversion between f32 samples and 16-bit PCM.
//!
//! Engines work at their model's native rate (Piper 22 050 Hz, Whisper
//! 16 kHz); services convert at their edges with this crate.
#![forbid(unsafe_code)]

use audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Indexing, Resampler};

#[derive(Debug, thiserror::Error)]
pub enum DspError {
    #[error("cannot resample from {from} Hz to {to} Hz: {reason}")]
    Construction { from: u32, to: u32, reason: String },
    #[error("resampling failed: {0}")]
    Process(String),
}

/// Input frames per FFT chunk. Larger is more efficient, smaller holds back
/// less audio in the streaming case (1024 frames at 48 kHz is about 21 ms).
const CHUNK: usize = 1024;

/// Resamples a whole clip. The resampler's start-up delay is trimmed, so the
/// output lines up with the input in time.
pub fn resample(input: &[f32], from: u32, to: u32) -> Result<Vec<f32>, DspError> {
    if from == to || input.is_empty() {
        return Ok(input.to_vec());
    }
    let mut resampler = new_fft(from, to)?;
    let needed = resampler.process_all_needed_output_len(input.len());
    let mut output = vec![0.0f32; needed];
    let buffer_in = InterleavedSlice::new(input, 1, input.len())
        .map_err(|e| DspError::Process(e.to_string()))?;
    let mut buffer_out = InterleavedSlice::new_mut(&mut output, 1, needed)
        .map_err(|e| DspError::Process(e.to_string()))?;
    let (_, produced) = resampler
        .process_all_into_buffer(&buffer_in, &mut buffer_out, input.len(), None)
        .map_err(|e| DspError::Process(e.to_string()))?;
    output.truncate(produced);
    Ok(output)
}

fn new_fft(from: u32, to: u32) -> Result<Fft<f32>, DspError> {
    Fft::<f32>::new(from as usize, to as usize, CHUNK, 1, FixedSync::Input).map_err(|e| {
        DspError::Construction {
            from,
            to,
            reason: e.to_string(),
        }
    })
}

/// Resamples a stream that arrives in pieces of any size: output comes out in
/// step with the input, at most one chunk behind, and [`finish`](Self::finish)
/// flushes the rest. The start-up delay is trimmed as in [`resample`].
pub struct StreamResampler {
    inner: Option<Fft<f32>>,
    pending: Vec<f32>,
    scratch: Vec<f32>,
    delay_left: usize,
    input_total: u64,
    output_total: u64,
    ratio: f64,
}

impl std::fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamResampler")
            .field("ratio", &self.ratio)
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl StreamResampler {
    pub fn new(from: u32, to: u32) -> Result<Self, DspError> {
        let inner = if from == to {
            None
        } else {
            Some(new_fft(from, to)?)
        };
        let delay_left = inner.as_ref().map_or(0, |r| r.output_delay());
        let scratch = vec![0.0; inner.as_ref().map_or(0, |r| r.output_frames_max())];
        Ok(StreamResampler {
            inner,
            pending: Vec::with_capacity(CHUNK * 2),
            scratch,
            delay_left,
            input_total: 0,
            output_total: 0,
            ratio: f64::from(to) / f64::from(from),
        })
    }

    /// Adds input; returns the output it completed.
    pub fn push(&mut self, input: &[f32]) -> Result<Vec<f32>, DspError> {
        self.input_total += input.len() as u64;
        let Some(resampler) = self.inner.as_mut() else {
            self.output_total += input.len() as u64;
            return Ok(input.to_vec());
        };
        self.pending.extend_from_slice(input);
        let mut out = Vec::new();
        let mut consumed = 0;
        while self.pending.len() - consumed >= resampler.input_frames_next() {
            let need = resampler.input_frames_next();
            let chunk = &self.pending[consumed..consumed + need];
            Self::run(resampler, chunk, None, &mut self.scratch, &mut out)?;
            consumed += need;
        }
        self.pending.drain(..consumed);
        Ok(self.trim(out))
    }

    /// Flushes what is held back; the total output is then the input's length
    /// times the rate ratio (rounded up).
    pub fn finish(mut self) -> Result<Vec<f32>, DspError> {
        let Some(resampler) = self.inner.as_mut() else {
            return Ok(Vec::new());
        };
        let expected = (self.input_total as f64 * self.ratio).ceil() as u64;
        let mut out = Vec::new();
        let mut pending = std::mem::take(&mut self.pending);
        // Feed silence until every real sample and the delay have come out.
        let mut guard = 0;
        while self.output_total + (out.len() as u64).saturating_sub(self.delay_left as u64)
            < expected
            && guard < 64
        {
            let need = resampler.input_frames_next();
            let take = pending.len().min(need);
            let chunk: Vec<f32> = pending.drain(..take).collect();
            let indexing = Indexing::new().partial_len(take);
            let mut padded = chunk;
            padded.resize(need, 0.0);
            Self::run(
                resampler,
                &padded,
                Some(&indexing),
                &mut self.scratch,
                &mut out,
            )?;
            guard += 1;
        }
        let mut out = self.trim(out);
        let room = expected.saturating_sub(self.output_total - out.len() as u64);
        out.truncate(usize::try_from(room).unwrap_or(usize::MAX));
        Ok(out)
    }

    fn run(
        resampler: &mut Fft<f32>,
        chunk: &[f32],
        indexing: Option<&Indexing>,
        scratch: &mut [f32],
        out: &mut Vec<f32>,
    ) -> Result<(), DspError> {
        let frames_out = scratch.len();
        let buffer_in = InterleavedSlice::new(chunk, 1, chunk.len())
            .map_err(|e| DspError::Process(e.to_string()))?;
        let mut buffer_out = InterleavedSlice::new_mut(scratch, 1, frames_out)
            .map_err(|e| DspError::Process(e.to_string()))?;
        let (_, produced) = resampler
            .process_into_buffer(&buffer_in, &mut buffer_out, indexing)
            .map_err(|e| DspError::Process(e.to_string()))?;
        out.extend_from_slice(&scratch[..produced]);
        Ok(())
    }

    fn trim(&mut self, mut out: Vec<f32>) -> Vec<f32> {
        let cut = self.delay_left.min(out.len());
        out.drain(..cut);
        self.delay_left -= cut;
        self.output_total += out.len() as u64;
        out
    }
}

/// f32 in [-1, 1] to 16-bit PCM, clipping.
pub fn f32_to_i16(samples: &[f32]) -> Vec<i16> {
    samples
        .iter()
        .map(|s| (s.clamp(-1.0, 1.0) * f32::from(i16::MAX)).round() as i16)
        .collect()
}

/// 16-bit PCM to f32 in [-1, 1).
pub fn i16_to_f32(samples: &[i16]) -> Vec<f32> {
    samples.iter().map(|&s| f32::from(s) / 32768.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, hz: f32, seconds: f32) -> Vec<f32> {
        let n = (rate as f32 * seconds) as usize;
        (0..n)
            .map(|i| (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin() * 0.5)
            .collect()
    }

    /// Frequency estimate by zero crossings.
    fn frequency(samples: &[f32], rate: u32) -> f32 {
        let crossings = samples
            .windows(2)
            .filter(|w| w[0] < 0.0 && w[1] >= 0.0)
            .count();
        crossings as f32 * rate as f32 / samples.len() as f32
    }

    #[test]
    fn clip_keeps_pitch_and_length() {
        let input = sine(22_050, 440.0, 1.0);
        let output = resample(&input, 22_050, 48_000).expect("resample");
        let expected = (input.len() as f64 * 48_000.0 / 22_050.0).ceil() as usize;
        assert!(
            output.len().abs_diff(expected) <= 1,
            "{} vs {expected}",
            output.len()
        );
        let hz = frequency(&output[4800..43_200], 48_000);
        assert!((hz - 440.0).abs() < 3.0, "{hz} Hz");
    }

    #[test]
    fn stream_matches_length_for_any_piece_size() {
        let input = sine(48_000, 300.0, 0.7);
        for piece in [1usize, 100, 960, 5000] {
            let mut stream = StreamResampler::new(48_000, 16_000).expect("new");
            let mut out = Vec::new();
            for chunk in input.chunks(piece) {
                out.extend(stream.push(chunk).expect("push"));
            }
            out.extend(stream.finish().expect("finish"));
            let expected = input.len() / 3;
            assert!(
                out.len().abs_diff(expected) <= 1,
                "piece {piece}: {}",
                out.len()
            );
            let hz = frequency(&out[1600..out.len() - 1600], 16_000);
            assert!((hz - 300.0).abs() < 3.0, "piece {piece}: {hz} Hz");
        }
    }

    #[test]
    fn same_rate_is_identity() {
        let input = sine(16_000, 100.0, 0.1);
        assert_eq!(resample(&input, 16_000, 16_000).expect("resample"), input);
    }

    #[test]
    fn pcm_conversion_clips() {
        assert_eq!(f32_to_i16(&[2.0, -2.0, 0.0]), vec![i16::MAX, -i16::MAX, 0]);
        let back = i16_to_f32(&[16384]);
        assert!((back[0] - 0.5).abs() < 1e-6);
    }
}

#[cfg(test)]
mod stream_equivalence {
    use super::*;

    #[test]
    fn streaming_matches_whole_clip_resampling() {
        let input: Vec<f32> = (0..22_050)
            .map(|i| (i as f32 * 0.05).sin() * 0.5 + (i as f32 * 0.31).sin() * 0.2)
            .collect();
        let whole = resample(&input, 22_050, 16_000).expect("whole");
        let mut stream = StreamResampler::new(22_050, 16_000).expect("new");
        let mut pieces = Vec::new();
        for chunk in input.chunks(441) {
            pieces.extend(stream.push(chunk).expect("push"));
        }
        pieces.extend(stream.finish().expect("finish"));
        let n = whole.len().min(pieces.len());
        let worst = (0..n)
            .map(|i| (whole[i] - pieces[i]).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst < 1e-3,
            "worst difference {worst}, lengths {} {}",
            whole.len(),
            pieces.len()
        );
    }
}
