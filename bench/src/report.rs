//! The summary: every result beside its goal, written as JSON and Markdown,
//! with the machine and the git revision; the engine benchmarks' own JSON
//! files are read in rather than measured again.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use serde_json::{json, Value};

use crate::bargein::BargeResult;
use crate::conversation::{ConversationResult, VoiceToVoice};
use crate::error::{io, Result};
use crate::machine::{utc, Machine};
use crate::relay::LevelResult;
use crate::throughput::ThroughputResult;
use crate::voice::VoiceResult;

#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    pub figure: String,
    pub measured: String,
    pub goal: String,
    /// "met", "missed" or "not measured".
    pub verdict: &'static str,
}

fn goal(figure: &str, measured: String, goal: &str, met: Option<bool>) -> Goal {
    Goal {
        figure: figure.to_string(),
        measured,
        goal: goal.to_string(),
        verdict: match met {
            Some(true) => "met",
            Some(false) => "missed",
            None => "not measured",
        },
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub machine: Machine,
    pub git_revision: String,
    pub started_utc: String,
    pub build_profile: &'static str,
    pub quick: bool,
    pub wall_seconds: f64,
    pub goals: Vec<Goal>,
    pub relay: Vec<LevelResult>,
    pub throughput: Option<ThroughputResult>,
    pub first_audio: Option<VoiceResult>,
    pub barge_in: Option<BargeResult>,
    pub voice_to_voice: Option<VoiceToVoice>,
    /// Figures read from the engine benchmarks' JSON (target/bench/*.json).
    pub engines: Value,
    /// What was not measured in this run, and why.
    pub skipped: Vec<String>,
}

pub fn goals(
    relay: &[LevelResult],
    throughput: Option<&ThroughputResult>,
    voice: Option<&VoiceResult>,
    barge: Option<&BargeResult>,
    conversation: Option<&VoiceToVoice>,
) -> Vec<Goal> {
    let level = |n: usize| relay.iter().find(|l| l.sessions == n);
    let mut goals = Vec::new();
    goals.push(match level(500) {
        Some(l) => goal(
            "added first-frame latency p99 at 500 sessions",
            format!("{:.2} ms", l.added_first_frame_ms.p99),
            "< 2 ms",
            Some(l.added_first_frame_ms.p99 < 2.0),
        ),
        None => goal(
            "added first-frame latency p99 at 500 sessions",
            "N=500 not in this run".into(),
            "< 2 ms",
            None,
        ),
    });
    let streams_ok = |l: &LevelResult| {
        let r = &l.orchestrator;
        r.jitter_ms.p95 < 5.0 && r.frames_lost == 0 && r.open_errors + r.call_errors == 0
    };
    goals.push(match level(2000) {
        Some(l) => goal(
            "2,000 real-time streams through the orchestrator",
            format!(
                "jitter p95 {:.2} ms, {} frames lost, {} errors",
                l.orchestrator.jitter_ms.p95,
                l.orchestrator.frames_lost,
                l.orchestrator.open_errors + l.orchestrator.call_errors
            ),
            "jitter p95 < 5 ms, no loss",
            Some(streams_ok(l)),
        ),
        None => goal(
            "2,000 real-time streams through the orchestrator",
            match relay
                .iter()
                .filter(|l| streams_ok(l))
                .map(|l| l.sessions)
                .max()
            {
                Some(n) => format!("N=2000 not in this run (largest clean level: {n})"),
                None => "N=2000 not in this run".into(),
            },
            "jitter p95 < 5 ms, no loss",
            None,
        ),
    });
    goals.push(match throughput {
        Some(t) => goal(
            "relay throughput, orchestrator / bare relay",
            format!(
                "{:.2} ({:.0} vs {:.0} frames/s)",
                t.ratio, t.orchestrator_fps, t.bare_relay_fps
            ),
            ">= 0.8",
            Some(t.ratio >= 0.8),
        ),
        None => goal(
            "relay throughput, orchestrator / bare relay",
            "skipped".into(),
            ">= 0.8",
            None,
        ),
    });
    goals.push(match relay.iter().max_by_key(|l| l.sessions) {
        Some(l) => {
            let bytes = l.orchestrator.orchestrator.idle_bytes_per_session;
            goal(
                "orchestrator memory per idle session",
                format!("{:.1} KiB (N={})", bytes / 1024.0, l.sessions),
                "< 32 KiB",
                Some(bytes < 32.0 * 1024.0),
            )
        }
        None => goal(
            "orchestrator memory per idle session",
            "skipped".into(),
            "< 32 KiB",
            None,
        ),
    });
    for (figure, limit, pick) in [
        (
            "first audio, real voice, one sentence, p95",
            250.0,
            (|v: &VoiceResult| v.one_sentence.orchestrator_ms.p95) as fn(&VoiceResult) -> f64,
        ),
        (
            "first audio, real voice, 5,000 characters, p95",
            500.0,
            |v: &VoiceResult| v.long_text.orchestrator_ms.p95,
        ),
    ] {
        goals.push(match voice {
            Some(v) => goal(
                figure,
                format!("{:.1} ms", pick(v)),
                &format!("< {limit:.0} ms"),
                Some(pick(v) < limit),
            ),
            None => goal(figure, "skipped".into(), &format!("< {limit:.0} ms"), None),
        });
    }
    goals.push(match barge {
        Some(b) => goal(
            "barge-in, interrupt to silence, p95",
            format!("{:.2} ms", b.interrupt_to_silence_ms.p95),
            "< 50 ms",
            Some(b.interrupt_to_silence_ms.p95 < 50.0 && b.frames_after_ack == 0),
        ),
        None => goal(
            "barge-in, interrupt to silence, p95",
            "skipped".into(),
            "< 50 ms",
            None,
        ),
    });
    for (figure, limit, pick) in [
        (
            "end of speech to final transcript, Converse with partials, p95",
            300.0,
            (|c: &ConversationResult| c.end_of_speech_to_final_ms.p95)
                as fn(&ConversationResult) -> f64,
        ),
        (
            "voice to voice: end of speech to first echo audio, with partials, p95",
            500.0,
            |c: &ConversationResult| c.end_of_speech_to_first_audio_ms.p95,
        ),
    ] {
        goals.push(match conversation.map(|v| &v.with_partials) {
            Some(c) => goal(
                figure,
                format!("{:.0} ms", pick(c)),
                &format!("<= {limit:.0} ms"),
                Some(pick(c) <= limit && c.missing_finals == 0),
            ),
            None => goal(figure, "skipped".into(), &format!("<= {limit:.0} ms"), None),
        });
    }
    goals
}

/// The engine benchmarks' figures, from the JSON files they wrote into `dir`.
pub fn engines(dir: &Path) -> Value {
    let read = |name: &str| -> Option<(Value, String)> {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).ok()?;
        let written = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .map_or_else(|_| "unknown".to_string(), utc);
        Some((serde_json::from_str(&text).ok()?, written))
    };
    let mut out = serde_json::Map::new();
    let piper = [
        ("piper_rtf_1_thread", "piper_rtf_1t.json"),
        ("piper_rtf_2_threads", "piper_rtf_2t.json"),
    ];
    let mut found: Vec<(&str, &str)> = piper
        .into_iter()
        .filter(|(_, file)| dir.join(file).exists())
        .collect();
    if found.is_empty() {
        // Run by hand rather than by `just bench`: only the latest file.
        found.push(("piper_rtf", "piper_rtf.json"));
    }
    for (key, file) in found {
        if let Some((v, written)) = read(file) {
            out.insert(
                key.into(),
                json!({
                    "file": file,
                    "written_utc": written,
                    "threads": v["threads"],
                    "rtf_mean": v["overall_rtf"],
                    "rtf_best": v["overall_rtf_best"],
                    "rtf_chunked_mean": v["overall_rtf_chunked"],
                    "rtf_chunked_best": v["overall_rtf_chunked_best"],
                    "rtf_onnxruntime_mean": v["onnxruntime"]["overall_rtf"],
                    "rtf_onnxruntime_best": v["onnxruntime"]["overall_rtf_best"],
                    "first_audio_longest_sentence_ms_whole": v["longest_sentence_first_audio_ms_whole"],
                    "first_audio_longest_sentence_ms_chunked": v["longest_sentence_first_audio_ms_chunked"],
                    "load_average_1min": v["load_average_1min"],
                }),
            );
        }
    }
    for speech in ["espeak", "piper"] {
        let file = format!("stt_engine_{speech}.json");
        if let Some((v, written)) = read(&file) {
            let o = &v["overall"];
            out.insert(
                format!("stt_{speech}"),
                json!({
                    "file": file,
                    "written_utc": written,
                    "wer": o["wer"],
                    "stream_wer": o["stream_wer"],
                    "rtf": o["rtf"],
                    "end_of_utterance_to_final_ms_p50": o["end_of_utterance_to_final_ms"]["p50"],
                    "end_of_utterance_to_final_ms_p95": o["end_of_utterance_to_final_ms"]["p95"],
                    "first_partial_ms_p50": o["speech_start_to_first_partial_ms"]["p50"],
                    "first_partial_ms_p95": o["speech_start_to_first_partial_ms"]["p95"],
                    "reference_runs": v["reference"]["runs"].as_array().map(|runs| runs
                        .iter()
                        .map(|r| json!({"beam_size": r["beam_size"], "wer": r["wer"], "rtf": r["rtf"],
                            "time_ratio": r["time_ratio_voxwire_over_reference"]}))
                        .collect::<Vec<_>>()),
                }),
            );
        }
    }
    Value::Object(out)
}

fn f(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or_else(|| "–".to_string(), |x| format!("{x:.digits$}"))
}

pub fn markdown(s: &Summary) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# voxbench summary\n");
    let _ = writeln!(
        md,
        "Machine: {}; load average at start {}. Revision `{}`, {} build, {} run, started {}, took {:.0} s.\n",
        s.machine.line(),
        s.machine
            .load_average_at_start
            .map_or_else(|| "?".to_string(), |l| format!("{l:.2}")),
        s.git_revision,
        s.build_profile,
        if s.quick { "quick" } else { "full" },
        s.started_utc,
        s.wall_seconds
    );
    let _ = writeln!(
        md,
        "## Goals\n\n| figure | measured | goal | verdict |\n|---|---|---|---|"
    );
    for g in &s.goals {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            g.figure, g.measured, g.goal, g.verdict
        );
    }
    if !s.relay.is_empty() {
        let _ = writeln!(
            md,
            "\n## Relay overhead (tone workers paced at real time)\n\n\
             | sessions | first frame direct p50 / p95 / p99 (ms) | through the orchestrator p50 / p95 / p99 (ms) | added p50 / p95 / p99 (ms) | jitter p95 direct / through (ms) | frames lost direct / through | errors | orchestrator CPU s / 1,000 frames | orchestrator RSS / session idle / speaking |\n\
             |---|---|---|---|---|---|---|---|---|"
        );
        for l in &s.relay {
            let (d, o) = (&l.direct, &l.orchestrator);
            let _ = writeln!(
                md,
                "| {} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | {:+.2} / {:+.2} / {:+.2} | {:.2} / {:.2} | {} / {} | {} | {:.4} | {:.1} KiB / {:.1} KiB |",
                l.sessions,
                d.first_frame_ms.p50,
                d.first_frame_ms.p95,
                d.first_frame_ms.p99,
                o.first_frame_ms.p50,
                o.first_frame_ms.p95,
                o.first_frame_ms.p99,
                l.added_first_frame_ms.p50,
                l.added_first_frame_ms.p95,
                l.added_first_frame_ms.p99,
                d.jitter_ms.p95,
                o.jitter_ms.p95,
                d.frames_lost,
                o.frames_lost,
                d.open_errors + d.call_errors + o.open_errors + o.call_errors,
                o.orchestrator.cpu_seconds_per_1000_frames,
                o.orchestrator.idle_bytes_per_session / 1024.0,
                o.orchestrator.speaking_bytes_per_session / 1024.0,
            );
        }
    }
    if let Some(t) = &s.throughput {
        let _ = writeln!(
            md,
            "\n## Throughput ceiling (unpaced, {} streams, {:.0} s windows)\n\n\
             | path | frames/s | relay CPU s / 1,000 frames |\n|---|---|---|\n\
             | straight to the worker | {:.0} | – |\n\
             | bare tonic pass-through relay | {:.0} | {:.4} |\n\
             | orchestrator | {:.0} | {:.4} |\n\nOrchestrator / bare relay: **{:.2}**.",
            t.streams,
            t.window_seconds,
            t.direct_fps,
            t.bare_relay_fps,
            t.bare_relay_cpu_seconds_per_1000_frames,
            t.orchestrator_fps,
            t.orchestrator_cpu_seconds_per_1000_frames,
            t.ratio
        );
    }
    if let Some(v) = &s.first_audio {
        let _ = writeln!(
            md,
            "\n## First audio, real voice\n\n\
             Chunked decoding (the worker's default) beside `--decode-window whole`, taking turns in this run.\n\n\
             | text | runs | chunked: straight to the worker p50 / p95 (ms) | chunked: through the orchestrator p50 / p95 (ms) | whole: straight p50 / p95 (ms) | whole: through the orchestrator p50 / p95 (ms) |\n|---|---|---|---|---|---|"
        );
        for (name, c) in [
            ("one sentence", &v.one_sentence),
            ("long first sentence", &v.long_first_sentence),
            ("5,000 characters", &v.long_text),
        ] {
            let _ = writeln!(
                md,
                "| {name} ({} chars, first sentence {}) | {} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} |",
                c.chars,
                c.first_sentence_chars,
                c.runs,
                c.direct_ms.p50,
                c.direct_ms.p95,
                c.orchestrator_ms.p50,
                c.orchestrator_ms.p95,
                c.whole_direct_ms.p50,
                c.whole_direct_ms.p95,
                c.whole_orchestrator_ms.p50,
                c.whole_orchestrator_ms.p95
            );
        }
    }
    if let Some(b) = &s.barge_in {
        let _ = writeln!(
            md,
            "\n## Barge-in ({} runs)\n\n| figure | p50 | p95 |\n|---|---|---|\n\
             | interrupt sent to last audio frame received (ms) | {:.2} | {:.2} |\n\
             | interrupt sent to Interrupted event (ms) | {:.2} | {:.2} |\n\
             | orchestrator's own interrupt-to-silence (ms) | {:.3} | {:.3} |\n\
             | audio frames received after the interrupt was sent | {:.0} | {:.0} |\n\n\
             Frames of an interrupted turn after its Interrupted event: {}.",
            b.runs,
            b.interrupt_to_silence_ms.p50,
            b.interrupt_to_silence_ms.p95,
            b.interrupt_to_ack_ms.p50,
            b.interrupt_to_ack_ms.p95,
            b.server_reported_ms.p50,
            b.server_reported_ms.p95,
            b.frames_after_interrupt.p50,
            b.frames_after_interrupt.p95,
            b.frames_after_ack
        );
    }
    if let Some(v) = &s.voice_to_voice {
        let _ = writeln!(
            md,
            "\n## Voice to voice ({} utterances in the Piper voice, spoken at real time into Converse with echo)\n\n\
             | figure | with partials p50 / p95 / max (ms) | without partials p50 / p95 / max (ms) |\n|---|---|---|",
            v.with_partials.utterances
        );
        let (a, b) = (&v.with_partials, &v.without_partials);
        for (figure, x, y) in [
            (
                "end of speech to final transcript",
                &a.end_of_speech_to_final_ms,
                &b.end_of_speech_to_final_ms,
            ),
            (
                "final transcript to first echo audio",
                &a.final_to_first_audio_ms,
                &b.final_to_first_audio_ms,
            ),
            (
                "end of speech to first echo audio",
                &a.end_of_speech_to_first_audio_ms,
                &b.end_of_speech_to_first_audio_ms,
            ),
        ] {
            let _ = writeln!(
                md,
                "| {figure} | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} |",
                x.p50, x.p95, x.max, y.p50, y.p95, y.max
            );
        }
        let _ = writeln!(
            md,
            "| WER of the finals; utterances without a final | {:.3}; {} | {:.3}; {} |",
            a.word_error_rate, a.missing_finals, b.word_error_rate, b.missing_finals
        );
    }
    if let Some(engines) = s.engines.as_object().filter(|e| !e.is_empty()) {
        let _ = writeln!(
            md,
            "\n## Engines (from the engine benchmarks' JSON)\n\n| figure | value | file (written) |\n|---|---|---|"
        );
        for (key, v) in engines {
            if key.starts_with("piper") {
                let ratio = |candle: &Value, ort: &Value| match (candle.as_f64(), ort.as_f64()) {
                    (Some(c), Some(o)) if o > 0.0 => format!("{:.2}", c / o),
                    _ => "-".to_string(),
                };
                let _ = writeln!(
                    md,
                    "| Piper RTF, {} thread(s), mean / best: whole sentence, chunked, onnxruntime (candle chunked / onnxruntime) | {} / {}, {} / {}, {} / {} ({} / {}) | {} ({}) |",
                    v["threads"],
                    f(&v["rtf_mean"], 3),
                    f(&v["rtf_best"], 3),
                    f(&v["rtf_chunked_mean"], 3),
                    f(&v["rtf_chunked_best"], 3),
                    f(&v["rtf_onnxruntime_mean"], 3),
                    f(&v["rtf_onnxruntime_best"], 3),
                    ratio(&v["rtf_chunked_mean"], &v["rtf_onnxruntime_mean"]),
                    ratio(&v["rtf_chunked_best"], &v["rtf_onnxruntime_best"]),
                    v["file"].as_str().unwrap_or("?"),
                    v["written_utc"].as_str().unwrap_or("?")
                );
            } else {
                let _ = writeln!(
                    md,
                    "| STT on {} speech: WER whole / streamed, RTF, end of utterance to final p50 / p95 | {} / {}, {}, {} / {} ms | {} ({}) |",
                    key.trim_start_matches("stt_"),
                    f(&v["wer"], 3),
                    f(&v["stream_wer"], 3),
                    f(&v["rtf"], 2),
                    f(&v["end_of_utterance_to_final_ms_p50"], 0),
                    f(&v["end_of_utterance_to_final_ms_p95"], 0),
                    v["file"].as_str().unwrap_or("?"),
                    v["written_utc"].as_str().unwrap_or("?")
                );
                let _ = writeln!(
                    md,
                    "| STT on {} speech: speech start to first partial p50 / p95 (goal ≤ 500 ms) | {} / {} ms | {} |",
                    key.trim_start_matches("stt_"),
                    f(&v["first_partial_ms_p50"], 0),
                    f(&v["first_partial_ms_p95"], 0),
                    v["file"].as_str().unwrap_or("?"),
                );
                for run in v["reference_runs"].as_array().into_iter().flatten() {
                    let _ = writeln!(
                        md,
                        "| faster-whisper tiny.en beam {} on the same clips, same run: WER, RTF, time ratio voxwire / it | {}, {}, {} | {} |",
                        run["beam_size"],
                        f(&run["wer"], 3),
                        f(&run["rtf"], 2),
                        f(&run["time_ratio"], 2),
                        v["file"].as_str().unwrap_or("?"),
                    );
                }
            }
        }
    }
    if !s.skipped.is_empty() {
        let _ = writeln!(md, "\nNot measured in this run:\n");
        for line in &s.skipped {
            let _ = writeln!(md, "- {line}");
        }
    }
    md
}

/// Writes `value` with the machine and revision beside it.
pub fn write_section(
    dir: &Path,
    name: &str,
    machine: &Machine,
    revision: &str,
    value: &impl Serialize,
) -> Result<()> {
    let doc = json!({
        "machine": machine,
        "git_revision": revision,
        "result": value,
    });
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)
        .map_err(io(format!("writing {}", path.display())))
}
