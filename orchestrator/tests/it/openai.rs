//! The OpenAI-compatible audio API on the side port: each route against tone
//! TTS workers and the scripted STT server, bad input on every route (an
//! OpenAI error body, the right status, the server still serving), the
//! token, the Origin rule and the flag that turns it off.

use crate::common::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use voxwire_orchestrator::config::Args;
use voxwire_orchestrator::metrics;
use voxwire_orchestrator::openai::wav;
use voxwire_service::credentials::Secret;
use voxwire_tts_worker::server::Args as WorkerArgs;

struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body is an OpenAI error with this status (and param, if given).
    fn assert_error(&self, status: u16, param: Option<&str>, what: &str) {
        assert_eq!(self.status, status, "{what}: {}", self.text());
        let body = self.json();
        let error = &body["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: a message: {body}"
        );
        assert!(error["type"].is_string(), "{what}: a type: {body}");
        assert!(
            error.get("param").is_some(),
            "{what}: param present: {body}"
        );
        assert!(error.get("code").is_some(), "{what}: code present: {body}");
        if let Some(param) = param {
            assert_eq!(error["param"], param, "{what}: {body}");
        }
    }
}

struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl Http {
    fn new(orch: &Orchestrator) -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{}", orch.running.http_addr),
        }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body.into())).expect("request");
        let response = tokio::time::timeout(WAIT, self.client.request(request))
            .await
            .expect("answered in time")
            .expect("HTTP exchange");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = tokio::time::timeout(WAIT, response.into_body().collect())
            .await
            .expect("body in time")
            .expect("whole body")
            .to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, &[], Bytes::new()).await
    }

    async fn speech(&self, body: serde_json::Value) -> Reply {
        self.send(
            "POST",
            "/v1/audio/speech",
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await
    }

    async fn transcription(&self, fields: &[(&str, &str)], file: Option<&[u8]>) -> Reply {
        let (content_type, body) = multipart(fields, file);
        self.send(
            "POST",
            "/v1/audio/transcriptions",
            &[("content-type", &content_type)],
            body,
        )
        .await
    }
}

const BOUNDARY: &str = "voxwire-test-boundary";

/// A multipart/form-data body: text fields, and `file` when given.
fn multipart(fields: &[(&str, &str)], file: Option<&[u8]>) -> (String, Vec<u8>) {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    if let Some(file) = file {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"clip.wav\"\r\n\
                 Content-Type: audio/wav\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(file);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={BOUNDARY}"), body)
}

/// A 16-bit mono WAV of `seconds` of a quiet ramp at `rate`.
fn wav_file(rate: u32, seconds: f64) -> Vec<u8> {
    let mut cursor = std::io::Cursor::new(Vec::new());
    {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut writer = hound::WavWriter::new(&mut cursor, spec).expect("writer");
        for i in 0..(f64::from(rate) * seconds) as usize {
            writer.write_sample((i % 200) as i16).expect("sample");
        }
        writer.finalize().expect("finalize");
    }
    cursor.into_inner()
}

async fn stack(args: Args) -> (ToneWorker, FakeServer, Orchestrator) {
    let worker = tone_worker(WorkerArgs::tone_for_tests()).await;
    let stt = fake_stt(FakeStt::default()).await;
    let orch = orchestrator(Args {
        tts: worker.address(),
        stt: stt.address(),
        ..args
    })
    .await;
    orch.wait_ready().await;
    wait_pool(orch.running.app.stt.pool(), "STT serving", |all| {
        serving_count(all) == 1
    })
    .await;
    (worker, stt, orch)
}

/// Waits (following pool changes) until the orchestrator holds no session
/// and the worker none either: a speech request's session is its own.
async fn wait_sessions_closed(orch: &Orchestrator, worker: &ToneWorker) {
    let waited = tokio::time::timeout(WAIT, async {
        let mut changes = orch.tts_pool().subscribe();
        loop {
            changes.borrow_and_update();
            if orch.running.app.sessions.is_empty() && worker.active_sessions() == 0.0 {
                return;
            }
            // Load polls (every 100 ms in tests) wake the pool.
            let _ = changes.changed().await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "sessions closed: orchestrator {}, worker {}",
        orch.running.app.sessions.len(),
        worker.active_sessions()
    );
}

/// Ends a session Speak opened, on its worker too (as the reaper would).
async fn close_grpc_session(orch: &Orchestrator, id: &str) {
    let app = &orch.running.app;
    let session = app.sessions.remove(id).expect("the Speak session");
    let mut binding = session.tts.lock().await;
    app.tts.close_session(&mut binding).await;
}

#[tokio::test]
async fn models_lists_the_openai_names_and_the_pools_voices() {
    let _gate = crate::GATE.enter(module_path!());
    let (_worker, _stt, orch) = stack(Args::for_tests()).await;
    let http = Http::new(&orch);
    let reply = http.get("/v1/models").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["object"], "list");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| m["id"].as_str().expect("id"))
        .collect();
    for id in ["tts-1", "tts-1-hd", "gpt-4o-mini-tts", "whisper-1", "tone"] {
        assert!(ids.contains(&id), "{id} in {ids:?}");
    }
    let one = http.get("/v1/models/whisper-1").await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["object"], "model");
    http.get("/v1/models/no-such-model")
        .await
        .assert_error(404, Some("model"), "unknown model");
}

#[tokio::test]
async fn speech_streams_wav_and_pcm_through_the_speak_path() {
    let _gate = crate::GATE.enter(module_path!());
    let (worker, _stt, orch) = stack(Args::for_tests()).await;
    let http = Http::new(&orch);
    let text = "The first sentence. And a second one.";
    let grpc = speak_ok(&mut orch.voxwire(), "grpc-reference", text).await;
    let reference: Vec<u8> = grpc.iter().flat_map(|f| f.audio_data.to_vec()).collect();
    let rate = u32::try_from(grpc[0].sample_rate).expect("rate");

    let reply = http
        .speech(serde_json::json!({
            "model": "tts-1", "input": text, "voice": "alloy", "response_format": "wav"
        }))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.headers["content-type"], "audio/wav");
    // Streamed: no length up front.
    assert_eq!(reply.headers["transfer-encoding"], "chunked");
    assert!(reply.headers.get("content-length").is_none());
    let clip = wav::decode(&reply.body).expect("a readable WAV");
    assert_eq!(clip.sample_rate, rate);
    assert_eq!(
        clip.samples,
        voxwire_proto::audio::decode_pcm16(&reference),
        "the same audio as Speak"
    );

    // The default format is WAV; pcm is 24 kHz, as OpenAI's.
    let default = http
        .speech(serde_json::json!({"model": "gpt-4o-mini-tts", "input": text}))
        .await;
    assert_eq!(default.headers["content-type"], "audio/wav");
    let pcm = http
        .speech(serde_json::json!({
            "model": "tts-1-hd", "input": text, "voice": "nova", "response_format": "pcm", "speed": 1.0
        }))
        .await;
    assert_eq!(pcm.status, 200, "{}", pcm.text());
    assert_eq!(pcm.headers["content-type"], "audio/pcm");
    let expected = reference.len() as f64 / 2.0 * 24_000.0 / f64::from(rate);
    let got = pcm.body.len() as f64 / 2.0;
    assert!(
        (got - expected).abs() <= expected * 0.01 + 64.0,
        "{got} samples at 24 kHz for {expected}"
    );

    // Through the dispatcher: counted as TTS turns like Speak's.
    assert_eq!(
        orch.running
            .app
            .metrics
            .counter(metrics::TURNS, &[("kind", "tts"), ("outcome", "ok")]),
        4
    );
    // The gRPC session stays (it was named); the HTTP ones are closed.
    close_grpc_session(&orch, "grpc-reference").await;
    wait_sessions_closed(&orch, &worker).await;
}

#[tokio::test]
async fn transcriptions_run_the_transcribe_relay_in_every_format() {
    let _gate = crate::GATE.enter(module_path!());
    let (_worker, _stt, orch) = stack(Args::for_tests()).await;
    let http = Http::new(&orch);
    // 1.5 s at 16 kHz: the scripted STT names the bytes it heard.
    let file = wav_file(16_000, 1.5);
    let heard = "heard 48000 bytes";

    let json = http
        .transcription(&[("model", "whisper-1")], Some(&file))
        .await;
    assert_eq!(json.status, 200, "{}", json.text());
    assert_eq!(json.json(), serde_json::json!({ "text": heard }));

    let text = http
        .transcription(
            &[("model", "whisper-1"), ("response_format", "text")],
            Some(&file),
        )
        .await;
    assert_eq!(text.status, 200);
    assert!(text.headers["content-type"]
        .to_str()
        .expect("type")
        .starts_with("text/plain"));
    assert_eq!(text.text(), format!("{heard}\n"));

    let verbose = http
        .transcription(
            &[
                ("model", "whisper-1"),
                ("language", "en"),
                ("prompt", "a hint the recognizer does not take"),
                ("response_format", "verbose_json"),
                ("timestamp_granularities[]", "segment"),
            ],
            Some(&file),
        )
        .await;
    assert_eq!(verbose.status, 200, "{}", verbose.text());
    let body = verbose.json();
    assert_eq!(body["text"], heard);
    assert_eq!(body["language"], "en");
    assert!((body["duration"].as_f64().expect("duration") - 1.5).abs() < 1e-6);
    let segments = body["segments"].as_array().expect("segments");
    assert_eq!(segments.len(), 1);
    assert_eq!(segments[0]["text"], heard);
    assert_eq!(segments[0]["start"], 0.0);
    assert_eq!(segments[0]["end"], 1.5);

    let srt = http
        .transcription(&[("response_format", "srt")], Some(&file))
        .await;
    assert_eq!(
        srt.text(),
        format!("1\n00:00:00,000 --> 00:00:01,500\n{heard}\n\n")
    );
    let vtt = http
        .transcription(&[("response_format", "vtt")], Some(&file))
        .await;
    assert!(vtt
        .text()
        .starts_with("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\n"));

    // 96 kHz is past the recognizers' range: converted to 16 kHz first.
    let high = http
        .transcription(&[("model", "whisper-1")], Some(&wav_file(96_000, 1.0)))
        .await;
    assert_eq!(high.status, 200, "{}", high.text());
    assert_eq!(high.json()["text"], "heard 32000 bytes");

    assert_eq!(
        orch.running
            .app
            .metrics
            .counter(metrics::TURNS, &[("kind", "stt"), ("outcome", "ok")]),
        6
    );
}

#[tokio::test]
async fn bad_input_on_every_route_gets_an_openai_error_and_the_server_keeps_serving() {
    let _gate = crate::GATE.enter(module_path!());
    let (_worker, _stt, orch) = stack(Args {
        max_text_chars: 100,
        max_message_bytes: 16 * 1024,
        openai_max_upload_bytes: 256 * 1024,
        max_stream_seconds: 2,
        ..Args::for_tests()
    })
    .await;
    let http = Http::new(&orch);
    let json = [("content-type", "application/json")];

    // Speech.
    http.send("POST", "/v1/audio/speech", &json, "{not json")
        .await
        .assert_error(400, None, "bad JSON");
    http.send("POST", "/v1/audio/speech", &json, "")
        .await
        .assert_error(400, None, "no body");
    let speech_cases = [
        (
            serde_json::json!({"model": "tts-1"}),
            400,
            "input",
            "no input",
        ),
        (
            serde_json::json!({"input": ""}),
            400,
            "input",
            "empty input",
        ),
        (
            serde_json::json!({"input": 5}),
            400,
            "",
            "input of the wrong type",
        ),
        (
            serde_json::json!({"input": "x".repeat(101)}),
            400,
            "input",
            "text past --max-text-chars",
        ),
        (
            serde_json::json!({"input": "hi", "response_format": "mp3"}),
            400,
            "response_format",
            "mp3",
        ),
        (
            serde_json::json!({"input": "hi", "response_format": "wave"}),
            400,
            "response_format",
            "unknown format",
        ),
        (
            serde_json::json!({"input": "hi", "speed": 10}),
            400,
            "speed",
            "speed out of range",
        ),
        (
            serde_json::json!({"input": "hi", "speed": 1.5}),
            400,
            "speed",
            "speed not supported",
        ),
        (
            serde_json::json!({"input": "hi", "voice": 3}),
            400,
            "voice",
            "voice of the wrong type",
        ),
    ];
    for (body, status, param, what) in speech_cases {
        let param = (!param.is_empty()).then_some(param);
        http.speech(body).await.assert_error(status, param, what);
    }
    http.send(
        "POST",
        "/v1/audio/speech",
        &json,
        format!(r#"{{"input":"{}"}}"#, "a".repeat(20 * 1024)),
    )
    .await
    .assert_error(413, None, "body past --max-message-bytes");
    let unknown_voice = http
        .speech(serde_json::json!({"input": "hi", "voice": "no-such-voice"}))
        .await;
    unknown_voice.assert_error(404, None, "a voice no worker has");
    assert_eq!(unknown_voice.json()["error"]["code"], "model_not_found");

    // Transcriptions.
    let file = wav_file(16_000, 0.5);
    http.send("POST", "/v1/audio/transcriptions", &json, r#"{"file":"x"}"#)
        .await
        .assert_error(400, None, "not multipart");
    http.transcription(&[("model", "whisper-1")], None)
        .await
        .assert_error(400, Some("file"), "no file");
    http.transcription(&[], Some(b""))
        .await
        .assert_error(400, Some("file"), "empty file");
    let mp3 = http
        .transcription(&[], Some(b"ID3\x04\x00\x00\x00\x00\x00\x00 not a wav"))
        .await;
    mp3.assert_error(400, Some("file"), "not a WAV");
    assert_eq!(mp3.json()["error"]["code"], "invalid_file_format");
    http.transcription(&[], Some(&wav::streaming_header(16_000)))
        .await
        .assert_error(400, Some("file"), "a WAV without samples");
    http.transcription(&[("response_format", "docx")], Some(&file))
        .await
        .assert_error(400, Some("response_format"), "unknown format");
    http.transcription(&[("stream", "true")], Some(&file))
        .await
        .assert_error(400, Some("stream"), "streaming");
    http.transcription(&[], Some(&wav_file(16_000, 9.0)))
        .await
        .assert_error(413, Some("file"), "upload past --openai-max-upload-bytes");
    http.transcription(&[], Some(&wav_file(16_000, 3.0)))
        .await
        .assert_error(413, Some("file"), "audio past --max-stream-seconds");

    // Routes and methods.
    http.get("/v1/no-such-route")
        .await
        .assert_error(404, None, "unknown route");
    http.get("/v1/audio/speech")
        .await
        .assert_error(405, None, "GET on a POST route");

    // Still serving, on both routes.
    let spoken = http
        .speech(serde_json::json!({"input": "still here"}))
        .await;
    assert_eq!(spoken.status, 200, "{}", spoken.text());
    let heard = http.transcription(&[], Some(&file)).await;
    assert_eq!(heard.status, 200, "{}", heard.text());
}

#[tokio::test]
async fn no_serving_worker_is_503_and_a_full_pool_429() {
    let _gate = crate::GATE.enter(module_path!());
    // Nothing listens at the TTS target: UNAVAILABLE after --ready-wait-ms.
    let orch = orchestrator(Args {
        tts: "127.0.0.1:1".into(),
        ready_wait_ms: 200,
        ..Args::for_tests()
    })
    .await;
    let http = Http::new(&orch);
    let reply = http.speech(serde_json::json!({"input": "anyone?"})).await;
    reply.assert_error(503, None, "no TTS worker");
    assert!(
        reply
            .headers
            .get("content-type")
            .is_some_and(|t| t == "application/json"),
        "{:?}",
        reply.headers
    );
    let reply = http.transcription(&[], Some(&wav_file(16_000, 0.2))).await;
    reply.assert_error(503, None, "no STT worker");

    // One call per client at most: a second call while the first waits on a
    // worker still computing is 429; once it is gone, there is room again.
    let stalled = FakeTts::new(Mode::Stall);
    let server = fake_tts(stalled.clone(), true).await;
    let orch = orchestrator(Args {
        max_sessions_per_client: 1,
        // Longer than the waits below: only the client leaving ends the turn.
        first_frame_timeout_ms: 60_000,
        ..tts_args(&[server.address()])
    })
    .await;
    orch.wait_ready().await;
    let http = Http::new(&orch);
    let first = {
        let client = Http::new(&orch);
        tokio::spawn(async move {
            client
                .speech(serde_json::json!({"input": "never answered"}))
                .await
        })
    };
    let waited = tokio::time::timeout(WAIT, async {
        while stalled.streams_polled() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "the first call reached the worker");
    http.get("/v1/models")
        .await
        .assert_error(429, None, "over --max-sessions-per-client");
    first.abort();
    let room = tokio::time::timeout(WAIT, async {
        loop {
            let reply = http.get("/v1/models").await;
            if reply.status == 200 {
                return;
            }
            reply.assert_error(429, None, "still counted");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(room.is_ok(), "the call is released when its client goes");
    // Regression: a client gone before the first frame left its session open.
    let closed = tokio::time::timeout(WAIT, async {
        while !orch.running.app.sessions.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the session of a request whose client left is closed"
    );
}

#[tokio::test]
async fn a_token_and_the_origin_rule_guard_the_api() {
    let _gate = crate::GATE.enter(module_path!());
    let (_worker, _stt, orch) = stack(Args {
        auth_token: Some(Secret::new("sk-voxwire-test").expect("token")),
        ..Args::for_tests()
    })
    .await;
    let http = Http::new(&orch);
    http.get("/v1/models")
        .await
        .assert_error(401, None, "no token");
    let wrong = http
        .send(
            "GET",
            "/v1/models",
            &[("authorization", "Bearer sk-other")],
            Bytes::new(),
        )
        .await;
    wrong.assert_error(401, None, "wrong token");
    assert_eq!(wrong.json()["error"]["code"], "invalid_api_key");
    let body = serde_json::json!({"input": "hi"}).to_string();
    http.send("POST", "/v1/audio/speech", &[], body.clone())
        .await
        .assert_error(401, None, "speech without a token");
    let right = [("authorization", "Bearer sk-voxwire-test")];
    let models = http.send("GET", "/v1/models", &right, Bytes::new()).await;
    assert_eq!(models.status, 200, "{}", models.text());
    let spoken = http
        .send("POST", "/v1/audio/speech", &right, body.clone())
        .await;
    assert_eq!(spoken.status, 200, "{}", spoken.text());
    // A page of another site, with the visitor's token, is refused.
    http.send(
        "POST",
        "/v1/audio/speech",
        &[right[0], ("origin", "http://evil.example")],
        body,
    )
    .await
    .assert_error(403, None, "cross-origin page");
    // Health and metrics stay open.
    let (status, _) = orch.http_get("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_flag_turns_the_api_off() {
    let _gate = crate::GATE.enter(module_path!());
    let (_worker, _stt, orch) = stack(Args {
        openai_api: false,
        ..Args::for_tests()
    })
    .await;
    let (status, _) = orch.http_get("/v1/models").await;
    assert_eq!(status, 404);
    let (status, _) = orch.http_get("/healthz").await;
    assert_eq!(status, 200);
}
