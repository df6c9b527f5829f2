//! First audio with the real Piper voice: one sentence and a 5,000-character
//! text, through the orchestrator's Speak and straight to the worker, taking
//! turns in the same run.

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

#[derive(Debug, Clone, Serialize)]
pub struct VoiceCase {
    pub chars: usize,
    pub runs: usize,
    pub direct_ms: Pcts,
    pub orchestrator_ms: Pcts,
    pub added_ms: Added,
}

#[derive(Debug, Clone, Serialize)]
pub struct VoiceResult {
    pub voice: String,
    pub one_sentence: VoiceCase,
    pub long_text: VoiceCase,
}

pub async fn run(config: &VoiceConfig, bins: &Bins, logs: &Path) -> Result<VoiceResult> {
    let spec = StackSpec {
        workers: 1,
        engine: Engine::Piper {
            voice: config.voice.clone(),
        },
        orchestrator: true,
        bare_relay: false,
    };
    let mut stack = stack::start(&spec, bins, logs, "voice").await?;
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

    let long = long_text();
    let mut cases = Vec::new();
    for (name, text, runs) in [
        ("one sentence", ONE_SENTENCE, config.sentence_runs),
        ("5,000 characters", long.as_str(), config.long_runs),
    ] {
        let (mut direct, mut through) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            direct.push(first_audio_direct(worker.clone(), text).await?);
            tokio::time::sleep(config.pause).await;
            through.push(first_audio_speak(orchestrator.clone(), text).await?);
            tokio::time::sleep(config.pause).await;
            stack.check_alive()?;
        }
        let (direct, through) = (Pcts::of(direct), Pcts::of(through));
        println!(
            "  {name:>16}: first audio direct p50 {:.1} p95 {:.1} ms | through the orchestrator p50 {:.1} p95 {:.1} ms ({runs} runs each)",
            direct.p50, direct.p95, through.p50, through.p95
        );
        cases.push(VoiceCase {
            chars: text.chars().count(),
            runs,
            direct_ms: direct,
            orchestrator_ms: through,
            added_ms: through.minus(&direct),
        });
    }
    let long_text = cases
        .pop()
        .ok_or_else(|| BenchError::Setup("no case".into()))?;
    let one_sentence = cases
        .pop()
        .ok_or_else(|| BenchError::Setup("no case".into()))?;
    Ok(VoiceResult {
        voice: config.voice.display().to_string(),
        one_sentence,
        long_text,
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
    fn long_text_is_about_5000_characters() {
        let n = long_text().chars().count();
        assert!((4_900..=5_000).contains(&n), "{n}");
    }
}
