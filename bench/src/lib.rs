//! voxbench: latency, jitter, capacity and cost of every voxwire hop, each
//! measured beside a baseline in the same run (on a shared, noisy machine
//! only ratios and differences taken together are stable).
//!
//! - [`relay`]: N sessions through the orchestrator vs straight to the
//!   workers (first frame, jitter, loss, orchestrator CPU and memory);
//! - [`throughput`]: unpaced streams, orchestrator vs [`bare_relay`];
//! - [`voice`]: first audio with the real Piper voice;
//! - [`openai_ttfb`]: the same through `POST /v1/audio/speech` vs `Speak`;
//! - [`bargein`]: interrupt to silence on Converse;
//! - [`conversation`]: voice to voice on Converse with echo (end of speech →
//!   final transcript → first audio of the reply);
//! - [`report`], [`plot`]: summary JSON / Markdown and the latency plot.
//!
//! The processes under test are the built binaries ([`procs`], [`stack`]),
//! so the orchestrator's CPU time and memory are its own.
#![forbid(unsafe_code)]

pub mod bare_relay;
pub mod bargein;
pub mod client;
pub mod conversation;
pub mod error;
pub mod machine;
pub mod openai_ttfb;
pub mod plot;
pub mod procs;
pub mod relay;
pub mod report;
pub mod stack;
pub mod stats;
pub mod throughput;
pub mod voice;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

pub use error::{BenchError, Result};

use crate::error::io;
use crate::machine::{git_revision, utc, Machine};
use crate::procs::Bins;

/// voxbench: the voxwire benchmarks (relay overhead, throughput ceiling,
/// first audio with the real voice, barge-in), with a baseline in the same run.
#[derive(Debug, clap::Parser)]
#[command(name = "voxbench", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Serve the bare pass-through relay (voxbench starts it itself as the
    /// throughput baseline).
    BareRelay {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        upstream: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Relay,
    Throughput,
    Voice,
    BargeIn,
    /// First audio of the OpenAI-compatible speech route vs Speak.
    Openai,
    /// End of speech to final transcript to first echo audio on Converse.
    VoiceToVoice,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// A short run for CI (relay at N = 1 and 100, few repeats): under 2 minutes.
    #[arg(long)]
    pub quick: bool,
    /// Concurrency levels of the relay benchmark (default 1,100,500,1000,2000; quick: 1,100).
    #[arg(long, value_delimiter = ',')]
    pub levels: Option<Vec<usize>>,
    /// TTS workers behind the orchestrator in the relay benchmark.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Parts to leave out: relay, throughput, voice, barge-in, openai, voice-to-voice.
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<Part>,
    /// Where the JSON, the summary and the plot go (default: target/bench of the workspace).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Directory holding the tts-worker and orchestrator binaries (default: voxbench's own).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Models laid out like shared/models (the voice is piper-en_US-joe-medium/).
    #[arg(long, env = "VOXWIRE_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
}

fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn default_out() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target"))
        .join("bench")
}

/// Runs the benchmarks `args` asks for and writes every report. Parts that
/// fail are reported in the summary and make the whole run fail at the end.
pub async fn run(args: &RunArgs) -> Result<report::Summary> {
    let started = Instant::now();
    let started_utc = utc(SystemTime::now());
    let machine = Machine::describe();
    let revision = git_revision(&workspace_dir());
    let out = args.out.clone().unwrap_or_else(default_out);
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs).map_err(io(format!("creating {}", logs.display())))?;
    let bins = Bins::locate(args.bin_dir.clone())?;
    let quick = args.quick;
    println!(
        "voxbench ({} run) on {}; revision {revision}; binaries from {}",
        if quick { "quick" } else { "full" },
        machine.line(),
        bins.dir.display()
    );
    let wanted = |part: Part| !args.skip.contains(&part);
    let mut skipped = Vec::new();
    let mut failed = Vec::new();

    let mut relay_results = Vec::new();
    if wanted(Part::Relay) {
        let config = relay::RelayConfig {
            levels: args.levels.clone().unwrap_or_else(|| {
                if quick {
                    vec![1, 100]
                } else {
                    vec![1, 100, 500, 1000, 2000]
                }
            }),
            workers: args.workers.max(1),
            text: client::tone_text(if quick { 1.0 } else { 3.0 }),
            ramp: Duration::from_millis(if quick { 300 } else { 1000 }),
            open_concurrency: 128,
            sessions_per_connection: 250,
            max_connections: 8,
        };
        println!(
            "relay overhead: levels {:?}, {} workers",
            config.levels, config.workers
        );
        match relay::run(&config, &bins, &logs).await {
            Ok(levels) => {
                report::write_section(&out, "relay.json", &machine, &revision, &levels)?;
                // Loss, gaps and errors at CI's light load are bugs, not slowness.
                if quick {
                    for l in &levels {
                        for r in [&l.direct, &l.orchestrator] {
                            let errors = r.open_errors + r.call_errors;
                            if r.frames_lost > 0 || r.sequence_errors > 0 || errors > 0 {
                                failed.push(format!(
                                    "relay at N={} ({:?}): {} frames lost, {} sequence errors, {errors} errors (first: {})",
                                    l.sessions,
                                    r.mode,
                                    r.frames_lost,
                                    r.sequence_errors,
                                    r.first_error.as_deref().unwrap_or("none")
                                ));
                            }
                        }
                    }
                }
                relay_results = levels;
            }
            Err(e) => failed.push(format!("relay overhead: {e}")),
        }
    } else {
        skipped.push("relay overhead (--skip)".to_string());
    }

    let mut throughput_result = None;
    if wanted(Part::Throughput) {
        let config = throughput::ThroughputConfig {
            streams: if quick { 16 } else { 32 },
            connections: 2,
            warmup: Duration::from_millis(if quick { 300 } else { 500 }),
            window: Duration::from_millis(if quick { 1500 } else { 4000 }),
            rounds: if quick { 1 } else { 2 },
        };
        println!("throughput ceiling: {} unpaced streams", config.streams);
        match throughput::run(&config, &bins, &logs).await {
            Ok(result) => {
                report::write_section(&out, "throughput.json", &machine, &revision, &result)?;
                throughput_result = Some(result);
            }
            Err(e) => failed.push(format!("throughput: {e}")),
        }
    } else {
        skipped.push("throughput ceiling (--skip)".to_string());
    }

    let mut voice_result = None;
    if wanted(Part::Voice) {
        let models = args
            .model_dir
            .clone()
            .unwrap_or_else(|| workspace_dir().join("../shared/models"));
        let voice_dir = models.join("piper-en_US-joe-medium");
        if voice_dir.is_dir() {
            let config = voice::VoiceConfig {
                voice: voice_dir,
                sentence_runs: if quick { 3 } else { 20 },
                long_runs: if quick { 2 } else { 8 },
                pause: Duration::from_millis(700),
            };
            println!(
                "first audio with the real voice ({})",
                config.voice.display()
            );
            match voice::run(&config, &bins, &logs).await {
                Ok(result) => {
                    report::write_section(&out, "first_audio.json", &machine, &revision, &result)?;
                    voice_result = Some(result);
                }
                Err(e) => failed.push(format!("first audio: {e}")),
            }
        } else if std::env::var("CI").is_ok_and(|v| v == "true") {
            failed.push(format!(
                "first audio: no voice at {} (CI=true: models are required)",
                voice_dir.display()
            ));
        } else {
            skipped.push(format!("first audio: no voice at {}", voice_dir.display()));
        }
    } else {
        skipped.push("first audio with the real voice (--skip)".to_string());
    }

    if wanted(Part::Openai) {
        let models = args
            .model_dir
            .clone()
            .unwrap_or_else(|| workspace_dir().join("../shared/models"));
        let voice_dir = models.join("piper-en_US-joe-medium");
        if voice_dir.is_dir() {
            let config = openai_ttfb::TtfbConfig {
                voice: voice_dir,
                runs: if quick { 3 } else { 20 },
                pause: Duration::from_millis(700),
            };
            println!(
                "first audio: /v1/audio/speech vs Speak ({} runs)",
                config.runs
            );
            match openai_ttfb::run(&config, &bins, &logs).await {
                Ok(result) => {
                    report::write_section(&out, "openai_ttfb.json", &machine, &revision, &result)?;
                }
                Err(e) => failed.push(format!("OpenAI speech first audio: {e}")),
            }
        } else if std::env::var("CI").is_ok_and(|v| v == "true") {
            failed.push(format!(
                "OpenAI speech first audio: no voice at {} (CI=true: models are required)",
                voice_dir.display()
            ));
        } else {
            skipped.push(format!(
                "OpenAI speech first audio: no voice at {}",
                voice_dir.display()
            ));
        }
    } else {
        skipped.push("OpenAI speech first audio (--skip)".to_string());
    }

    let mut barge_result = None;
    if wanted(Part::BargeIn) {
        let config = bargein::BargeConfig {
            runs: if quick { 5 } else { 30 },
            frames_before: 5,
            linger: Duration::from_millis(100),
        };
        println!("barge-in: {} interrupts on Converse", config.runs);
        match bargein::run(&config, &bins, &logs).await {
            Ok(result) => {
                report::write_section(&out, "barge_in.json", &machine, &revision, &result)?;
                if result.frames_after_ack > 0 {
                    failed.push(format!(
                        "barge-in: {} audio frames of interrupted turns after their Interrupted event",
                        result.frames_after_ack
                    ));
                }
                barge_result = Some(result);
            }
            Err(e) => failed.push(format!("barge-in: {e}")),
        }
    } else {
        skipped.push("barge-in (--skip)".to_string());
    }

    let mut conversation_result = None;
    if wanted(Part::VoiceToVoice) {
        let models = args
            .model_dir
            .clone()
            .unwrap_or_else(|| workspace_dir().join("../shared/models"));
        let voice = models.join("piper-en_US-joe-medium");
        let whisper = models.join("whisper-tiny.en");
        let stt_worker = bins.path("stt-worker");
        if voice.is_dir() && whisper.is_dir() && stt_worker.exists() {
            let config = conversation::ConversationConfig {
                voice,
                whisper,
                passes: if quick { 1 } else { 4 },
                gap: Duration::from_millis(2_500),
            };
            println!(
                "voice to voice: {} utterances spoken into Converse with echo, with and without partials",
                config.passes * conversation::UTTERANCES.len()
            );
            match conversation::run(&config, &bins, &logs).await {
                Ok(result) => {
                    report::write_section(
                        &out,
                        "voice_to_voice.json",
                        &machine,
                        &revision,
                        &result,
                    )?;
                    for run in [&result.with_partials, &result.without_partials] {
                        if run.missing_finals > 0 {
                            failed.push(format!(
                                "voice to voice (partials {}): {} of {} utterances got no final",
                                run.partials, run.missing_finals, run.utterances
                            ));
                        }
                    }
                    conversation_result = Some(result);
                }
                Err(e) => failed.push(format!("voice to voice: {e}")),
            }
        } else if std::env::var("CI").is_ok_and(|v| v == "true") {
            failed.push(format!(
                "voice to voice: needs {}, {} and {} (CI=true: models are required)",
                voice.display(),
                whisper.display(),
                stt_worker.display()
            ));
        } else {
            skipped.push(format!(
                "voice to voice: needs {}, {} and {}",
                voice.display(),
                whisper.display(),
                stt_worker.display()
            ));
        }
    } else {
        skipped.push("voice to voice (--skip)".to_string());
    }

    for failure in &failed {
        skipped.push(format!("FAILED {failure}"));
    }
    let summary = report::Summary {
        goals: report::goals(
            &relay_results,
            throughput_result.as_ref(),
            voice_result.as_ref(),
            barge_result.as_ref(),
            conversation_result.as_ref(),
        ),
        engines: report::engines(&out),
        machine,
        git_revision: revision,
        started_utc,
        build_profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        quick,
        wall_seconds: started.elapsed().as_secs_f64(),
        relay: relay_results,
        throughput: throughput_result,
        first_audio: voice_result,
        barge_in: barge_result,
        voice_to_voice: conversation_result,
        skipped,
    };
    let json_path = out.join("summary.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&summary)?)
        .map_err(io(format!("writing {}", json_path.display())))?;
    let markdown = report::markdown(&summary);
    let md_path = out.join("summary.md");
    std::fs::write(&md_path, &markdown).map_err(io(format!("writing {}", md_path.display())))?;
    if !summary.relay.is_empty() {
        let png = out.join("latency.png");
        match plot::latency(&summary, &png) {
            Ok(()) => println!("wrote {}", png.display()),
            Err(e) => failed.push(format!("plot: {e}")),
        }
    }
    let png = out.join("user_latency.png");
    // Never a stale plot beside a new summary.
    let _ = std::fs::remove_file(&png);
    match plot::user_latency(&summary, &png) {
        Ok(()) if png.exists() => println!("wrote {}", png.display()),
        Ok(()) => {}
        Err(e) => failed.push(format!("plot: {e}")),
    }
    println!("\n{markdown}");
    println!("wrote {} and {}", json_path.display(), md_path.display());
    if failed.is_empty() {
        Ok(summary)
    } else {
        Err(BenchError::Setup(format!(
            "{} part(s) failed: {}",
            failed.len(),
            failed.join("; ")
        )))
    }
}
