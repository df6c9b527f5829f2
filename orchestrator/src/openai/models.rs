//! `GET /v1/models`: the names clients may send (OpenAI's, which select the
//! pools' defaults) and the voices and recognizers the pools serve, asked of
//! one SERVING worker of each kind.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use tonic::Request;
use voxwire_proto::stt::stt_service_client::SttServiceClient;
use voxwire_proto::stt::GetCapabilitiesRequest;
use voxwire_proto::tts::tts_service_client::TtsServiceClient;
use voxwire_proto::tts::ListModelsRequest;

use super::error::ApiError;
use crate::app::Orchestrator;

/// OpenAI's speech model names: each speaks with the TTS pool's default voice.
pub const SPEECH_ALIASES: &[&str] = &["tts-1", "tts-1-hd", "gpt-4o-mini-tts"];
/// OpenAI's transcription model names: each runs the STT pool's recognizer.
pub const TRANSCRIPTION_ALIASES: &[&str] =
    &["whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"];

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Model {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    /// Not in OpenAI's schema (clients ignore it): `tts` or `stt`.
    pub kind: &'static str,
}

fn model(id: impl Into<String>, kind: &'static str) -> Model {
    Model {
        id: id.into(),
        object: "model",
        created: 0,
        owned_by: "voxwire",
        kind,
    }
}

#[derive(Debug, Serialize)]
pub struct ModelList {
    object: &'static str,
    data: Vec<Model>,
}

pub async fn list(State(app): State<Arc<Orchestrator>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: all(&app).await,
    })
}

pub async fn retrieve(
    State(app): State<Arc<Orchestrator>>,
    Path(id): Path<String>,
) -> Result<Json<Model>, ApiError> {
    all(&app)
        .await
        .into_iter()
        .find(|m| m.id == id)
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found(format!("the model {id:?} does not exist"))
                .with_param("model")
                .with_code("model_not_found")
        })
}

/// The aliases, then what the workers name. A pool with nothing SERVING (or
/// a worker that does not answer in the call timeout) adds nothing: the
/// list is still an answer, and the aliases still work once it serves.
async fn all(app: &Orchestrator) -> Vec<Model> {
    let timeout = app.settings.dispatch.call_timeout;
    let (voices, recognizers) = tokio::join!(tts_models(app, timeout), stt_models(app, timeout));
    let mut models: Vec<Model> = SPEECH_ALIASES
        .iter()
        .map(|id| model(*id, "tts"))
        .chain(TRANSCRIPTION_ALIASES.iter().map(|id| model(*id, "stt")))
        .collect();
    for (id, kind) in voices
        .into_iter()
        .map(|id| (id, "tts"))
        .chain(recognizers.into_iter().map(|id| (id, "stt")))
    {
        if !models.iter().any(|m| m.id == id) {
            models.push(model(id, kind));
        }
    }
    models
}

async fn tts_models(app: &Orchestrator, timeout: Duration) -> Vec<String> {
    let Ok(channel) = app.tts.pool().any_channel(Duration::ZERO).await else {
        return Vec::new();
    };
    let mut request = Request::new(ListModelsRequest {});
    request.set_timeout(timeout);
    match TtsServiceClient::new(channel).list_models(request).await {
        Ok(response) => response
            .into_inner()
            .models
            .into_iter()
            .map(|m| m.model_id)
            .collect(),
        Err(status) => {
            tracing::debug!(%status, "ListModels for /v1/models failed");
            Vec::new()
        }
    }
}

async fn stt_models(app: &Orchestrator, timeout: Duration) -> Vec<String> {
    let Ok(channel) = app.stt.pool().any_channel(Duration::ZERO).await else {
        return Vec::new();
    };
    let mut request = Request::new(GetCapabilitiesRequest {});
    request.set_timeout(timeout);
    match SttServiceClient::new(channel)
        .get_capabilities(request)
        .await
    {
        Ok(response) => response.into_inner().resident_models,
        Err(status) => {
            tracing::debug!(%status, "GetCapabilities for /v1/models failed");
            Vec::new()
        }
    }
}
