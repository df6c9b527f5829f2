//! Real-time factor of the native Piper voice on the reference cases, whole
//! sentence against chunked decoding, beside the reference runtime
//! (onnxruntime) in the same run, on the same phoneme ids with the same
//! scales and thread count.
//!
//! ```text
//! VOXWIRE_MODEL_DIR=/work/shared/models RAYON_NUM_THREADS=1 \
//!     cargo run -p voxwire-piper --example piper_rtf
//! ```
//!
//! (The workspace builds this crate and all dependencies at opt-level 3 even
//! in the dev profile, so no `--release` rebuild is needed.)
//!
//! Threads: candle's CPU kernels and this crate's fused convolutions run on
//! rayon's pool, sized by `RAYON_NUM_THREADS` (default: the core count);
//! onnxruntime gets the same number as `intra_op_num_threads`.
//!
//! onnxruntime comes from PyPI into a venv under the target directory
//! (`examples/ort_venv.sh`, idempotent); without it (no `python3`, no
//! network) the native figures are still printed and the JSON says why the
//! comparison is missing. `VOXWIRE_BENCH_ORT=0` skips it.
//!
//! Prints per case and overall the RTF (synthesis seconds / audio seconds)
//! of whole-sentence decoding, chunked decoding and onnxruntime, the ratios,
//! and the time to the first audio of the longest sentence both ways; writes
//! `target/bench/piper_rtf.json`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::Deserialize;
use serde_json::{json, Value};
use voxwire_piper::{DecodeWindows, PiperVoice, Scales};

const REPEATS: usize = 4;

#[derive(Deserialize)]
struct Case {
    name: String,
    sentences: Vec<CaseSentence>,
}

#[derive(Deserialize)]
struct CaseSentence {
    ids: Vec<i64>,
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

/// Seconds per run of one way of synthesizing a case.
#[derive(Default)]
struct Runs {
    seconds: Vec<f64>,
}

impl Runs {
    fn mean(&self) -> f64 {
        self.seconds.iter().sum::<f64>() / self.seconds.len().max(1) as f64
    }

    fn best(&self) -> f64 {
        self.seconds.iter().copied().fold(f64::INFINITY, f64::min)
    }
}

fn whole(
    voice: &PiperVoice,
    case: &Case,
    scales: Scales,
    seed: u64,
) -> Result<usize, Box<dyn std::error::Error>> {
    let mut samples = 0;
    for s in &case.sentences {
        samples += voice.synthesize_ids(&s.ids, scales, seed)?.len();
    }
    Ok(samples)
}

fn chunked(
    voice: &PiperVoice,
    case: &Case,
    scales: Scales,
    seed: u64,
) -> Result<usize, Box<dyn std::error::Error>> {
    let mut samples = 0;
    for s in &case.sentences {
        for chunk in voice.synthesize_ids_chunked(&s.ids, scales, seed, DecodeWindows::DEFAULT)? {
            samples += chunk?.len();
        }
    }
    Ok(samples)
}

/// onnxruntime's seconds per run of each case, or why there are none.
fn onnxruntime_runs(
    model: &Path,
    cases: &[Case],
    threads: usize,
    scales: Scales,
    sample_rate: u32,
) -> Result<Value, String> {
    if std::env::var("VOXWIRE_BENCH_ORT").is_ok_and(|v| v == "0") {
        return Err("skipped (VOXWIRE_BENCH_ORT=0)".into());
    }
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    let venv = target_dir().join("venv-piper-ort");
    let setup = Command::new(examples.join("ort_venv.sh"))
        .arg(&venv)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run ort_venv.sh: {e}"))?;
    if !setup.status.success() {
        return Err(format!("ort_venv.sh failed ({})", setup.status));
    }
    let python = String::from_utf8_lossy(&setup.stdout).trim().to_string();
    let job = json!({
        "model": model,
        "threads": threads,
        "repeats": REPEATS,
        "sample_rate": sample_rate,
        "scales": [scales.noise_scale, scales.length_scale, scales.noise_w],
        "cases": cases.iter().map(|c| json!({
            "name": c.name,
            "sentences": c.sentences.iter().map(|s| &s.ids).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    let mut child = Command::new(&python)
        .arg(examples.join("ort_rtf.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {python}: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(job.to_string().as_bytes())
        .map_err(|e| format!("writing the job: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for ort_rtf.py: {e}"))?;
    if !out.status.success() {
        return Err(format!("ort_rtf.py failed ({})", out.status));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("ort_rtf.py output: {e}"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(dir) = voxwire_testkit::model_dir(voxwire_testkit::PIPER_JOE_MEDIUM) else {
        return Ok(());
    };
    let model_path = dir.join("en_US-joe-medium.onnx");
    let t0 = Instant::now();
    let voice = PiperVoice::load(&model_path)?;
    let load_s = t0.elapsed().as_secs_f64();
    let cases: Vec<Case> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference/cases.json"))?)?;
    let rate = voice.config().sample_rate;
    let scales = Scales::from_config(voice.config());
    let threads = candle_core::utils::get_num_threads();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "{} loaded in {load_s:.2} s; {cores} cores, {threads} threads, {REPEATS} runs per case; \
         decode windows {} with {} frames of context (receptive field {})",
        voice.voice_id(),
        DecodeWindows::DEFAULT,
        voice.decode_context(),
        voice.receptive_field_frames(),
    );

    // Warm up allocators and thread pools so the first case is not penalised.
    voice.synthesize_sentence("Warm up.", scales, 0)?;

    let mut per_case = Vec::new();
    let mut native = Vec::new();
    for case in &cases {
        let (mut w, mut c) = (Runs::default(), Runs::default());
        let mut samples = 0;
        for run in 0..REPEATS {
            // Alternate which goes first so drifting load hits both alike.
            for chunked_first in [run % 2 == 0, run % 2 != 0] {
                let t = Instant::now();
                samples = if chunked_first {
                    chunked(&voice, case, scales, run as u64)?
                } else {
                    whole(&voice, case, scales, run as u64)?
                };
                let runs = if chunked_first { &mut c } else { &mut w };
                runs.seconds.push(t.elapsed().as_secs_f64());
            }
        }
        let audio = samples as f64 / f64::from(rate);
        native.push((w, c, audio));
    }

    let ort = onnxruntime_runs(&model_path, &cases, threads, scales, rate);
    if let Err(why) = &ort {
        println!("onnxruntime: {why}");
    }
    let ort_seconds = |i: usize| -> Option<Runs> {
        let v = ort.as_ref().ok()?;
        let secs = v["cases"][i]["seconds"].as_array()?;
        Some(Runs {
            seconds: secs.iter().filter_map(Value::as_f64).collect(),
        })
    };

    println!(
        "{:>14}  {:>6}  {:>22}  {:>22}  {:>22}",
        "case", "audio", "whole mean / best", "chunked mean / best", "onnxruntime mean / best"
    );
    let (mut sum_audio, mut sum_whole, mut sum_chunked, mut sum_ort) = (0f64, 0f64, 0f64, 0f64);
    let (mut best_whole, mut best_chunked, mut best_ort) = (0f64, 0f64, 0f64);
    for (i, (case, (w, c, audio))) in cases.iter().zip(&native).enumerate() {
        let o = ort_seconds(i);
        let ort_text = o.as_ref().map_or("-".to_string(), |o| {
            format!("{:.3} / {:.3}", o.mean() / audio, o.best() / audio)
        });
        println!(
            "{:>14}  {audio:>5.2}s  {:>22}  {:>22}  {ort_text:>22}",
            case.name,
            format!("{:.3} / {:.3}", w.mean() / audio, w.best() / audio),
            format!("{:.3} / {:.3}", c.mean() / audio, c.best() / audio),
        );
        sum_audio += audio;
        sum_whole += w.mean();
        sum_chunked += c.mean();
        best_whole += w.best();
        best_chunked += c.best();
        if let Some(o) = &o {
            sum_ort += o.mean();
            best_ort += o.best();
        }
        per_case.push(json!({
            "case": case.name,
            "audio_seconds": audio,
            "rtf_whole": w.mean() / audio,
            "rtf_whole_best": w.best() / audio,
            "rtf_chunked": c.mean() / audio,
            "rtf_chunked_best": c.best() / audio,
            "rtf_onnxruntime": o.as_ref().map(|o| o.mean() / audio),
            "rtf_onnxruntime_best": o.as_ref().map(|o| o.best() / audio),
        }));
    }
    let rtf_whole = sum_whole / sum_audio;
    let rtf_chunked = sum_chunked / sum_audio;
    let rtf_whole_best = best_whole / sum_audio;
    let rtf_chunked_best = best_chunked / sum_audio;
    let rtf_ort = ort.is_ok().then(|| sum_ort / sum_audio);
    let rtf_ort_best = ort.is_ok().then(|| best_ort / sum_audio);
    println!(
        "       overall: whole {rtf_whole:.3} / {rtf_whole_best:.3}, chunked {rtf_chunked:.3} / {rtf_chunked_best:.3} \
         (chunked / whole {:.3} mean, {:.3} best)",
        rtf_chunked / rtf_whole,
        rtf_chunked_best / rtf_whole_best
    );
    if let (Some(o), Some(ob)) = (rtf_ort, rtf_ort_best) {
        println!(
            "   onnxruntime: {o:.3} / {ob:.3}; candle / onnxruntime: whole {:.2} mean, {:.2} best; chunked {:.2} mean, {:.2} best",
            rtf_whole / o,
            rtf_whole_best / ob,
            rtf_chunked / o,
            rtf_chunked_best / ob
        );
    }

    // First audio of the longest sentence: the whole decode against the
    // latent plus the first window.
    let longest = cases
        .iter()
        .flat_map(|c| c.sentences.iter())
        .max_by_key(|s| s.ids.len())
        .ok_or("no cases")?;
    let (mut first_whole, mut first_chunked) = (Runs::default(), Runs::default());
    let mut longest_audio = 0.0;
    for run in 0..REPEATS {
        let t = Instant::now();
        let audio = voice.synthesize_ids(&longest.ids, scales, run as u64)?;
        first_whole.seconds.push(t.elapsed().as_secs_f64());
        longest_audio = audio.len() as f64 / f64::from(rate);
        let t = Instant::now();
        let first = voice
            .synthesize_ids_chunked(&longest.ids, scales, run as u64, DecodeWindows::DEFAULT)?
            .next()
            .ok_or("no window")??;
        first_chunked.seconds.push(t.elapsed().as_secs_f64());
        drop(first);
    }
    println!(
        "first audio of the longest sentence ({longest_audio:.1} s of audio): whole {:.0} ms, chunked {:.0} ms (best of {REPEATS})",
        first_whole.best() * 1000.0,
        first_chunked.best() * 1000.0
    );

    let out_dir = target_dir().join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let out_dir = out_dir.canonicalize().unwrap_or(out_dir);
    // Other processes' load skews the means on a shared machine; record it.
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string));
    let report = json!({
        "voice": voice.voice_id(),
        "cores": cores,
        "threads": threads,
        "rayon_num_threads_env": std::env::var("RAYON_NUM_THREADS").ok(),
        "repeats": REPEATS,
        "load_average_1min": load_average,
        "scales": [scales.noise_scale, scales.length_scale, scales.noise_w],
        "load_seconds": load_s,
        "decode_windows": DecodeWindows::DEFAULT.to_string(),
        "decode_context_frames": voice.decode_context(),
        "receptive_field_frames": voice.receptive_field_frames(),
        "cases": per_case,
        // The whole-sentence figures keep their old names for the summary.
        "overall_rtf": rtf_whole,
        "overall_rtf_best": rtf_whole_best,
        "overall_rtf_chunked": rtf_chunked,
        "overall_rtf_chunked_best": rtf_chunked_best,
        "chunked_over_whole": rtf_chunked / rtf_whole,
        "onnxruntime": match &ort {
            Ok(v) => json!({
                "version": v["onnxruntime"],
                "threads": v["threads"],
                "overall_rtf": rtf_ort,
                "overall_rtf_best": rtf_ort_best,
                "candle_whole_over_onnxruntime": rtf_ort.map(|o| rtf_whole / o),
                "candle_chunked_over_onnxruntime": rtf_ort.map(|o| rtf_chunked / o),
                "candle_whole_over_onnxruntime_best": rtf_ort_best.map(|o| rtf_whole_best / o),
                "candle_chunked_over_onnxruntime_best": rtf_ort_best.map(|o| rtf_chunked_best / o),
            }),
            Err(why) => json!({ "unavailable": why }),
        },
        "longest_sentence_audio_seconds": longest_audio,
        "longest_sentence_first_audio_ms_whole": first_whole.best() * 1000.0,
        "longest_sentence_first_audio_ms_chunked": first_chunked.best() * 1000.0,
    });
    let path = out_dir.join("piper_rtf.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", path.display());
    Ok(())
}
