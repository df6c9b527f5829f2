//! WAV in and out: the header of a streamed reply, and uploads read with
//! `hound` into the mono 16-bit samples the recognizers take.

use std::io::Cursor;

/// Bytes of the canonical 16-bit PCM header.
pub const HEADER_BYTES: usize = 44;

/// What a streamed WAV declares as its sizes: the length is not known when
/// the header goes out (ffmpeg and OpenAI's own streamed WAVs do the same).
const UNKNOWN_SIZE: u32 = u32::MAX;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WavError {
    #[error("the file is not a WAV (RIFF/WAVE) file; send 16-bit PCM WAV")]
    NotWav,
    #[error("the WAV file cannot be read: {0}")]
    Malformed(String),
    #[error("{bits}-bit {format} WAV samples are not supported; send 8/16/24/32-bit PCM or 32-bit float")]
    Unsupported { bits: u16, format: &'static str },
    #[error("the WAV file holds no audio")]
    Empty,
}

/// A decoded upload.
#[derive(Debug, Clone, PartialEq)]
pub struct Clip {
    pub samples: Vec<i16>,
    pub sample_rate: u32,
}

impl Clip {
    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / f64::from(self.sample_rate.max(1))
    }
}

/// The header of a mono 16-bit PCM stream of unknown length.
pub fn streaming_header(sample_rate: u32) -> [u8; HEADER_BYTES] {
    let mut header = [0u8; HEADER_BYTES];
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        header[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(b"RIFF");
    put(&UNKNOWN_SIZE.to_le_bytes());
    put(b"WAVE");
    put(b"fmt ");
    put(&16u32.to_le_bytes());
    put(&1u16.to_le_bytes()); // PCM
    put(&1u16.to_le_bytes()); // mono
    put(&sample_rate.to_le_bytes());
    put(&(sample_rate * 2).to_le_bytes()); // bytes per second
    put(&2u16.to_le_bytes()); // block align
    put(&16u16.to_le_bytes());
    put(b"data");
    put(&UNKNOWN_SIZE.to_le_bytes());
    header
}

/// Reads a WAV file as mono 16-bit samples (channels averaged).
pub fn decode(bytes: &[u8]) -> Result<Clip, WavError> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(WavError::NotWav);
    }
    let bytes = with_known_sizes(bytes);
    let reader = hound::WavReader::new(Cursor::new(bytes))
        .map_err(|e| WavError::Malformed(e.to_string()))?;
    let spec = reader.spec();
    let malformed = |e: hound::Error| WavError::Malformed(e.to_string());
    let samples: Vec<i16> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Int, bits @ 8..=32) => reader
            .into_samples::<i32>()
            .map(|s| s.map(|v| to_i16(v, bits)))
            .collect::<Result<_, _>>()
            .map_err(malformed)?,
        (hound::SampleFormat::Float, 32) => reader
            .into_samples::<f32>()
            .map(|s| s.map(|v| (v.clamp(-1.0, 1.0) * f32::from(i16::MAX)) as i16))
            .collect::<Result<_, _>>()
            .map_err(malformed)?,
        (format, bits) => {
            return Err(WavError::Unsupported {
                bits,
                format: match format {
                    hound::SampleFormat::Int => "integer",
                    hound::SampleFormat::Float => "float",
                },
            })
        }
    };
    let channels = usize::from(spec.channels.max(1));
    let mono: Vec<i16> = samples
        .chunks(channels)
        .map(|frame| {
            let sum: i64 = frame.iter().map(|&s| i64::from(s)).sum();
            (sum / frame.len() as i64) as i16
        })
        .collect();
    if mono.is_empty() {
        return Err(WavError::Empty);
    }
    Ok(Clip {
        samples: mono,
        sample_rate: spec.sample_rate,
    })
}

fn to_i16(value: i32, bits: u16) -> i16 {
    let scaled = if bits < 16 {
        value << (16 - bits)
    } else {
        value >> (bits - 16)
    };
    scaled.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16
}

/// A streamed WAV (ours included) declares its RIFF and data sizes unknown
/// (`0xFFFFFFFF`, or 0 from some encoders); hound would read past the end.
/// The sizes are set to what the file holds, the data cut to whole blocks.
fn with_known_sizes(bytes: &[u8]) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    let u32_at = |b: &[u8], at: usize| {
        b.get(at..at + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let riff_len = u32::try_from(bytes.len() - 8).unwrap_or(u32::MAX);
    if u32_at(&bytes, 4).is_some_and(|declared| declared > riff_len || declared == 0) {
        bytes[4..8].copy_from_slice(&riff_len.to_le_bytes());
    }
    let mut block_align = 1usize;
    let mut at = 12;
    while let (Some(id), Some(size)) = (bytes.get(at..at + 4), u32_at(&bytes, at + 4)) {
        let body = at + 8;
        let remaining = bytes.len().saturating_sub(body);
        if id == b"fmt " {
            if let Some(align) = bytes.get(body + 12..body + 14) {
                block_align = usize::from(u16::from_le_bytes([align[0], align[1]])).max(1);
            }
        } else if id == b"data" {
            let size = size as usize;
            if size > remaining || size == 0 {
                let whole = remaining - remaining % block_align;
                let whole = u32::try_from(whole).unwrap_or(u32::MAX);
                bytes[at + 4..at + 8].copy_from_slice(&whole.to_le_bytes());
            }
            break;
        }
        // Chunks are padded to an even length.
        at = body + size as usize + (size as usize & 1);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(
        spec: hound::WavSpec,
        write: impl FnOnce(&mut hound::WavWriter<&mut Cursor<Vec<u8>>>),
    ) -> Vec<u8> {
        let mut cursor = Cursor::new(Vec::new());
        {
            let mut writer = hound::WavWriter::new(&mut cursor, spec).expect("writer");
            write(&mut writer);
            writer.finalize().expect("finalize");
        }
        cursor.into_inner()
    }

    #[test]
    fn a_streamed_reply_reads_back_as_what_was_sent() {
        let samples: Vec<i16> = (0..480).map(|i| (i * 37 % 2000) as i16 - 1000).collect();
        let mut bytes = streaming_header(24_000).to_vec();
        for s in &samples {
            bytes.extend_from_slice(&s.to_le_bytes());
        }
        let clip = decode(&bytes).expect("decodes");
        assert_eq!(clip.sample_rate, 24_000);
        assert_eq!(clip.samples, samples);
    }

    #[test]
    fn stereo_24_bit_and_float_become_mono_16_bit() {
        let stereo = wav(
            hound::WavSpec {
                channels: 2,
                sample_rate: 44_100,
                bits_per_sample: 24,
                sample_format: hound::SampleFormat::Int,
            },
            |w| {
                for _ in 0..10 {
                    w.write_sample(0x10_0000i32).expect("left");
                    w.write_sample(0x30_0000i32).expect("right");
                }
            },
        );
        let clip = decode(&stereo).expect("decodes");
        assert_eq!(clip.samples, vec![0x2000; 10]);
        let float = wav(
            hound::WavSpec {
                channels: 1,
                sample_rate: 16_000,
                bits_per_sample: 32,
                sample_format: hound::SampleFormat::Float,
            },
            |w| {
                w.write_sample(0.5f32).expect("sample");
                w.write_sample(-2.0f32).expect("sample");
            },
        );
        assert_eq!(
            decode(&float).expect("decodes").samples,
            vec![16_383, -32_767]
        );
    }

    #[test]
    fn other_files_are_refused_with_a_reason() {
        assert_eq!(decode(b"ID3\x03\x00 an mp3"), Err(WavError::NotWav));
        assert_eq!(decode(b""), Err(WavError::NotWav));
        let header_only = streaming_header(16_000);
        assert!(decode(&header_only).is_err());
        let truncated = &streaming_header(16_000)[..30];
        assert!(matches!(decode(truncated), Err(WavError::Malformed(_))));
    }
}
