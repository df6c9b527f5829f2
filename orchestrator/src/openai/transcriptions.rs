//! `POST /v1/audio/transcriptions`: a WAV upload (multipart `file`) as one
//! `Transcribe` stream ([`crate::api::recognize_stream`]: the same request
//! validation, admission, dispatch and retries): config, then the audio in
//! chunks within `--max-chunk-bytes`; the finals become the reply.
//!
//! `model` selects nothing (the STT pool has one recognizer), `prompt` and
//! `temperature` are accepted and not used (the recognizer takes neither),
//! `language` goes to the worker.

use std::sync::Arc;

use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::{Multipart, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio_stream::StreamExt;
use voxwire_proto::audio::{encode_pcm16, STT_SAMPLE_RATES};
use voxwire_proto::stt::{
    recognize_request, AudioChunk, RecognitionConfig, RecognizeRequest, TranscriptEvent,
};
use voxwire_proto::stt_stream::SttRequestValidator;

use super::error::ApiError;
use super::wav::{self, Clip};
use crate::api::recognize_stream;
use crate::app::Orchestrator;
use crate::sessions::new_session_id;

/// The rate uploads outside the recognizers' range are converted to.
const FALLBACK_RATE: u32 = 16_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Text,
    VerboseJson,
    Srt,
    Vtt,
}

impl Format {
    fn parse(name: Option<&str>) -> Result<Format, ApiError> {
        match name.map(str::to_ascii_lowercase).as_deref() {
            None | Some("json") => Ok(Format::Json),
            Some("text") => Ok(Format::Text),
            Some("verbose_json") => Ok(Format::VerboseJson),
            Some("srt") => Ok(Format::Srt),
            Some("vtt") => Ok(Format::Vtt),
            Some(other) => Err(ApiError::invalid(format!(
                "unknown response_format {other:?}: use json, text, verbose_json, srt or vtt"
            ))
            .with_param("response_format")),
        }
    }
}

/// The form's fields this server reads.
#[derive(Debug, Default)]
struct Form {
    file: Option<Vec<u8>>,
    language: Option<String>,
    response_format: Option<String>,
    stream: Option<String>,
}

fn multipart_error(error: MultipartError, limit: usize) -> ApiError {
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(format!(
            "the upload is over {limit} bytes (--openai-max-upload-bytes)"
        ))
        .with_param("file")
    } else {
        ApiError::invalid(format!(
            "the multipart body cannot be read: {}",
            error.body_text()
        ))
    }
}

async fn read_form(mut multipart: Multipart, limit: usize) -> Result<Form, ApiError> {
    let mut form = Form::default();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(e, limit))?
    {
        let name = field.name().unwrap_or_default().to_string();
        if name == "file" {
            let bytes = field.bytes().await.map_err(|e| multipart_error(e, limit))?;
            form.file = Some(bytes.to_vec());
            continue;
        }
        // Unknown fields (timestamp_granularities[], chunking_strategy...)
        // are read past, as OpenAI's optional extras.
        let value = field.text().await.map_err(|e| multipart_error(e, limit))?;
        match name.as_str() {
            "language" => form.language = Some(value),
            "response_format" => form.response_format = Some(value),
            "stream" => form.stream = Some(value),
            "model" | "prompt" | "temperature" => {
                tracing::debug!(field = %name, %value, "transcription option not used");
            }
            _ => {}
        }
    }
    Ok(form)
}

pub async fn create(
    State(app): State<Arc<Orchestrator>>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let limit = app.settings.openai.max_upload_bytes;
    let multipart = multipart.map_err(|rejection| {
        ApiError::invalid(format!(
            "send the file as multipart/form-data: {}",
            rejection.body_text()
        ))
    })?;
    let form = read_form(multipart, limit).await?;
    let format = Format::parse(form.response_format.as_deref())?;
    if form
        .stream
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("true"))
    {
        return Err(
            ApiError::invalid("stream=true is not supported: the transcript comes whole")
                .with_param("stream"),
        );
    }
    let file = form
        .file
        .ok_or_else(|| ApiError::invalid("missing required parameter: file").with_param("file"))?;
    if file.is_empty() {
        return Err(ApiError::invalid("the file is empty").with_param("file"));
    }
    let clip = wav::decode(&file).map_err(|e| {
        ApiError::invalid(e.to_string())
            .with_param("file")
            .with_code("invalid_file_format")
    })?;
    let clip = in_recognizer_range(clip)?;
    let language = form.language.unwrap_or_default();
    let requests = requests(
        &clip,
        &language,
        app.settings.security.audio.max_chunk_bytes,
    );
    // The stream's rules (duration, chunk size), checked before a worker is
    // involved with the validator the relay uses on every request.
    let mut validator = SttRequestValidator::new(app.settings.security.audio);
    for request in &requests {
        validator
            .accept(request)
            .map_err(|v| ApiError::from_status(&v.into()).with_param("file"))?;
    }
    let mut requests = requests.into_iter();
    let Some(first) = requests.next() else {
        return Err(ApiError::invalid("the file holds no audio").with_param("file"));
    };
    let events = recognize_stream(
        Arc::clone(&app),
        first,
        tokio_stream::iter(requests.map(Ok)),
        super::trace_of(&headers),
    )
    .map_err(|status| ApiError::from_status(&status))?;
    let finals = finals(events).await?;
    Ok(reply(format, &finals, &language, clip.seconds()))
}

/// Whisper takes 8 to 48 kHz; other rates are converted first.
fn in_recognizer_range(clip: Clip) -> Result<Clip, ApiError> {
    if STT_SAMPLE_RATES.contains(&clip.sample_rate) {
        return Ok(clip);
    }
    let converted = voxwire_dsp::resample(
        &voxwire_dsp::i16_to_f32(&clip.samples),
        clip.sample_rate,
        FALLBACK_RATE,
    )
    .map_err(|e| {
        ApiError::invalid(format!(
            "the file's {} Hz audio cannot be converted: {e}",
            clip.sample_rate
        ))
        .with_param("file")
    })?;
    Ok(Clip {
        samples: voxwire_dsp::f32_to_i16(&converted),
        sample_rate: FALLBACK_RATE,
    })
}

/// The Recognize stream of a whole clip: config, then chunks of at most a
/// second and at most `max_chunk_bytes`, the last one ending the audio.
fn requests(clip: &Clip, language: &str, max_chunk_bytes: usize) -> Vec<RecognizeRequest> {
    let per_chunk = (max_chunk_bytes / 2).min(clip.sample_rate as usize).max(1);
    let mut requests = vec![RecognizeRequest {
        request: Some(recognize_request::Request::Config(RecognitionConfig {
            session_id: new_session_id(),
            sample_rate: i32::try_from(clip.sample_rate).unwrap_or(i32::MAX),
            language: language.to_string(),
            partial_results: false,
            model_id: String::new(),
        })),
    }];
    let chunks = clip.samples.chunks(per_chunk);
    let count = chunks.len();
    for (index, samples) in chunks.enumerate() {
        let mut audio = Vec::with_capacity(samples.len() * 2);
        encode_pcm16(samples, &mut audio);
        requests.push(RecognizeRequest {
            request: Some(recognize_request::Request::Audio(AudioChunk {
                audio_data: audio.into(),
                is_final: index + 1 == count,
            })),
        });
    }
    requests
}

/// The final events, in utterance order; the stream's error, if any.
async fn finals(
    mut events: impl tokio_stream::Stream<Item = Result<TranscriptEvent, tonic::Status>> + Unpin,
) -> Result<Vec<TranscriptEvent>, ApiError> {
    let mut finals = Vec::new();
    while let Some(event) = events.next().await {
        let event = event.map_err(|status| ApiError::from_status(&status))?;
        if event.is_final && !event.text.trim().is_empty() {
            finals.push(event);
        }
    }
    finals.sort_by_key(|e| e.utterance_id);
    Ok(finals)
}

fn seconds(ms: i64) -> f64 {
    ms.max(0) as f64 / 1000.0
}

fn reply(format: Format, finals: &[TranscriptEvent], language: &str, duration: f64) -> Response {
    let text = finals
        .iter()
        .map(|e| e.text.trim())
        .collect::<Vec<_>>()
        .join(" ");
    let plain = |body: String| {
        ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
    };
    match format {
        Format::Json => Json(serde_json::json!({ "text": text })).into_response(),
        Format::Text => plain(format!("{text}\n")),
        Format::VerboseJson => {
            let segments: Vec<serde_json::Value> = finals
                .iter()
                .enumerate()
                .map(|(id, event)| {
                    let mut segment = serde_json::json!({
                        "id": id,
                        // Whisper's seek is in 10 ms frames.
                        "seek": event.start_ms.max(0) / 10,
                        "start": seconds(event.start_ms),
                        "end": seconds(event.end_ms),
                        "text": event.text.trim(),
                        "tokens": [],
                    });
                    // The worker's confidence is a probability: its log is
                    // the nearest to OpenAI's average log-probability.
                    if event.confidence > 0.0 && event.confidence <= 1.0 {
                        segment["avg_logprob"] = f64::from(event.confidence).ln().into();
                    }
                    segment
                })
                .collect();
            Json(serde_json::json!({
                "task": "transcribe",
                "language": if language.is_empty() { "en" } else { language },
                "duration": duration,
                "text": text,
                "segments": segments,
            }))
            .into_response()
        }
        Format::Srt => plain(
            finals
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    format!(
                        "{}\n{} --> {}\n{}\n\n",
                        i + 1,
                        timestamp(e.start_ms, ','),
                        timestamp(e.end_ms, ','),
                        e.text.trim()
                    )
                })
                .collect(),
        ),
        Format::Vtt => plain(
            std::iter::once("WEBVTT\n\n".to_string())
                .chain(finals.iter().map(|e| {
                    format!(
                        "{} --> {}\n{}\n\n",
                        timestamp(e.start_ms, '.'),
                        timestamp(e.end_ms, '.'),
                        e.text.trim()
                    )
                }))
                .collect(),
        ),
    }
}

/// `HH:MM:SS,mmm` (SRT) or `HH:MM:SS.mmm` (WebVTT).
fn timestamp(ms: i64, separator: char) -> String {
    let ms = ms.max(0);
    format!(
        "{:02}:{:02}:{:02}{separator}{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clip_becomes_config_then_bounded_chunks_ending_the_audio() {
        let clip = Clip {
            samples: vec![7; 40_000],
            sample_rate: 16_000,
        };
        let requests = requests(&clip, "en", 10_000);
        let mut validator = SttRequestValidator::new(voxwire_proto::stt_stream::SttLimits {
            max_chunk_bytes: 10_000,
            max_stream_seconds: 10,
        });
        for request in &requests {
            validator.accept(request).expect("valid stream");
        }
        assert!(validator.ended());
        assert_eq!(requests.len(), 1 + 8);
    }

    #[test]
    fn timestamps_in_both_styles() {
        assert_eq!(timestamp(3_723_456, ','), "01:02:03,456");
        assert_eq!(timestamp(-5, '.'), "00:00:00.000");
    }

    #[test]
    fn rates_outside_the_recognizers_range_are_converted() {
        let clip = in_recognizer_range(Clip {
            samples: vec![0; 96_000],
            sample_rate: 96_000,
        })
        .expect("converted");
        assert_eq!(clip.sample_rate, FALLBACK_RATE);
        assert!((15_900..=16_100).contains(&clip.samples.len()));
    }
}
