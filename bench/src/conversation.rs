//! Voice to voice: speech spoken at real time into `Converse` with echo on,
//! through the orchestrator to a Whisper STT worker and a Piper TTS worker.
//! For each utterance: end of speech → its final transcript → the first
//! audio of the echo turn that speaks the transcript back.
//!
//! The speech is the Piper voice's own, made by the same worker before the
//! timed part (so the clips need no other tool), resampled to 16 kHz. The
//! microphone is simulated faithfully: 20 ms chunks, each sent when its last
//! sample would have been captured, silence between utterances, and the
//! stream stays open (as a live microphone does), so every final comes from
//! the endpoint, never from an end of audio.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use voxwire_proto::tts::tts_service_client::TtsServiceClient;
use voxwire_proto::tts::{StartSessionRequest, TextChunk};
use voxwire_proto::voxwire::v1::voxwire_client::VoxwireClient;
use voxwire_proto::voxwire::v1::{
    converse_event, converse_request, ConverseConfig, ConverseRequest, EndOfAudio,
};

use crate::client::connect;
use crate::error::{BenchError, Result};
use crate::procs::Bins;
use crate::stack::{self, Engine, StackSpec};
use crate::stats::Pcts;

/// The rate the simulated microphone sends.
const MIC_RATE: u32 = 16_000;
/// 20 ms at [`MIC_RATE`].
const CHUNK_SAMPLES: usize = (MIC_RATE / 50) as usize;
/// Silence before the first utterance.
const LEAD: Duration = Duration::from_millis(500);
/// Events come at least once per utterance (its final) and the gap between
/// utterances is seconds: this much silence from the orchestrator is a hang.
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the simulated speaker says, one utterance each: ordinary requests a
/// voice agent hears, short and long.
pub const UTTERANCES: &[&str] = &[
    "Turn off the kitchen lights.",
    "What time does the pharmacy close today?",
    "Please send the report to the office before noon on Friday.",
    "Remind me to call my sister tomorrow morning.",
    "How long will it take to drive to the airport?",
    "The train to the city leaves every hour from the main station.",
];

#[derive(Debug, Clone)]
pub struct ConversationConfig {
    /// The Piper voice directory.
    pub voice: PathBuf,
    /// The Whisper model directory.
    pub whisper: PathBuf,
    /// How many times the utterances are spoken (each pass speaks them all).
    pub passes: usize,
    /// Silence after each utterance's speech before the next begins: room for
    /// its final and its echo's first audio (the echo goes on playing).
    pub gap: Duration,
}

/// The same speech in two conversations, with and without partials.
#[derive(Debug, Clone, Serialize)]
pub struct VoiceToVoice {
    pub with_partials: ConversationResult,
    pub without_partials: ConversationResult,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConversationResult {
    pub utterances: usize,
    /// Whether the conversation asked for partial transcripts, which cost
    /// decodes while the speaker talks.
    pub partials: bool,
    /// End of the speech (the last clearly audible sample) to the final
    /// transcript's arrival.
    pub end_of_speech_to_final_ms: Pcts,
    /// Final transcript to the echo turn's first audio.
    pub final_to_first_audio_ms: Pcts,
    /// End of speech to the echo turn's first audio: voice to voice.
    pub end_of_speech_to_first_audio_ms: Pcts,
    /// Word error rate of the finals against the scripts, all utterances.
    pub word_error_rate: f64,
    /// Finals that did not come (the utterance was lost) or came empty.
    pub missing_finals: usize,
    /// Each utterance's script and the final it got, for reading the WER.
    pub transcripts: Vec<(String, String)>,
}

/// One clip of the simulated speaker at [`MIC_RATE`].
struct Clip {
    script: &'static str,
    pcm: Vec<f32>,
    /// Index just past the last clearly audible sample.
    speech_end: usize,
}

pub async fn run(config: &ConversationConfig, bins: &Bins, logs: &Path) -> Result<VoiceToVoice> {
    let spec = StackSpec {
        workers: 1,
        engine: Engine::Piper {
            voice: config.voice.clone(),
            decode_window: None,
        },
        orchestrator: true,
        bare_relay: false,
        stt: Some(config.whisper.clone()),
    };
    let mut stack = stack::start(&spec, bins, logs, "conversation").await?;
    let clips = speak_clips(&stack.worker_addrs()[0]).await?;
    let orchestrator = stack
        .orchestrator()
        .ok_or_else(|| BenchError::Setup("no orchestrator".into()))?
        .addr
        .clone();
    let mut client = VoxwireClient::new(connect(&orchestrator).await?);
    // With partials (what a live caption asks for) and without, on the same
    // stack: the difference is what partial decodes cost the final.
    let with_partials = converse(&mut client, &clips, config, true).await?;
    stack.check_alive()?;
    let without_partials = converse(&mut client, &clips, config, false).await?;
    stack.check_alive()?;
    Ok(VoiceToVoice {
        with_partials,
        without_partials,
    })
}

/// One conversation: every clip spoken `config.passes` times, then the
/// microphone closes.
async fn converse(
    client: &mut VoxwireClient<Channel>,
    clips: &[Clip],
    config: &ConversationConfig,
    partials: bool,
) -> Result<ConversationResult> {
    // The whole microphone stream, and where each utterance's speech ends in it.
    let gap = vec![0.0f32; samples(config.gap)];
    let mut mic = vec![0.0f32; samples(LEAD)];
    let mut scripts = Vec::new();
    let mut ends = Vec::new();
    for _ in 0..config.passes.max(1) {
        for clip in clips {
            ends.push(mic.len() + clip.speech_end);
            scripts.push(clip.script);
            mic.extend_from_slice(&clip.pcm);
            mic.extend_from_slice(&gap);
        }
    }

    let (tx, rx) = mpsc::channel(64);
    tx.send(ConverseRequest {
        request: Some(converse_request::Request::Config(ConverseConfig {
            session_id: format!("voice-to-voice-{partials}"),
            input_sample_rate: MIC_RATE as i32,
            partial_results: partials,
            echo: true,
            ..Default::default()
        })),
    })
    .await
    .map_err(|_| BenchError::Setup("Converse closed before its config".into()))?;
    let mut events = client.converse(ReceiverStream::new(rx)).await?.into_inner();

    let started = Instant::now();
    let sender = tokio::spawn(async move {
        let mut sent = 0usize;
        for chunk in mic.chunks(CHUNK_SAMPLES) {
            sent += chunk.len();
            let due = started + Duration::from_secs_f64(sent as f64 / f64::from(MIC_RATE));
            tokio::time::sleep_until(due.into()).await;
            let bytes: Vec<u8> = voxwire_dsp::f32_to_i16(chunk)
                .iter()
                .flat_map(|s| s.to_le_bytes())
                .collect();
            let audio = converse_request::Request::Audio(bytes.into());
            if tx
                .send(ConverseRequest {
                    request: Some(audio),
                })
                .await
                .is_err()
            {
                return;
            }
        }
        let end = converse_request::Request::EndOfAudio(EndOfAudio {});
        let _ = tx.send(ConverseRequest { request: Some(end) }).await;
        // Dropping `tx` closes the client's side: the conversation ends once
        // the last echo has been spoken.
    });

    // Finals with text and the first audio of each echo turn, in order.
    let mut finals: Vec<(Instant, String)> = Vec::new();
    let mut echo_starts: Vec<(u64, Instant)> = Vec::new();
    loop {
        let event = match tokio::time::timeout(EVENT_TIMEOUT, events.message()).await {
            Ok(event) => event?,
            Err(_) => {
                return Err(BenchError::Setup(format!(
                    "Converse gave nothing for {EVENT_TIMEOUT:?}"
                )))
            }
        };
        let Some(event) = event else { break };
        match event.event {
            Some(converse_event::Event::Transcript(t))
                if t.is_final && !t.text.trim().is_empty() =>
            {
                finals.push((Instant::now(), t.text));
            }
            Some(converse_event::Event::Audio(frame))
                if !frame.audio_data.is_empty()
                    && !echo_starts.iter().any(|(turn, _)| *turn == event.turn_id) =>
            {
                echo_starts.push((event.turn_id, Instant::now()));
            }
            Some(converse_event::Event::Error(e)) => {
                return Err(BenchError::Setup(format!(
                    "turn {} failed: code {} {}",
                    event.turn_id, e.code, e.message
                )))
            }
            _ => {}
        }
    }
    sender
        .await
        .map_err(|e| BenchError::Setup(format!("the microphone task failed: {e}")))?;

    // An utterance's final is the first final after its speech ended; its echo
    // the first echo turn to start after that final.
    let at = |sample: usize| started + Duration::from_secs_f64(sample as f64 / f64::from(MIC_RATE));
    let (mut to_final, mut to_audio, mut voice_to_voice) = (Vec::new(), Vec::new(), Vec::new());
    let mut hypotheses = Vec::new();
    let mut missing = 0;
    for (i, &end) in ends.iter().enumerate() {
        let speech_over = at(end);
        let next_end = ends.get(i + 1).map(|&e| at(e));
        let Some((final_at, text)) = finals
            .iter()
            .find(|(t, _)| *t >= speech_over && next_end.is_none_or(|n| *t < n))
        else {
            missing += 1;
            hypotheses.push(String::new());
            continue;
        };
        hypotheses.push(text.clone());
        to_final.push(ms(*final_at - speech_over));
        if let Some((_, audio_at)) = echo_starts.iter().find(|(_, t)| t >= final_at) {
            to_audio.push(ms(*audio_at - *final_at));
            voice_to_voice.push(ms(*audio_at - speech_over));
        }
    }
    let reference = scripts.join(" ");
    let hypothesis = hypotheses.join(" ");
    let transcripts = scripts
        .iter()
        .map(|s| s.to_string())
        .zip(hypotheses)
        .collect();
    Ok(ConversationResult {
        utterances: ends.len(),
        partials,
        end_of_speech_to_final_ms: Pcts::of(to_final),
        final_to_first_audio_ms: Pcts::of(to_audio),
        end_of_speech_to_first_audio_ms: Pcts::of(voice_to_voice),
        word_error_rate: voxwire_testkit::wer::word_error_rate(&reference, &hypothesis),
        missing_finals: missing,
        transcripts,
    })
}

fn samples(duration: Duration) -> usize {
    (duration.as_secs_f64() * f64::from(MIC_RATE)).round() as usize
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The utterances in the Piper voice, straight from the worker, at 16 kHz.
async fn speak_clips(worker: &str) -> Result<Vec<Clip>> {
    let mut client = TtsServiceClient::new(connect(worker).await?);
    client
        .start_session(StartSessionRequest {
            session_id: "conversation-clips".into(),
            ..Default::default()
        })
        .await?;
    let mut clips = Vec::new();
    for &script in UTTERANCES {
        let chunk = TextChunk {
            session_id: "conversation-clips".into(),
            text: script.into(),
            is_final: true,
            sequence_number: 1,
        };
        let mut frames = client
            .synthesize(tokio_stream::iter([chunk]))
            .await?
            .into_inner();
        let mut pcm = Vec::new();
        let mut rate = 0;
        while let Some(frame) = frames.message().await? {
            rate = frame.sample_rate;
            pcm.extend(
                frame
                    .audio_data
                    .chunks_exact(2)
                    .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0),
            );
        }
        let rate = u32::try_from(rate).ok().filter(|&r| r > 0).ok_or_else(|| {
            BenchError::Setup(format!("no sample rate in the audio of {script:?}"))
        })?;
        let pcm = voxwire_dsp::resample(&pcm, rate, MIC_RATE)
            .map_err(|e| BenchError::Setup(format!("resampling {script:?}: {e}")))?;
        let speech_end = speech_end(&pcm);
        if speech_end == 0 {
            return Err(BenchError::Setup(format!(
                "the voice said nothing for {script:?}"
            )));
        }
        clips.push(Clip {
            script,
            pcm,
            speech_end,
        });
    }
    Ok(clips)
}

/// Index just past the last clearly audible sample: the voice's trailing
/// quiet is not speech, and latency counts from where the speech ends.
fn speech_end(pcm: &[f32]) -> usize {
    pcm.iter()
        .rposition(|s| s.abs() > 0.01)
        .map_or(0, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speech_ends_after_the_last_audible_sample() {
        let mut pcm = vec![0.0; 100];
        pcm[10] = 0.5;
        pcm[40] = -0.2;
        pcm[60] = 0.005;
        assert_eq!(speech_end(&pcm), 41);
        assert_eq!(speech_end(&[0.0; 8]), 0);
    }
}
