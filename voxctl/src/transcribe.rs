//! `voxctl transcribe`: a WAV file to transcripts, through the orchestrator
//! or straight to an STT worker, every event validated.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use voxwire_proto::stt::stt_service_client::SttServiceClient;
use voxwire_proto::stt::{
    recognize_request, AudioChunk, RecognitionConfig, RecognizeRequest, TranscriptEvent,
};
use voxwire_proto::stt_stream::SttStreamValidator;
use voxwire_proto::voxwire::v1::voxwire_client::VoxwireClient;

use crate::{connect_with, fresh_session_id, within, ClientError, ClientOptions};

/// Where the audio goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Orchestrator,
    Worker,
}

/// How the audio is sent.
#[derive(Debug, Clone, Copy)]
pub struct SendOptions {
    pub partials: bool,
    /// Pace 20 ms chunks at real time, as a microphone would.
    pub realtime: bool,
}

/// Streams `samples` (16-bit mono at `sample_rate`) in 20 ms chunks, ends the
/// audio, and returns every event; `on_event` sees each as it arrives.
pub async fn transcribe(
    target: &str,
    route: Route,
    samples: &[i16],
    sample_rate: u32,
    options: SendOptions,
    on_event: impl FnMut(&TranscriptEvent),
) -> Result<Vec<TranscriptEvent>, ClientError> {
    transcribe_with(
        target,
        &ClientOptions::default(),
        route,
        samples,
        sample_rate,
        options,
        on_event,
    )
    .await
}

/// [`transcribe`] with TLS and a token.
pub async fn transcribe_with(
    target: &str,
    client: &ClientOptions,
    route: Route,
    samples: &[i16],
    sample_rate: u32,
    options: SendOptions,
    mut on_event: impl FnMut(&TranscriptEvent),
) -> Result<Vec<TranscriptEvent>, ClientError> {
    let channel = connect_with(target, client).await?;
    let session_id = fresh_session_id("voxctl");
    let (tx, rx) = mpsc::channel(64);
    let end_sent = Arc::new(AtomicBool::new(false));
    let config = RecognizeRequest {
        request: Some(recognize_request::Request::Config(RecognitionConfig {
            session_id: session_id.clone(),
            sample_rate: i32::try_from(sample_rate).unwrap_or(i32::MAX),
            partial_results: options.partials,
            ..Default::default()
        })),
    };
    let chunk_samples = (sample_rate as usize / 50).max(1);
    let mut pieces: Vec<Vec<u8>> = samples
        .chunks(chunk_samples)
        .map(|chunk| {
            let mut bytes = Vec::with_capacity(chunk.len() * 2);
            voxwire_proto::audio::encode_pcm16(chunk, &mut bytes);
            bytes
        })
        .collect();
    if pieces.is_empty() {
        pieces.push(Vec::new());
    }
    let sender = {
        let end_sent = Arc::clone(&end_sent);
        async move {
            if tx.send(config).await.is_err() {
                return;
            }
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let last = pieces.len() - 1;
            for (i, audio) in pieces.into_iter().enumerate() {
                if options.realtime {
                    tick.tick().await;
                }
                let request = RecognizeRequest {
                    request: Some(recognize_request::Request::Audio(AudioChunk {
                        audio_data: audio.into(),
                        is_final: i == last,
                    })),
                };
                if tx.send(request).await.is_err() {
                    return;
                }
            }
            end_sent.store(true, Ordering::Release);
        }
    };
    tokio::spawn(sender);
    let requests = ReceiverStream::new(rx);
    let call = async {
        Ok(match route {
            Route::Worker => SttServiceClient::new(channel).recognize(requests).await?,
            Route::Orchestrator => VoxwireClient::new(channel).transcribe(requests).await?,
        })
    };
    let mut events = within(
        client.call_timeout,
        "no answer to the transcription",
        "--call-timeout-ms",
        call,
    )
    .await?
    .into_inner();
    let mut validator = SttStreamValidator::new(session_id, options.partials);
    let mut marked = false;
    let mut all = Vec::new();
    loop {
        let event = match tokio::time::timeout(client.call_timeout, events.next()).await {
            Ok(Some(event)) => event?,
            Ok(None) => break,
            // While audio is still going out, silence from the server is normal.
            Err(_) if !end_sent.load(Ordering::Acquire) => continue,
            Err(_) => {
                return Err(ClientError::Timeout(format!(
                    "no transcript within {} ms of the end of audio (--call-timeout-ms)",
                    client.call_timeout.as_millis()
                )))
            }
        };
        if !marked && end_sent.load(Ordering::Acquire) {
            validator.end_of_audio();
            marked = true;
        }
        validator.observe(&event)?;
        on_event(&event);
        all.push(event);
    }
    if !marked {
        validator.end_of_audio();
    }
    validator.finish()?;
    Ok(all)
}

/// What `voxctl transcribe` tells the user on stderr beside the transcripts:
/// how far a long file has got, and that a file held no speech at all.
#[derive(Debug, Clone)]
pub struct Progress {
    audio_ms: i64,
    finals_with_text: usize,
}

/// Files shorter than this finish before progress would help.
const PROGRESS_FROM_MS: i64 = 15_000;

impl Progress {
    pub fn new(samples: usize, sample_rate: u32) -> Self {
        Progress {
            audio_ms: (samples as u64 * 1000 / u64::from(sample_rate.max(1))) as i64,
            finals_with_text: 0,
        }
    }

    /// A progress line for a final of a long file.
    pub fn on_event(&mut self, event: &TranscriptEvent) -> Option<String> {
        if !event.is_final {
            return None;
        }
        if !event.text.trim().is_empty() {
            self.finals_with_text += 1;
        }
        (self.audio_ms >= PROGRESS_FROM_MS).then(|| {
            format!(
                "[{} of {}]",
                clock(event.end_ms.clamp(0, self.audio_ms)),
                clock(self.audio_ms)
            )
        })
    }

    /// The closing line when nothing was heard.
    pub fn summary(&self) -> Option<String> {
        (self.finals_with_text == 0)
            .then(|| format!("no speech found in {} of audio", clock(self.audio_ms)))
    }
}

fn clock(ms: i64) -> String {
    let seconds = ms / 1000;
    format!("{}:{:02}.{}", seconds / 60, seconds % 60, (ms % 1000) / 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn final_event(text: &str, end_ms: i64) -> TranscriptEvent {
        TranscriptEvent {
            text: text.into(),
            is_final: true,
            end_ms,
            ..Default::default()
        }
    }

    #[test]
    fn long_files_report_how_far_the_finals_have_got() {
        let mut progress = Progress::new(61 * 16_000, 16_000);
        assert_eq!(
            progress.on_event(&final_event("one", 31_250)).as_deref(),
            Some("[0:31.2 of 1:01.0]")
        );
        assert_eq!(progress.summary(), None);
    }

    #[test]
    fn short_files_stay_quiet_and_silence_is_named() {
        let mut progress = Progress::new(3 * 16_000, 16_000);
        assert_eq!(progress.on_event(&final_event("", 3_000)), None);
        assert_eq!(
            progress.summary().as_deref(),
            Some("no speech found in 0:03.0 of audio")
        );
    }
}
