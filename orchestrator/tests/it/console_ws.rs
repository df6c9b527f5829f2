//! The web console's server side without a browser: the embedded page, the
//! Origin check, and a conversation over `/ws` against tone workers (the
//! same Converse core as gRPC: state changes, audio, barge-in).

use std::time::Duration;

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use voxwire_orchestrator::config::Args;
use voxwire_tts_worker::server::Args as WorkerArgs;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(orch: &Orchestrator, origin: &str) -> Result<Socket, String> {
    let mut request = format!("ws://{}/ws", orch.running.http_addr)
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("origin", HeaderValue::from_str(origin).expect("origin"));
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
        .map_err(|e| e.to_string())
}

/// The next JSON message whose type is `kind`, skipping others (audio
/// frames are counted in `frames`).
async fn next_of(socket: &mut Socket, kind: &str, frames: &mut usize) -> Value {
    let found = tokio::time::timeout(WAIT, async {
        while let Some(message) = socket.next().await {
            match message.expect("socket message") {
                Message::Text(text) => {
                    let value: Value = serde_json::from_str(&text).expect("JSON");
                    if value["type"] == kind {
                        return value;
                    }
                }
                Message::Binary(data) => {
                    assert!(data.len() >= 12, "audio header");
                    assert_eq!(data[0], 1, "audio kind");
                    *frames += 1;
                }
                _ => {}
            }
        }
        panic!("socket closed before a {kind} message");
    })
    .await;
    found.unwrap_or_else(|_| panic!("no {kind} message within {WAIT:?}"))
}

#[tokio::test]
async fn page_is_served_with_its_stable_ids() {
    let _gate = crate::GATE.enter(module_path!());
    let orch = orchestrator(tts_args(&[])).await;
    let (status, body) = orch.http_get("/").await;
    assert_eq!(status, 200);
    for id in [
        "say-text",
        "\"say\"",
        "\"mic\"",
        "\"echo\"",
        "\"interrupt\"",
        "\"transcript\"",
        "\"workers\"",
    ] {
        assert!(body.contains(id), "page has {id}");
    }
    for asset in [
        "/app.js",
        "/style.css",
        "/resampler.js",
        "/capture-worklet.js",
        "/playback-worklet.js",
    ] {
        let (status, body) = orch.http_get(asset).await;
        assert_eq!(status, 200, "{asset}");
        assert!(!body.is_empty(), "{asset}");
    }
    let (_, app) = orch.http_get("/app.js").await;
    for stat in ["framesPlayed", "lastFirstAudioMs", "lastInterruptMs"] {
        assert!(app.contains(stat), "window.voxwire.stats.{stat}");
    }
}

#[tokio::test]
async fn cross_origin_websocket_is_refused() {
    let _gate = crate::GATE.enter(module_path!());
    let orch = orchestrator(tts_args(&[])).await;
    let refused = open(&orch, "http://evil.example").await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("403")),
        "{:?}",
        refused.map(|_| ())
    );
    let same = format!("http://{}", orch.running.http_addr);
    assert!(open(&orch, &same).await.is_ok());
}

/// Regression (DNS rebinding): with no token, a page at a name its owner
/// had pointed at the orchestrator's address was let in, since its Origin
/// and Host agree. It is refused; the same page by IP address is not.
#[tokio::test]
async fn a_rebound_host_name_is_refused_without_a_token() {
    let _gate = crate::GATE.enter(module_path!());
    let orch = orchestrator(tts_args(&[])).await;
    let port = orch.running.http_addr.port();
    let mut request = format!("ws://{}/ws", orch.running.http_addr)
        .into_client_request()
        .expect("request");
    let rebound = format!("attacker.example:{port}");
    let headers = request.headers_mut();
    headers.insert("host", HeaderValue::from_str(&rebound).expect("host"));
    headers.insert(
        "origin",
        HeaderValue::from_str(&format!("http://{rebound}")).expect("origin"),
    );
    let refused = tokio_tungstenite::connect_async(request).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("403")),
        "{:?}",
        refused.map(|_| ())
    );
    let by_address = format!("http://{}", orch.running.http_addr);
    assert!(open(&orch, &by_address).await.is_ok());
}

/// Behind a proxy that rewrites Host, the page's public origin differs from
/// the Host the orchestrator sees: `--console-origins` lets exactly those in.
#[tokio::test]
async fn listed_console_origins_are_let_in_and_no_others() {
    let _gate = crate::GATE.enter(module_path!());
    let orch = orchestrator(Args {
        console_origins: "https://Voice.example.com/".into(),
        ..tts_args(&[])
    })
    .await;
    assert!(open(&orch, "https://voice.example.com").await.is_ok());
    let refused = open(&orch, "https://voice.example.com.evil.example").await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("403")),
        "{:?}",
        refused.map(|_| ())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_drives_a_conversation_with_barge_in() {
    let _gate = crate::GATE.enter(module_path!());
    let worker = tone_worker(WorkerArgs {
        // Paced at real time: the long turn is still running when it is interrupted.
        realtime: true,
        ..WorkerArgs::tone_for_tests()
    })
    .await;
    let orch = orchestrator(tts_args(&[worker.address()])).await;
    orch.wait_ready().await;
    let mut socket = open(&orch, &format!("http://{}", orch.running.http_addr))
        .await
        .expect("socket");
    let mut frames = 0;

    // Before any config the page already gets the workers.
    let workers = next_of(&mut socket, "workers", &mut frames).await;
    assert_eq!(workers["workers"][0]["address"], worker.address());
    assert_eq!(workers["workers"][0]["state"], "SERVING");

    // Anything but config first is refused, and the socket stays usable.
    socket
        .send(Message::Text(
            json!({"type": "say", "text": "x"}).to_string().into(),
        ))
        .await
        .expect("send");
    let error = next_of(&mut socket, "error", &mut frames).await;
    assert_eq!(error["status"], "INVALID_ARGUMENT");

    socket
        .send(Message::Text(json!({"type": "config"}).to_string().into()))
        .await
        .expect("send");
    let hello = next_of(&mut socket, "hello", &mut frames).await;
    let session = hello["session_id"]
        .as_str()
        .expect("session id")
        .to_string();
    assert!(
        orch.running.app.sessions.get(&session).is_some(),
        "one session table"
    );
    let listening = next_of(&mut socket, "state", &mut frames).await;
    assert_eq!(
        (listening["from"].clone(), listening["to"].clone()),
        (json!("IDLE"), json!("LISTENING"))
    );

    socket
        .send(Message::Text(
            json!({"type": "say", "text": "One short sentence."})
                .to_string()
                .into(),
        ))
        .await
        .expect("send");
    let speaking = next_of(&mut socket, "state", &mut frames).await;
    assert_eq!(speaking["to"], "SPEAKING");
    let done = next_of(&mut socket, "state", &mut frames).await;
    assert_eq!(
        (done["from"].clone(), done["to"].clone()),
        (json!("SPEAKING"), json!("LISTENING"))
    );
    assert!(frames > 0, "audio frames arrived as binary messages");

    // Barge-in through the same machinery as gRPC Converse.
    let long = "A sentence that goes on for a while. ".repeat(20);
    socket
        .send(Message::Text(
            json!({"type": "say", "text": long}).to_string().into(),
        ))
        .await
        .expect("send");
    let speaking = next_of(&mut socket, "state", &mut frames).await;
    assert_eq!(speaking["to"], "SPEAKING");
    let before = frames;
    while frames < before + 3 {
        // Worker tables (in-flight counts move) may come in between.
        if let Message::Binary(_) = socket.next().await.expect("open").expect("message") {
            frames += 1;
        }
    }
    socket
        .send(Message::Text(
            json!({"type": "interrupt"}).to_string().into(),
        ))
        .await
        .expect("send");
    let interrupted = next_of(&mut socket, "interrupted", &mut frames).await;
    assert!(interrupted["interrupt_to_silence_us"].as_i64().is_some());
    let state = next_of(&mut socket, "state", &mut frames).await;
    assert_eq!(state["to"], "LISTENING");
    tokio::time::timeout(WAIT, async {
        while worker.running.worker.load_metrics()["active_streams"] > 0.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the worker's synthesis ended after the interrupt");

    // Closing the page ends the session.
    socket.close(None).await.expect("close");
    tokio::time::timeout(WAIT, async {
        while orch.running.app.sessions.get(&session).is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the session ends with its page");
}

/// Reads the event stream until `needle` appears.
async fn read_until(stream: &mut tokio::net::TcpStream, seen: &mut String, needle: &str) {
    use tokio::io::AsyncReadExt;
    let found = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        while !seen.contains(needle) {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "stream ended");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await;
    assert!(found.is_ok(), "no {needle:?} in {seen:?}");
}

#[tokio::test]
async fn worker_events_stream_the_table_again_when_a_worker_goes() {
    let _gate = crate::GATE.enter(module_path!());
    use tokio::io::AsyncWriteExt;
    let mut worker = tone_worker(WorkerArgs::tone_for_tests()).await;
    let orch = orchestrator(tts_args(&[worker.address()])).await;
    orch.wait_ready().await;
    let mut stream = tokio::net::TcpStream::connect(orch.running.http_addr)
        .await
        .expect("connect");
    stream
        .write_all(b"GET /api/workers/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "\"state\":\"SERVING\"").await;
    let _ = worker.stop.take().map(|stop| stop.send(()));
    read_until(&mut stream, &mut seen, "\"state\":\"NOT_SERVING\"").await;
}
