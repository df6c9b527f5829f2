//! PCM on the wire: 16-bit signed little-endian mono, cut into fixed-duration
//! frames. [`FrameFormat`] is the one place that knows the arithmetic.

use crate::rules::{Rule, Violation};

/// Bytes per sample: 16-bit PCM.
pub const SAMPLE_BYTES: usize = 2;
/// The default TTS output rate.
pub const DEFAULT_SAMPLE_RATE: u32 = 48_000;
/// The default frame duration.
pub const DEFAULT_FRAME_MS: u32 = 20;
/// Lowest and highest sample rates a TTS frame may carry (TTS-FORMAT-INVALID).
pub const TTS_SAMPLE_RATES: std::ops::RangeInclusive<u32> = 8_000..=192_000;
/// Frame durations a TTS frame may carry (TTS-FORMAT-INVALID).
pub const TTS_FRAME_MS: std::ops::RangeInclusive<u32> = 1..=1_000;
/// Sample rates an STT client may send (STT-CONFIG-RATE).
pub const STT_SAMPLE_RATES: std::ops::RangeInclusive<u32> = 8_000..=48_000;

/// A validated frame format: rate and duration that span whole samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameFormat {
    sample_rate: u32,
    frame_ms: u32,
}

impl FrameFormat {
    /// 20 ms at 48 kHz: 960 samples, 1920 bytes.
    pub const DEFAULT: FrameFormat = FrameFormat {
        sample_rate: DEFAULT_SAMPLE_RATE,
        frame_ms: DEFAULT_FRAME_MS,
    };

    /// Checks TTS-FORMAT-INVALID. Takes the wire's `i32`s as they come.
    pub fn new(sample_rate: i32, frame_ms: i32) -> Result<Self, Violation> {
        let invalid = || {
            Violation::new(
                Rule::TtsFormatInvalid,
                format!("sample_rate {sample_rate} Hz with frame_duration_ms {frame_ms}"),
            )
        };
        let rate = u32::try_from(sample_rate).map_err(|_| invalid())?;
        let ms = u32::try_from(frame_ms).map_err(|_| invalid())?;
        if !TTS_SAMPLE_RATES.contains(&rate) || !TTS_FRAME_MS.contains(&ms) {
            return Err(invalid());
        }
        if (u64::from(rate) * u64::from(ms)) % 1000 != 0 {
            return Err(invalid());
        }
        Ok(FrameFormat {
            sample_rate: rate,
            frame_ms: ms,
        })
    }

    pub const fn sample_rate(self) -> u32 {
        self.sample_rate
    }

    pub const fn frame_ms(self) -> u32 {
        self.frame_ms
    }

    /// Samples in one full frame.
    pub const fn samples_per_frame(self) -> usize {
        (self.sample_rate as usize * self.frame_ms as usize) / 1000
    }

    /// Bytes in one full frame (1920 for the default).
    pub const fn frame_bytes(self) -> usize {
        self.samples_per_frame() * SAMPLE_BYTES
    }

    /// The wire's `sample_rate` field.
    pub fn sample_rate_field(self) -> i32 {
        i32::try_from(self.sample_rate).unwrap_or(i32::MAX)
    }

    /// The wire's `frame_duration_ms` field.
    pub fn frame_ms_field(self) -> i32 {
        i32::try_from(self.frame_ms).unwrap_or(i32::MAX)
    }
}

/// Encodes samples as 16-bit little-endian PCM, appending to `out`.
pub fn encode_pcm16(samples: &[i16], out: &mut Vec<u8>) {
    out.reserve(samples.len() * SAMPLE_BYTES);
    for sample in samples {
        out.extend_from_slice(&sample.to_le_bytes());
    }
}

/// Decodes 16-bit little-endian PCM; a trailing odd byte is ignored (callers
/// reject odd byte counts first, by STT-AUDIO-ODD-BYTES or TTS-FRAME-SIZE).
pub fn decode_pcm16(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(SAMPLE_BYTES)
        .map(|pair| i16::from_le_bytes([pair[0], pair[1]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_frame_is_1920_bytes() {
        assert_eq!(FrameFormat::DEFAULT.frame_bytes(), 1920);
        assert_eq!(FrameFormat::new(48_000, 20), Ok(FrameFormat::DEFAULT));
    }

    #[test]
    fn formats_that_split_a_sample_are_invalid() {
        // 22050 Hz x 1 ms = 22.05 samples.
        let err = FrameFormat::new(22_050, 1).unwrap_err();
        assert_eq!(err.rule, Rule::TtsFormatInvalid);
        assert!(FrameFormat::new(22_050, 20).is_ok());
        assert!(FrameFormat::new(0, 20).is_err());
        assert!(FrameFormat::new(48_000, 0).is_err());
        assert!(FrameFormat::new(-48_000, 20).is_err());
    }

    #[test]
    fn pcm_round_trips() {
        let samples = [0i16, 1, -1, i16::MAX, i16::MIN];
        let mut bytes = Vec::new();
        encode_pcm16(&samples, &mut bytes);
        assert_eq!(decode_pcm16(&bytes), samples);
    }
}
