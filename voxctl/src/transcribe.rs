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
