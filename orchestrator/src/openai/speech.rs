//! `POST /v1/audio/speech`: one `Speak` turn ([`crate::api::speak_stream`]:
//! the same admission, dispatch, retries and metrics), its frames written to
//! the response as they arrive (chunked transfer). The status line waits for
//! the turn's first frame, so a turn refused before any audio (no worker,
//! unknown voice) is an error response; a failure after that cuts the body
//! short, which clients report as an incomplete read.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use voxwire_dsp::StreamResampler;
use voxwire_proto::audio::{decode_pcm16, encode_pcm16};
use voxwire_proto::tts::AudioFrame;

use super::error::ApiError;
use super::wav;
use crate::api::{speak_stream, TextSource};
use crate::app::Orchestrator;
use crate::sessions::{new_session_id, Opener};

/// OpenAI's voice names: each speaks with the TTS pool's default voice. Any
/// other name is taken as a voice (model id) of the workers' catalogue.
pub const OPENAI_VOICES: &[&str] = &[
    "alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage",
    "shimmer", "verse",
];

/// The rate of OpenAI's `pcm` format, which clients assume without asking.
pub const PCM_SAMPLE_RATE: u32 = 24_000;

#[derive(Debug, Deserialize)]
struct SpeechRequest {
    model: Option<String>,
    input: Option<String>,
    /// A name, or (newer SDKs, custom voices) an object with an `id`.
    voice: Option<serde_json::Value>,
    response_format: Option<String>,
    speed: Option<f64>,
    stream_format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// 16-bit mono WAV at the voice's rate, its header sizes "unknown".
    Wav,
    /// Raw 16-bit LE mono at 24 kHz, as OpenAI sends it.
    Pcm,
}

impl Format {
    fn parse(name: Option<&str>) -> Result<Format, ApiError> {
        let bad = |message: String| Err(ApiError::invalid(message).with_param("response_format"));
        match name.map(str::to_ascii_lowercase).as_deref() {
            // OpenAI's default is mp3, which this server does not encode.
            None | Some("wav") => Ok(Format::Wav),
            Some("pcm") => Ok(Format::Pcm),
            Some(other @ ("mp3" | "opus" | "aac" | "flac")) => bad(format!(
                "response_format {other:?} is not supported by this server: use \"wav\" or \"pcm\""
            )),
            Some(other) => bad(format!(
                "unknown response_format {other:?}: use \"wav\" or \"pcm\""
            )),
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Wav => "audio/wav",
            Format::Pcm => "audio/pcm",
        }
    }
}

/// What the request asks for, checked.
#[derive(Debug)]
struct Speech {
    text: String,
    /// The worker model id: empty for the pool's default voice.
    voice: String,
    format: Format,
}

fn parse(body: &[u8], max_text_chars: usize) -> Result<Speech, ApiError> {
    let request: SpeechRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the body is not a valid speech request: {e}")))?;
    let text = request.input.ok_or_else(|| {
        ApiError::invalid("missing required parameter: input").with_param("input")
    })?;
    if text.trim().is_empty() {
        return Err(ApiError::invalid("input must not be empty").with_param("input"));
    }
    voxwire_proto::tts_stream::check_text_limit(text.chars().count(), max_text_chars)
        .map_err(|v| ApiError::invalid(v.to_string()).with_param("input"))?;
    let format = Format::parse(request.response_format.as_deref())?;
    if let Some(speed) = request.speed {
        if !(0.25..=4.0).contains(&speed) {
            return Err(
                ApiError::invalid(format!("speed {speed} is outside 0.25..=4.0"))
                    .with_param("speed"),
            );
        }
        if speed != 1.0 {
            return Err(ApiError::invalid(format!(
                "speed {speed} is not supported: this server's voices speak at speed 1.0"
            ))
            .with_param("speed"));
        }
    }
    match request.stream_format.as_deref() {
        None | Some("audio") => {}
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "stream_format {other:?} is not supported: the audio itself is streamed (\"audio\")"
            ))
            .with_param("stream_format"))
        }
    }
    tracing::debug!(model = ?request.model, "speech request");
    Ok(Speech {
        text,
        voice: voice_model(request.voice.as_ref())?,
        format,
    })
}

/// The worker model id a `voice` names: OpenAI's names (and none) are the
/// pool's default, anything else a voice of the workers' catalogue.
fn voice_model(voice: Option<&serde_json::Value>) -> Result<String, ApiError> {
    let name = match voice {
        None | Some(serde_json::Value::Null) => return Ok(String::new()),
        Some(serde_json::Value::String(name)) => name.as_str(),
        Some(serde_json::Value::Object(object)) => match object.get("id") {
            Some(serde_json::Value::String(id)) => id.as_str(),
            _ => {
                return Err(
                    ApiError::invalid("voice object has no string \"id\"").with_param("voice")
                )
            }
        },
        Some(_) => return Err(ApiError::invalid("voice must be a string").with_param("voice")),
    };
    let name = name.trim();
    if name.is_empty()
        || name.eq_ignore_ascii_case("default")
        || OPENAI_VOICES.iter().any(|v| v.eq_ignore_ascii_case(name))
    {
        Ok(String::new())
    } else {
        Ok(name.to_string())
    }
}

pub async fn create(
    State(app): State<Arc<Orchestrator>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!(
                "the request body is over {} bytes (--max-message-bytes)",
                app.settings.security.max_message_bytes
            ))
        } else {
            ApiError::invalid(rejection.body_text())
        }
    })?;
    let speech = parse(&body, app.settings.security.max_text_chars)?;
    let id = new_session_id();
    // Like a Speak without a session id: the worker session ends with the
    // turn, and the client's address counts against its session limit.
    let opener = Opener {
        owner: peer.map(|Extension(ConnectInfo(address))| address.ip()),
        implicit: true,
        one_shot: true,
    };
    let session = app
        .sessions
        .get_or_create(&id, &speech.voice, HashMap::new(), opener)
        .map_err(|error| ApiError::from_status(&error.to_status()))?;
    // Whatever ends the request (its end, an error, the client leaving
    // before the first frame), the session goes with it.
    let session_guard = OwnSession {
        app: Arc::clone(&app),
        id,
    };
    let mut frames = speak_stream(
        Arc::clone(&app),
        session,
        TextSource::Whole(speech.text),
        super::trace_of(&headers),
    )
    .map_err(|status| ApiError::from_status(&status))?;
    let first = match frames.next().await {
        Some(Ok(frame)) => frame,
        Some(Err(status)) => return Err(ApiError::from_status(&status)),
        None => {
            return Err(ApiError::from_status(&tonic::Status::internal(
                "the turn ended without a frame",
            )))
        }
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let format = speech.format;
    tokio::spawn(async move {
        let _session = session_guard;
        write_audio(format, first, frames, &tx).await;
    });
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        )],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}

/// Encodes the frames into the body until the final one, the turn's error
/// (sent as a body error, which aborts the response) or the client leaving
/// (a closed channel; dropping `frames` then stops the turn).
async fn write_audio(
    format: Format,
    first: AudioFrame,
    mut frames: impl tokio_stream::Stream<Item = Result<AudioFrame, tonic::Status>> + Unpin,
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let rate = u32::try_from(first.sample_rate).unwrap_or(0);
    let mut encoder = match Encoder::new(format, rate) {
        Ok(encoder) => encoder,
        Err(error) => {
            let _ = tx.send(Err(std::io::Error::other(error))).await;
            return;
        }
    };
    let mut next: Option<Result<AudioFrame, tonic::Status>> = Some(Ok(first));
    while let Some(item) = next {
        let result = item
            .map_err(|status: tonic::Status| status.message().to_string())
            .and_then(|frame| {
                let last = frame.is_final;
                let mut bytes = encoder.frame(&frame.audio_data)?;
                if last {
                    bytes.extend(encoder.finish()?);
                }
                Ok((bytes, last))
            });
        match result {
            Ok((bytes, last)) => {
                if !bytes.is_empty() && tx.send(Ok(Bytes::from(bytes))).await.is_err() {
                    return;
                }
                if last {
                    return;
                }
            }
            Err(message) => {
                tracing::warn!(%message, "speech turn failed mid-stream: response cut short");
                let _ = tx.send(Err(std::io::Error::other(message))).await;
                return;
            }
        }
        next = frames.next().await;
    }
}

/// Frames' PCM to the bytes of one format.
enum Encoder {
    Wav {
        rate: u32,
        header_sent: bool,
    },
    Pcm {
        resampler: Option<Box<StreamResampler>>,
    },
}

impl Encoder {
    fn new(format: Format, rate: u32) -> Result<Encoder, String> {
        if rate == 0 {
            return Err("the first frame carries no sample rate".to_string());
        }
        Ok(match format {
            Format::Wav => Encoder::Wav {
                rate,
                header_sent: false,
            },
            Format::Pcm => Encoder::Pcm {
                resampler: (rate != PCM_SAMPLE_RATE)
                    .then(|| StreamResampler::new(rate, PCM_SAMPLE_RATE).map(Box::new))
                    .transpose()
                    .map_err(|e| e.to_string())?,
            },
        })
    }

    fn frame(&mut self, pcm: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            Encoder::Wav { rate, header_sent } => {
                let mut out = Vec::with_capacity(wav::HEADER_BYTES + pcm.len());
                if !*header_sent {
                    out.extend_from_slice(&wav::streaming_header(*rate));
                    *header_sent = true;
                }
                out.extend_from_slice(pcm);
                Ok(out)
            }
            Encoder::Pcm { resampler: None } => Ok(pcm.to_vec()),
            Encoder::Pcm {
                resampler: Some(resampler),
            } => {
                let input = voxwire_dsp::i16_to_f32(&decode_pcm16(pcm));
                let output = resampler.push(&input).map_err(|e| e.to_string())?;
                Ok(pcm16_bytes(&output))
            }
        }
    }

    fn finish(&mut self) -> Result<Vec<u8>, String> {
        match self {
            Encoder::Pcm { resampler } => match resampler.take() {
                Some(resampler) => Ok(pcm16_bytes(&resampler.finish().map_err(|e| e.to_string())?)),
                None => Ok(Vec::new()),
            },
            Encoder::Wav { .. } => Ok(Vec::new()),
        }
    }
}

fn pcm16_bytes(samples: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(samples.len() * 2);
    encode_pcm16(&voxwire_dsp::f32_to_i16(samples), &mut out);
    out
}

/// The turn's session is the request's alone: closed with the response, on
/// the worker too, instead of waiting for idle reaping.
struct OwnSession {
    app: Arc<Orchestrator>,
    id: String,
}

impl Drop for OwnSession {
    fn drop(&mut self) {
        let Some(session) = self.app.sessions.remove(&self.id) else {
            return;
        };
        let app = Arc::clone(&self.app);
        // The binding's lock is free once the turn has stopped (its frames'
        // receiver is gone with the request).
        tokio::spawn(async move {
            let mut binding = session.tts.lock().await;
            app.tts.close_session(&mut binding).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_voices_and_none_mean_the_default_voice() {
        for voice in [
            None,
            Some(serde_json::json!("alloy")),
            Some(serde_json::json!("Nova")),
        ] {
            assert_eq!(voice_model(voice.as_ref()).expect("valid"), "");
        }
        assert_eq!(
            voice_model(Some(&serde_json::json!({"id": "joe"}))).expect("valid"),
            "joe"
        );
        assert!(voice_model(Some(&serde_json::json!(3))).is_err());
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        let param = |body: &str| parse(body.as_bytes(), 100).expect_err("refused").param;
        assert_eq!(param(r#"{"model":"tts-1"}"#), Some("input"));
        assert_eq!(param(r#"{"input":"  "}"#), Some("input"));
        assert_eq!(
            param(&format!(r#"{{"input":"{}"}}"#, "a".repeat(101))),
            Some("input")
        );
        assert_eq!(
            param(r#"{"input":"hi","response_format":"mp3"}"#),
            Some("response_format")
        );
        assert_eq!(
            param(r#"{"input":"hi","response_format":"xyz"}"#),
            Some("response_format")
        );
        assert_eq!(param(r#"{"input":"hi","speed":9}"#), Some("speed"));
        assert_eq!(
            param(r#"{"input":"hi","stream_format":"sse"}"#),
            Some("stream_format")
        );
        assert_eq!(param("not json"), None);
        let ok = parse(
            br#"{"model":"tts-1","input":"hi","voice":"alloy","response_format":"pcm","speed":1}"#,
            100,
        )
        .expect("valid");
        assert_eq!(ok.format, Format::Pcm);
    }

    #[test]
    fn pcm_is_resampled_to_24_khz() {
        let mut encoder = Encoder::new(Format::Pcm, 48_000).expect("encoder");
        let mut second = Vec::new();
        encode_pcm16(&vec![1000i16; 48_000], &mut second);
        let mut out = encoder.frame(&second).expect("frame");
        out.extend(encoder.finish().expect("finish"));
        let samples = out.len() / 2;
        assert!(
            (23_900..=24_100).contains(&samples),
            "{samples} samples for one second"
        );
    }
}
