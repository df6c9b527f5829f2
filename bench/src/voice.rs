//! First audio with the real Piper voice: one sentence, a text whose first
//! sentence is 233 characters long, and a 5,000-character text, through the
//! orchestrator's Speak and straight to the worker, with the worker's default
//! chunked decoding and with `--decode-window whole` (each sentence decoded
//! at once), all taking turns in the same run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use tonic::transport::Channel;
use voxwire_proto::tts::tts_service_client::TtsServiceClient;
use voxwire_proto::tts::{StartSessionRequest, TextChunk};
use voxwire_proto::voxwire::v1::voxwire_client::VoxwireClient;
use voxwire_proto::voxwire::v1::SpeakRequest;

use crate::client::connect;
use crate::error::{BenchError, Result};
use crate::procs::Bins;
use crate::stack::{self, Engine, StackSpec};
use crate::stats::{Added, Pcts};

pub const ONE_SENTENCE: &str = "The quick brown fox jumps over the lazy dog.";

/// A long first sentence (233 characters, clauses and all), then a short one.
pub const LONG_FIRST_SENTENCE: &str = "When the morning train finally pulled into the crowded \
    station, the passengers who had waited for nearly an hour in the cold gathered their bags, \
    their coffee and their patience, and stepped aboard without a single word of complaint. \
    The doors closed behind them.";

/// About 5,000 characters of ordinary sentences.
pub fn long_text() -> String {
    const SENTENCES: [&str; 4] = [
        "Voice systems are judged in milliseconds.",
        "A listener notices a pause long before a reader would.",
        "The worker starts speaking as soon as the first sentence is complete.",
        "The rest of the text is synthesized while the first audio plays.",
    ];
    let mut text = String::new();
    for sentence in SENTENCES.iter().cycle() {
        if text.len() + sentence.len() + 1 > 5_000 {
            break;
        }
        text.push_str(sentence);
        text.push(' ');
    }
    text.trim_end().to_string()
}

#[derive(Debug, Clone)]
pub struct VoiceConfig {
    pub voice: PathBuf,
    pub sentence_runs: usize,
    pub long_runs: usize,
    /// Between runs, so the synthesis a cancelled call left running ends
    /// before the next call is timed.
    pub pause: Duration,
}

/// One text's first audio. The plain fields are the worker's default
/// (chunked decoding); the `whole_` ones the same runs against a worker
/// started with `--decode-window whole`.
#[derive(Debug, Clone, Serialize)]
pub struct VoiceCase {
    pub chars: usize,
    /// Characters of the text's first sentence.
    pub first_sentence_chars: usize,
    pub runs: usize,
    pub direct_ms: Pcts,
    pub orchestrator_ms: Pcts,
    pub added_ms: Added,
    pub whole_direct_ms: Pcts,
    pub whole_orchestrator_ms: Pcts,
}

/// First audio of one sentence with several turns started at once,
/// straight to the chunked worker.
#[derive(Debug, Clone, Serialize)]
pub struct ConcurrentCase {
    /// Turns started together.
    pub turns: usize,
    /// Rounds of `turns` calls; the percentiles are over every call.
    pub rounds: usize,
    pub direct_ms: Pcts,
}

#[derive(Debug, Clone, Serialize)]
pub struct VoiceResult {
    pub voice: String,
    pub one_sentence: VoiceCase,
    pub long_first_sentence: VoiceCase,
    pub long_text: VoiceCase,
    /// One sentence at 2, 4 and 8 simultaneous turns (chunked decoding).
    pub concurrent: Vec<ConcurrentCase>,
}

/// Simultaneous turns the concurrency part starts.
const CONCURRENT_TURNS: [usize; 3] = [2, 4, 8];

/// One Piper worker with an orchestrator in front, and clients for both.
struct VoicePath {
    stack: stack::Stack,
    worker: TtsServiceClient<Channel>,
    orchestrator: VoxwireClient<Channel>,
}

impl VoicePath {
    async fn start(
        config: &VoiceConfig,
        bins: &Bins,
        logs: &Path,
        tag: &str,
        decode_window: Option<&str>,
    ) -> Result<VoicePath> {
        let spec = StackSpec {
            workers: 1,
            engine: Engine::Piper {
                voice: config.voice.clone(),
                decode_window: decode_window.map(str::to_string),
            },
            orchestrator: true,
            bare_relay: false,
            stt: None,
        };
        let stack = stack::start(&spec, bins, logs, tag).await?;
        let worker = TtsServiceClient::new(connect(&stack.worker_addrs()[0]).await?);
        let orchestrator = VoxwireClient::new(
            connect(
                &stack
                    .orchestrator()
                    .ok_or_else(|| BenchError::Setup("no orchestrator".into()))?
                    .addr,
            )
            .await?,
        );
        worker
            .clone()
            .start_session(StartSessionRequest {
                session_id: "voice-direct".into(),
                ..Default::default()
            })
            .await?;
        // Not timed: opens the orchestrator's session on the worker and warms
        // both paths' connections.
        first_audio_direct(worker.clone(), ONE_SENTENCE).await?;
        tokio::time::sleep(config.pause).await;
        first_audio_speak(orchestrator.clone(), ONE_SENTENCE).await?;
        tokio::time::sleep(config.pause).await;
        Ok(VoicePath {
            stack,
            worker,
            orchestrator,
        })
    }

    /// First audio straight to the worker, then through the orchestrator.
    async fn turn(&mut self, text: &str, pause: Duration) -> Result<(f64, f64)> {
        let direct = first_audio_direct(self.worker.clone(), text).await?;
        tokio::time::sleep(pause).await;
        let through = first_audio_speak(self.orchestrator.clone(), text).await?;
        tokio::time::sleep(pause).await;
        self.stack.check_alive()?;
        Ok((direct, through))
    }
}

fn first_sentence_chars(text: &str) -> usize {
    text.find(". ")
        .map_or(text.chars().count(), |end| text[..=end].chars().count())
}

pub async fn run(config: &VoiceConfig, bins: &Bins, logs: &Path) -> Result<VoiceResult> {
    // Both workers stay up for the whole run, so the modes take turns under
    // the same machine load; only one of them works at a time.
    let mut chunked = VoicePath::start(config, bins, logs, "voice", None).await?;
    let mut whole = VoicePath::start(config, bins, logs, "voice-whole", Some("whole")).await?;

    let long = long_text();
    let mut cases = Vec::new();
    for (name, text, runs) in [
        ("one sentence", ONE_SENTENCE, config.sentence_runs),
        ("long first sentence", LONG_FIRST_SENTENCE, config.long_runs),
        ("5,000 characters", long.as_str(), config.long_runs),
    ] {
        let (mut direct, mut through) = (Vec::new(), Vec::new());
        let (mut whole_direct, mut whole_through) = (Vec::new(), Vec::new());
        for run in 0..runs {
            // Alternate which mode goes first.
            let order = if run % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for is_chunked in order {
                if is_chunked {
                    let (d, t) = chunked.turn(text, config.pause).await?;
                    direct.push(d);
                    through.push(t);
                } else {
                    let (d, t) = whole.turn(text, config.pause).await?;
                    whole_direct.push(d);
                    whole_through.push(t);
                }
            }
        }
        let (direct, through) = (Pcts::of(direct), Pcts::of(through));
        let (whole_direct, whole_through) = (Pcts::of(whole_direct), Pcts::of(whole_through));
        println!(
            "  {name:>19}: first audio p50 / p95 ms, chunked: direct {:.1} / {:.1}, orchestrator {:.1} / {:.1} | whole sentence: direct {:.1} / {:.1}, orchestrator {:.1} / {:.1} ({runs} runs each)",
            direct.p50,
            direct.p95,
            through.p50,
            through.p95,
            whole_direct.p50,
            whole_direct.p95,
            whole_through.p50,
            whole_through.p95
        );
        cases.push(VoiceCase {
            chars: text.chars().count(),
            first_sentence_chars: first_sentence_chars(text),
            runs,
            direct_ms: direct,
            orchestrator_ms: through,
            added_ms: through.minus(&direct),
            whole_direct_ms: whole_direct,
            whole_orchestrator_ms: whole_through,
        });
    }
    let mut concurrent = Vec::new();
    let rounds = config.long_runs.max(2);
    for turns in CONCURRENT_TURNS {
        let mut ms = Vec::new();
        for _ in 0..rounds {
            let calls: Vec<_> = (0..turns)
                .map(|_| tokio::spawn(first_audio_direct(chunked.worker.clone(), ONE_SENTENCE)))
                .collect();
            for call in calls {
                ms.push(
                    call.await
                        .map_err(|e| BenchError::Setup(format!("turn task: {e}")))??,
                );
            }
            // Each cancelled turn stops at its next window; let them all.
            tokio::time::sleep(config.pause * 2).await;
            chunked.stack.check_alive()?;
        }
        let direct = Pcts::of(ms);
        println!(
            "  {turns} simultaneous turns, one sentence: first audio p50 / p95 ms, chunked, direct {:.1} / {:.1} ({rounds} rounds)",
            direct.p50, direct.p95
        );
        concurrent.push(ConcurrentCase {
            turns,
            rounds,
            direct_ms: direct,
        });
    }

    let mut cases = cases.into_iter();
    let mut next = || {
        cases
            .next()
            .ok_or_else(|| BenchError::Setup("no case".into()))
    };
    Ok(VoiceResult {
        voice: config.voice.display().to_string(),
        one_sentence: next()?,
        long_first_sentence: next()?,
        long_text: next()?,
        concurrent,
    })
}

/// Milliseconds to the first frame carrying audio of a Speak call, which is
/// then cancelled.
pub(crate) async fn first_audio_speak(
    mut client: VoxwireClient<Channel>,
    text: &str,
) -> Result<f64> {
    let started = Instant::now();
    let mut frames = client
        .speak(SpeakRequest {
            session_id: "voice-orchestrator".into(),
            text: text.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    while let Some(frame) = frames.message().await? {
        if !frame.audio_data.is_empty() {
            return Ok(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Err(BenchError::Setup("Speak ended without audio".into()))
}

async fn first_audio_direct(mut client: TtsServiceClient<Channel>, text: &str) -> Result<f64> {
    let chunk = TextChunk {
        session_id: "voice-direct".into(),
        text: text.into(),
        is_final: true,
        sequence_number: 1,
    };
    let started = Instant::now();
    let mut frames = client
        .synthesize(tokio_stream::iter([chunk]))
        .await?
        .into_inner();
    while let Some(frame) = frames.message().await? {
        if !frame.audio_data.is_empty() {
            return Ok(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Err(BenchError::Setup("Synthesize ended without audio".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_first_sentence_is_about_230_characters() {
        let n = first_sentence_chars(LONG_FIRST_SENTENCE);
        assert!((220..=240).contains(&n), "{n}");
        assert_eq!(first_sentence_chars(ONE_SENTENCE), ONE_SENTENCE.len());
    }

    #[test]
    fn long_text_is_about_5000_characters() {
        let n = long_text().chars().count();
        assert!((4_900..=5_000).contains(&n), "{n}");
    }
}
