//! `voxctl say`: text to audio, through the orchestrator or straight to a
//! TTS worker, every frame validated.

use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use voxwire_proto::tts::tts_service_client::TtsServiceClient;
use voxwire_proto::tts::{AudioFrame, EndSessionRequest, StartSessionRequest, TextChunk};
use voxwire_proto::tts_stream::TtsStreamValidator;
use voxwire_proto::voxwire::v1::voxwire_client::VoxwireClient;
use voxwire_proto::voxwire::v1::SpeakRequest;

use crate::{connect_with, fresh_session_id, within, ClientError, ClientOptions};

/// What came back.
#[derive(Debug, Clone)]
pub struct Spoken {
    /// 16-bit LE PCM, the data frames concatenated.
    pub pcm: Vec<u8>,
    pub sample_rate: u32,
    pub frames: usize,
    /// From sending the request to the first frame with audio.
    pub first_audio: Option<Duration>,
    pub total: Duration,
}

impl Spoken {
    pub fn audio_seconds(&self) -> f64 {
        self.pcm.len() as f64 / 2.0 / f64::from(self.sample_rate.max(1))
    }
}

/// Through the orchestrator's `voxwire.v1.Voxwire/Speak`.
pub async fn via_orchestrator(
    target: &str,
    text: &str,
    model: &str,
) -> Result<Spoken, ClientError> {
    via_orchestrator_with(target, &ClientOptions::default(), text, model).await
}

/// [`via_orchestrator`] with TLS and a token.
pub async fn via_orchestrator_with(
    target: &str,
    options: &ClientOptions,
    text: &str,
    model: &str,
) -> Result<Spoken, ClientError> {
    let mut client = VoxwireClient::new(connect_with(target, options).await?);
    let session_id = fresh_session_id("voxctl");
    let started = Instant::now();
    let call = async {
        Ok(client
            .speak(SpeakRequest {
                session_id: session_id.clone(),
                text: text.to_string(),
                model_id: model.to_string(),
                ..Default::default()
            })
            .await?)
    };
    let frames = within(options.call_timeout, "no answer to Speak", CALL_FLAG, call)
        .await?
        .into_inner();
    collect(frames, &session_id, started, options.call_timeout).await
}

/// Straight to one worker's `tts.TTSService`: a session of one call.
pub async fn via_worker(target: &str, text: &str, model: &str) -> Result<Spoken, ClientError> {
    via_worker_with(target, &ClientOptions::default(), text, model).await
}

/// [`via_worker`] with TLS (and a token, for the orchestrator's relay).
pub async fn via_worker_with(
    target: &str,
    options: &ClientOptions,
    text: &str,
    model: &str,
) -> Result<Spoken, ClientError> {
    let mut client = TtsServiceClient::new(connect_with(target, options).await?);
    let session_id = fresh_session_id("voxctl");
    let start = async {
        Ok(client
            .start_session(StartSessionRequest {
                session_id: session_id.clone(),
                model_id: model.to_string(),
                ..Default::default()
            })
            .await?)
    };
    within(
        options.call_timeout,
        "no answer to StartSession",
        CALL_FLAG,
        start,
    )
    .await?;
    let started = Instant::now();
    let chunk = TextChunk {
        session_id: session_id.clone(),
        text: text.to_string(),
        is_final: true,
        sequence_number: 1,
    };
    let result = async {
        let call = async { Ok(client.synthesize(tokio_stream::iter(vec![chunk])).await?) };
        let frames = within(
            options.call_timeout,
            "no answer to Synthesize",
            CALL_FLAG,
            call,
        )
        .await?
        .into_inner();
        collect(frames, &session_id, started, options.call_timeout).await
    }
    .await;
    // Close the session whatever happened; its outcome does not change ours.
    let _ = tokio::time::timeout(
        options.call_timeout,
        client.end_session(EndSessionRequest {
            session_id: session_id.clone(),
        }),
    )
    .await;
    result
}

const CALL_FLAG: &str = "--call-timeout-ms";

async fn collect(
    mut frames: tonic::Streaming<AudioFrame>,
    session_id: &str,
    started: Instant,
    gap: Duration,
) -> Result<Spoken, ClientError> {
    let mut validator = TtsStreamValidator::new(session_id);
    let mut pcm = Vec::new();
    let mut first_audio = None;
    let mut count = 0;
    loop {
        let next = async { Ok(frames.next().await) };
        let Some(frame) = within(gap, "no frame", CALL_FLAG, next).await? else {
            break;
        };
        let frame = frame?;
        let kind = validator.observe(&frame)?;
        count += 1;
        if kind.has_audio() {
            first_audio.get_or_insert_with(|| started.elapsed());
            pcm.extend_from_slice(&frame.audio_data);
        }
        if kind.is_final() {
            break;
        }
    }
    validator.finish()?;
    let sample_rate = validator
        .format()
        .map_or(voxwire_proto::audio::DEFAULT_SAMPLE_RATE, |f| {
            f.sample_rate()
        });
    Ok(Spoken {
        pcm,
        sample_rate,
        frames: count,
        first_audio,
        total: started.elapsed(),
    })
}
