//! Where one final's decode time goes: transcribe() on utterances of the
//! Piper voice of several lengths, timed whole, repeated.
use std::time::Instant;
use voxwire_whisper::{AudioContext, WhisperModel};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::PathBuf::from(std::env::var("VOXWIRE_MODEL_DIR")?).join("whisper-tiny.en");
    let model = WhisperModel::load(&dir)?;
    let wav = std::env::args().nth(1).expect("wav");
    let bytes = std::fs::read(&wav)?;
    let rate = 22_050;
    let pcm: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let pcm = voxwire_dsp::resample(&pcm, rate, 16_000)?;
    println!("audio {:.2} s", pcm.len() as f64 / 16000.0);
    for (name, ctx) in [
        ("trimmed 6s", AudioContext::DEFAULT),
        ("trimmed 1s", AudioContext::Trimmed { min_frames: 100 }),
        ("trimmed 3s", AudioContext::Trimmed { min_frames: 300 }),
        ("full", AudioContext::Full),
    ] {
        let m = model.clone().with_audio_context(ctx);
        let _ = m.transcribe(&pcm)?;
        let mut times = vec![];
        let mut text = String::new();
        for _ in 0..4 {
            let t = Instant::now();
            let r = m.transcribe(&pcm)?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            text = r.text;
        }
        times.sort_by(f64::total_cmp);
        println!("{name}: min {:.0} med {:.0} ms: {text}", times[0], times[2]);
    }
    Ok(())
}
