//! The console's WebSocket: one per page session, translated message by
//! message into the `voxwire.v1.Converse` requests and events, and run by
//! [`converse::open`] — the same sessions, turns and barge-in as gRPC.
//!
//! Browser to orchestrator: JSON text messages
//! `{"type":"config","input_sample_rate":16000,"partial_results":true,"echo":false}`
//! (first, once), `{"type":"say","text":"..."}`, `{"type":"interrupt"}`,
//! `{"type":"end_audio"}`; binary messages are microphone audio, 16-bit
//! little-endian mono PCM at the configured rate.
//!
//! Orchestrator to browser: JSON `hello` (the session id), `workers` (the
//! pool table, again on every change), `state`, `transcript`, `error` (a
//! failed turn with its status), `interrupted`, `ended`; binary messages are
//! audio: a 12-byte header (kind 1, flags with bit 0 = final frame, two
//! reserved bytes, turn id u32 LE, sample rate u32 LE), then the PCM.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};
use voxwire_proto::voxwire::v1::{
    converse_event, converse_request, ConverseConfig, ConverseEvent, ConverseRequest, EndOfAudio,
    Interrupt, SessionState,
};

use crate::app::Orchestrator;
use crate::converse;
use crate::trace::TraceContext;

/// Larger than any sane microphone chunk or sentence; bounds what one
/// message can make the orchestrator buffer.
const MAX_MESSAGE: usize = 1 << 20;

/// Binary audio header: kind, flags, two reserved bytes, turn, rate.
pub const AUDIO_HEADER: usize = 12;
const AUDIO_KIND: u8 = 1;
const FLAG_FINAL: u8 = 1;

/// What the page sends as text.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    Config {
        #[serde(default)]
        session_id: String,
        #[serde(default = "default_rate")]
        input_sample_rate: i32,
        #[serde(default = "yes")]
        partial_results: bool,
        #[serde(default)]
        echo: bool,
        #[serde(default)]
        model_id: String,
        #[serde(default)]
        language: String,
    },
    Say {
        text: String,
    },
    Interrupt,
    EndAudio,
}

fn default_rate() -> i32 {
    16_000
}

fn yes() -> bool {
    true
}

/// `GET /ws`: upgrades when the Origin is this host or one of
/// `--console-origins` (browsers always send one; other clients may omit it).
pub async fn upgrade(
    State(app): State<Arc<Orchestrator>>,
    uri: Uri,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let origin = crate::auth::check_origin(
        &headers,
        uri.authority().map(|a| a.as_str()),
        &app.settings.security.console_origins,
        app.settings.security.auth_token.is_some(),
    );
    if let Err(why) = origin {
        tracing::warn!(%why, "console WebSocket refused");
        return (StatusCode::FORBIDDEN, why).into_response();
    }
    ws.max_message_size(MAX_MESSAGE)
        .on_upgrade(move |socket| bridge(app, socket))
}

/// Parses one text message of the page.
pub fn parse(text: &str) -> Result<ClientMessage, Status> {
    serde_json::from_str(text)
        .map_err(|e| Status::invalid_argument(format!("console message not understood: {e}")))
}

fn to_request(message: ClientMessage) -> ConverseRequest {
    use converse_request::Request;
    let request = match message {
        ClientMessage::Config {
            session_id,
            input_sample_rate,
            partial_results,
            echo,
            model_id,
            language,
        } => Request::Config(ConverseConfig {
            session_id,
            input_sample_rate,
            partial_results,
            echo,
            model_id,
            language,
        }),
        ClientMessage::Say { text } => Request::Say(text),
        ClientMessage::Interrupt => Request::Interrupt(Interrupt {}),
        ClientMessage::EndAudio => Request::EndOfAudio(EndOfAudio {}),
    };
    ConverseRequest {
        request: Some(request),
    }
}

/// A google.rpc.Code as its name is written (`RESOURCE_EXHAUSTED`).
fn code_name(code: i32) -> String {
    let camel = format!("{:?}", Code::from_i32(code));
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn state_name(state: i32) -> &'static str {
    SessionState::try_from(state)
        .map_or("SESSION_STATE_UNSPECIFIED", |s| s.as_str_name())
        .trim_start_matches("SESSION_STATE_")
}

fn status_message(status: &Status) -> Message {
    Message::Text(
        json!({
            "type": "ended",
            "code": status.code() as i32,
            "status": code_name(status.code() as i32),
            "message": status.message(),
        })
        .to_string()
        .into(),
    )
}

/// One event of the conversation as the page receives it.
pub fn event_message(event: ConverseEvent) -> Option<Message> {
    use converse_event::Event;
    let turn = event.turn_id;
    let text = match event.event? {
        Event::Audio(frame) => {
            let mut data = Vec::with_capacity(AUDIO_HEADER + frame.audio_data.len());
            data.push(AUDIO_KIND);
            data.push(if frame.is_final { FLAG_FINAL } else { 0 });
            data.extend_from_slice(&[0, 0]);
            data.extend_from_slice(&u32::try_from(turn).unwrap_or(u32::MAX).to_le_bytes());
            data.extend_from_slice(&u32::try_from(frame.sample_rate).unwrap_or(0).to_le_bytes());
            data.extend_from_slice(&frame.audio_data);
            return Some(Message::Binary(Bytes::from(data)));
        }
        Event::Transcript(t) => json!({
            "type": "transcript",
            "turn": turn,
            "utterance_id": t.utterance_id,
            "text": t.text,
            "is_final": t.is_final,
            "start_ms": t.start_ms,
            "end_ms": t.end_ms,
        }),
        Event::State(change) => json!({
            "type": "state",
            "turn": turn,
            "from": state_name(change.from),
            "to": state_name(change.to),
        }),
        Event::Error(error) => json!({
            "type": "error",
            "turn": turn,
            "code": error.code,
            "status": code_name(error.code),
            "message": error.message,
        }),
        Event::Interrupted(i) => json!({
            "type": "interrupted",
            "turn": turn,
            "interrupt_to_silence_us": i.interrupt_to_silence_us,
            "frames_dropped": i.frames_dropped,
        }),
    };
    Some(Message::Text(text.to_string().into()))
}

fn error_message(status: &Status) -> Message {
    Message::Text(
        json!({
            "type": "error",
            "turn": 0,
            "code": status.code() as i32,
            "status": code_name(status.code() as i32),
            "message": status.message(),
        })
        .to_string()
        .into(),
    )
}

/// Runs one page session: the config first, then requests in and events,
/// audio and worker tables out, until either side ends.
async fn bridge(app: Arc<Orchestrator>, socket: WebSocket) {
    let (mut sink, mut source) = socket.split();
    let mut workers = Box::pin(super::worker_updates(Arc::clone(&app)));

    // The page is told the workers even before (or without) a conversation,
    // so a pool with no SERVING worker shows at once.
    let config = loop {
        tokio::select! {
            message = source.next() => match message {
                Some(Ok(Message::Text(text))) => match parse(&text) {
                    Ok(config @ ClientMessage::Config { .. }) => break config,
                    Ok(_) => {
                        let status = Status::invalid_argument("the first console message is config");
                        let _ = sink.send(error_message(&status)).await;
                    }
                    Err(status) => {
                        let _ = sink.send(error_message(&status)).await;
                    }
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            Some(table) = workers.next() => {
                if sink.send(workers_message(&table)).await.is_err() {
                    return;
                }
            }
        }
    };

    let (requests, requests_rx) = mpsc::channel::<Result<ConverseRequest, Status>>(64);
    // Cannot fail: the receiver is held just below.
    let _ = requests.send(Ok(to_request(config))).await;
    let opened = match converse::open(
        Arc::clone(&app),
        ReceiverStream::new(requests_rx),
        TraceContext::new_root(),
    )
    .await
    {
        Ok(opened) => opened,
        Err(status) => {
            let _ = sink.send(status_message(&status)).await;
            let _ = sink.close().await;
            return;
        }
    };
    let hello = json!({"type": "hello", "session_id": opened.session_id});
    if sink
        .send(Message::Text(hello.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    let mut events = opened.events;
    loop {
        tokio::select! {
            message = source.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let request = match parse(&text) {
                        Ok(ClientMessage::Config { .. }) => Err(Status::invalid_argument(
                            "config comes once, first; reconnect to change it",
                        )),
                        Ok(message) => Ok(to_request(message)),
                        Err(status) => Err(status),
                    };
                    match request {
                        Ok(request) => {
                            if requests.send(Ok(request)).await.is_err() {
                                break;
                            }
                        }
                        Err(status) => {
                            if sink.send(error_message(&status)).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                Some(Ok(Message::Binary(pcm))) => {
                    let audio = ConverseRequest {
                        request: Some(converse_request::Request::Audio(pcm)),
                    };
                    if requests.send(Ok(audio)).await.is_err() {
                        break;
                    }
                }
                // The page went away: dropping the requests and the events
                // ends the conversation and cancels its turns.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            event = events.next() => match event {
                Some(Ok(event)) => {
                    if let Some(message) = event_message(event) {
                        if sink.send(message).await.is_err() {
                            break;
                        }
                    }
                }
                Some(Err(status)) => {
                    let _ = sink.send(status_message(&status)).await;
                    break;
                }
                None => {
                    let ended = Status::ok("conversation ended");
                    let _ = sink.send(status_message(&ended)).await;
                    break;
                }
            },
            Some(table) = workers.next() => {
                if sink.send(workers_message(&table)).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = sink.close().await;
}

fn workers_message(table: &[crate::endpoint::EndpointSnapshot]) -> Message {
    Message::Text(
        json!({"type": "workers", "workers": table})
            .to_string()
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use voxwire_proto::tts::AudioFrame;

    #[test]
    fn page_messages_become_converse_requests() {
        use converse_request::Request;
        let config = to_request(parse(r#"{"type":"config","echo":true}"#).unwrap());
        let Some(Request::Config(config)) = config.request else {
            panic!("config expected");
        };
        assert!(config.echo && config.partial_results);
        assert_eq!(config.input_sample_rate, 16_000);
        let say = to_request(parse(r#"{"type":"say","text":"hi"}"#).unwrap());
        assert_eq!(say.request, Some(Request::Say("hi".into())));
        assert!(parse(r#"{"type":"shout"}"#).is_err());
        assert!(parse("not json").is_err());
    }

    #[test]
    fn audio_goes_out_binary_with_its_header() {
        let event = ConverseEvent {
            turn_id: 7,
            event: Some(converse_event::Event::Audio(AudioFrame {
                audio_data: Bytes::from_static(&[1, 2, 3, 4]),
                sample_rate: 48_000,
                is_final: true,
                ..Default::default()
            })),
        };
        let Some(Message::Binary(data)) = event_message(event) else {
            panic!("binary expected");
        };
        assert_eq!(data[0], AUDIO_KIND);
        assert_eq!(data[1], FLAG_FINAL);
        assert_eq!(u32::from_le_bytes(data[4..8].try_into().unwrap()), 7);
        assert_eq!(u32::from_le_bytes(data[8..12].try_into().unwrap()), 48_000);
        assert_eq!(&data[AUDIO_HEADER..], &[1, 2, 3, 4]);
    }

    #[test]
    fn status_names_are_grpc_names() {
        assert_eq!(code_name(Code::Unavailable as i32), "UNAVAILABLE");
        assert_eq!(
            code_name(Code::ResourceExhausted as i32),
            "RESOURCE_EXHAUSTED"
        );
        assert_eq!(state_name(SessionState::BargedIn as i32), "BARGED_IN");
    }
}
