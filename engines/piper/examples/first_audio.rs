//! Where the time before a sentence's first audio goes, stage by stage:
//! espeak-ng phonemization, text encoder, duration predictor, the flow's
//! first stretch and the decoder's first window, for the first sentences of
//! voxbench's first-audio texts.
//!
//! ```text
//! VOXWIRE_MODEL_DIR=/work/shared/models RAYON_NUM_THREADS=2 \
//!     cargo run -p voxwire-piper --example first_audio [-- FIRST,MAX ...]
//! ```
//!
//! Each decode-window setting given (default: the voice's default and
//! `whole`) is timed on every text, runs taking turns; the figures are
//! medians (and the slowest run) in milliseconds.

use std::time::{Duration, Instant};

use voxwire_piper::{DecodeWindows, PiperVoice, Scales};

const RUNS: usize = 12;

/// The first unit tts-worker hands the voice for each of voxbench's texts.
/// The 233-character sentence is cut by the worker at its last clause break
/// before 200 characters, so that is what the voice sees first.
const TEXTS: [(&str, &str); 4] = [
    (
        "one sentence (44)",
        "The quick brown fox jumps over the lazy dog.",
    ),
    (
        "long first, worker cut (177)",
        "When the morning train finally pulled into the crowded station, the passengers who \
         had waited for nearly an hour in the cold gathered their bags, their coffee and their \
         patience,",
    ),
    (
        "long first, uncut (233)",
        "When the morning train finally pulled into the crowded station, the passengers who \
         had waited for nearly an hour in the cold gathered their bags, their coffee and their \
         patience, and stepped aboard without a single word of complaint.",
    ),
    (
        "5,000 chars, first (41)",
        "Voice systems are judged in milliseconds.",
    ),
];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(dir) = voxwire_testkit::model_dir(voxwire_testkit::PIPER_JOE_MEDIUM) else {
        return Ok(());
    };
    let voice = PiperVoice::load(&dir.join("en_US-joe-medium.onnx"))?;
    let scales = Scales::from_config(voice.config());
    let mut settings: Vec<DecodeWindows> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    if settings.is_empty() {
        settings = vec![DecodeWindows::DEFAULT, DecodeWindows::Whole];
    }
    println!(
        "{} threads, {RUNS} runs, decoder context {} frames; medians (max) in ms",
        candle_core::utils::get_num_threads(),
        voice.decode_context()
    );
    voice.synthesize_sentence("Warm up.", scales, 0)?;

    for (name, text) in TEXTS {
        for &windows in &settings {
            // phonemize, encoder, durations, flow, decoder, total
            let mut stages: [Vec<f64>; 6] = Default::default();
            let mut ids = 0;
            let mut frames = 0;
            for run in 0..RUNS {
                let started = Instant::now();
                let sentences = voice.phonemize(text)?;
                let phonemized = started.elapsed();
                let sentence = sentences.first().ok_or("no sentence")?;
                ids = sentence.ids.len();
                let mut chunks =
                    voice.synthesize_ids_chunked(&sentence.ids, scales, run as u64, windows)?;
                frames = chunks.frames();
                let first = chunks.next().ok_or("no window")??;
                let total = started.elapsed();
                drop(first);
                let t = chunks.times();
                for (slot, d) in stages.iter_mut().zip([
                    phonemized,
                    t.encoder,
                    t.durations,
                    t.flow,
                    t.decoder,
                    total,
                ]) {
                    slot.push(ms(d));
                }
            }
            let cells: Vec<String> = stages
                .iter_mut()
                .map(|v| {
                    let max = v.iter().copied().fold(0f64, f64::max);
                    format!("{:6.1} ({:5.1})", median(v), max)
                })
                .collect();
            println!(
                "{name:>29} {windows:>7} ids {ids:>3} frames {frames:>4} | phonemize {} | encoder {} | durations {} | flow {} | decoder {} | first audio {}",
                cells[0], cells[1], cells[2], cells[3], cells[4], cells[5]
            );
        }
    }
    Ok(())
}
