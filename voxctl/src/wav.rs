//! WAV files in and out: 16-bit PCM, mono (other channel counts are mixed down).

use std::path::Path;

use crate::ClientError;

/// Writes 16-bit LE PCM bytes as a mono WAV.
pub fn write_pcm16(path: &Path, sample_rate: u32, pcm: &[u8]) -> Result<(), ClientError> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer =
        hound::WavWriter::create(path, spec).map_err(|e| ClientError::Wav(e.to_string()))?;
    for sample in voxwire_proto::audio::decode_pcm16(pcm) {
        writer
            .write_sample(sample)
            .map_err(|e| ClientError::Wav(e.to_string()))?;
    }
    writer
        .finalize()
        .map_err(|e| ClientError::Wav(e.to_string()))
}

/// Reads a WAV as mono 16-bit samples and its rate.
pub fn read_mono16(path: &Path) -> Result<(Vec<i16>, u32), ClientError> {
    let reader = hound::WavReader::open(path).map_err(|e| ClientError::Wav(e.to_string()))?;
    let spec = reader.spec();
    let channels = usize::from(spec.channels.max(1));
    let samples: Vec<i32> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Int, 16) => reader
            .into_samples::<i16>()
            .map(|s| s.map(i32::from))
            .collect::<Result<_, _>>(),
        (hound::SampleFormat::Float, 32) => reader
            .into_samples::<f32>()
            .map(|s| s.map(|v| (v.clamp(-1.0, 1.0) * 32767.0) as i32))
            .collect::<Result<_, _>>(),
        (format, bits) => {
            return Err(ClientError::Wav(format!(
                "{}: {bits}-bit {format:?} is not supported; use 16-bit PCM",
                path.display()
            )))
        }
    }
    .map_err(|e| ClientError::Wav(e.to_string()))?;
    let mono = samples
        .chunks(channels)
        .map(|frame| (frame.iter().sum::<i32>() / frame.len() as i32) as i16)
        .collect();
    Ok((mono, spec.sample_rate))
}
