//! How long one final's decode takes, by encoder context: `transcribe` on one
//! clip, repeated, with the trimmed context (the default 6 s floor, a 3 s and
//! a 1 s floor) and the full 30 s window. The figure behind "where the time
//! goes" in docs/benchmarks.md.
//!
//! Run: `VOXWIRE_MODEL_DIR=/path/to/models cargo run -p voxwire-whisper --example decode_profile [CLIP]`
//! where CLIP is a 16-bit WAV file or raw f32le at 22,050 Hz (the Piper
//! reference outputs); default: the Piper reference `two_sentences.f32le`.
use std::path::PathBuf;
use std::time::Instant;

use voxwire_whisper::{AudioContext, WhisperModel, SAMPLE_RATE};

type BoxError = Box<dyn std::error::Error>;

const RUNS: usize = 5;

fn read_clip(path: &PathBuf) -> Result<Vec<f32>, BoxError> {
    let (pcm, rate) = if path.extension().is_some_and(|e| e == "wav") {
        let mut reader = hound::WavReader::open(path)?;
        let rate = reader.spec().sample_rate;
        let pcm = reader
            .samples::<i16>()
            .map(|s| s.map(|s| f32::from(s) / 32768.0))
            .collect::<Result<Vec<f32>, _>>()?;
        (pcm, rate)
    } else {
        let bytes = std::fs::read(path)?;
        let pcm = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (pcm, 22_050)
    };
    Ok(voxwire_dsp::resample(&pcm, rate, SAMPLE_RATE)?)
}

fn main() -> Result<(), BoxError> {
    let models = PathBuf::from(
        std::env::var_os("VOXWIRE_MODEL_DIR")
            .ok_or("set VOXWIRE_MODEL_DIR to the models directory")?,
    );
    let model = WhisperModel::load(&models.join("whisper-tiny.en"))?;
    let clip = std::env::args_os().nth(1).map_or_else(
        || models.join("piper-en_US-joe-medium/reference/two_sentences.f32le"),
        PathBuf::from,
    );
    let pcm = read_clip(&clip)?;
    println!(
        "{}: {:.2} s of audio, median of {RUNS} runs after one warm-up",
        clip.display(),
        pcm.len() as f64 / f64::from(SAMPLE_RATE)
    );
    for (name, context) in [
        ("trimmed, 6 s floor (default)", AudioContext::DEFAULT),
        (
            "trimmed, 3 s floor",
            AudioContext::Trimmed { min_frames: 300 },
        ),
        (
            "trimmed, 1 s floor",
            AudioContext::Trimmed { min_frames: 100 },
        ),
        ("full 30 s window", AudioContext::Full),
    ] {
        let model = model.clone().with_audio_context(context);
        model.transcribe(&pcm)?;
        let mut times = Vec::with_capacity(RUNS);
        let mut text = String::new();
        for _ in 0..RUNS {
            let started = Instant::now();
            text = model.transcribe(&pcm)?.text;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{name:>30}: median {:.0} ms, best {:.0} ms: {text}",
            times[RUNS / 2],
            times[0]
        );
    }
    Ok(())
}
