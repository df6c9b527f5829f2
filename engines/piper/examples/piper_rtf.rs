//! Real-time factor of the native Piper voice on the reference texts.
//!
//! ```text
//! VOXWIRE_MODEL_DIR=/work/shared/models RAYON_NUM_THREADS=1 \
//!     cargo run -p voxwire-piper --example piper_rtf
//! ```
//!
//! (The workspace builds this crate and all dependencies at opt-level 3 even
//! in the dev profile, so no `--release` rebuild is needed.)
//!
//! Threads: candle's CPU kernels (the gemm behind matmul / conv1d and its
//! parallel element-wise loops) size their pool from `RAYON_NUM_THREADS`
//! (`candle_core::utils::get_num_threads`), defaulting to the physical core
//! count. `CANDLE_NUM_THREADS` overrides only candle's internal barrier pool
//! and falls back to `RAYON_NUM_THREADS`, so setting `RAYON_NUM_THREADS`
//! alone is enough. The crate itself never pins threads.
//!
//! Prints the real-time factor (synthesis seconds / audio seconds) per case
//! and overall, the time to the first sentence's audio, and writes
//! `target/bench/piper_rtf.json`.

use std::path::PathBuf;
use std::time::Instant;

use serde::Deserialize;
use voxwire_piper::{PiperVoice, Scales};

const REPEATS: usize = 4;

#[derive(Deserialize)]
struct Case {
    name: String,
    text: String,
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(dir) = voxwire_testkit::model_dir(voxwire_testkit::PIPER_JOE_MEDIUM) else {
        return Ok(());
    };
    let t0 = Instant::now();
    let voice = PiperVoice::load(&dir)?;
    let load_s = t0.elapsed().as_secs_f64();
    let cases: Vec<Case> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference/cases.json"))?)?;
    let rate = f64::from(voice.config().sample_rate);
    let scales = Scales::from_config(voice.config());
    let threads = candle_core::utils::get_num_threads();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "{} loaded in {load_s:.2} s; {cores} cores, {threads} threads, {REPEATS} runs per case",
        voice.voice_id()
    );

    // Warm up allocators and thread pools so the first case is not penalised.
    voice.synthesize_sentence("Warm up.", scales, 0)?;

    let mut per_case = Vec::new();
    let (mut total_synth, mut total_audio) = (0f64, 0f64);
    // On a shared machine the mean includes other processes' load; the best
    // run of each case is the steadier figure of the code's own speed.
    let mut best_sum = 0f64;
    for case in &cases {
        let (mut synth, mut audio) = (0f64, 0f64);
        let mut best = f64::INFINITY;
        for run in 0..REPEATS {
            let t = Instant::now();
            let samples = voice.synthesize_sentence(&case.text, scales, run as u64)?;
            let elapsed = t.elapsed().as_secs_f64();
            let seconds = samples.len() as f64 / rate;
            synth += elapsed;
            audio += seconds;
            best = best.min(elapsed / seconds);
        }
        let rtf = synth / audio;
        println!(
            "{:>14}: rtf {rtf:.3} mean, {best:.3} best ({:.2} s audio per run)",
            case.name,
            audio / REPEATS as f64
        );
        best_sum += best;
        per_case.push(serde_json::json!({
            "case": case.name,
            "rtf": rtf,
            "rtf_best": best,
            "audio_seconds": audio / REPEATS as f64,
            "synthesis_seconds": synth / REPEATS as f64,
        }));
        total_synth += synth;
        total_audio += audio;
    }
    let overall = total_synth / total_audio;
    let best_mean = best_sum / cases.len().max(1) as f64;
    println!("       overall: rtf {overall:.3} mean, {best_mean:.3} mean of per-case best");

    // What a streaming client waits for: phonemize the text, synthesize its
    // first sentence.
    let text = cases
        .iter()
        .find(|c| c.name == "two_sentences")
        .or(cases.first())
        .map_or("Hello there. How are you?", |c| c.text.as_str());
    let mut first_ms = Vec::new();
    let mut first_audio_s = 0.0;
    for run in 0..REPEATS {
        let t = Instant::now();
        let sentences = voice.phonemize(text)?;
        let first = sentences.first().ok_or("no sentence")?;
        let samples = voice.synthesize_ids(&first.ids, scales, run as u64)?;
        first_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        first_audio_s = samples.len() as f64 / rate;
    }
    first_ms.sort_by(f64::total_cmp);
    let median_ms = first_ms[first_ms.len() / 2];
    println!(
        "first sentence audio after {median_ms:.0} ms (median; {first_audio_s:.2} s of audio)"
    );

    let out_dir = target_dir().join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let out_dir = out_dir.canonicalize().unwrap_or(out_dir);
    // Other processes' load skews the means on a shared machine; record it.
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string));
    let report = serde_json::json!({
        "voice": voice.voice_id(),
        "cores": cores,
        "threads": threads,
        "rayon_num_threads_env": std::env::var("RAYON_NUM_THREADS").ok(),
        "repeats": REPEATS,
        "load_average_1min": load_average,
        "scales": [scales.noise_scale, scales.length_scale, scales.noise_w],
        "load_seconds": load_s,
        "cases": per_case,
        "overall_rtf": overall,
        "overall_rtf_best": best_mean,
        "first_sentence_ms": median_ms,
        "first_sentence_audio_seconds": first_audio_s,
    });
    let path = out_dir.join("piper_rtf.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", path.display());
    Ok(())
}
