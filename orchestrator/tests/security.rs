//! Authenticated, encrypted links: with TLS and a token configured no RPC
//! succeeds without credentials (UNAUTHENTICATED without a token,
//! PERMISSION_DENIED with a wrong one), health stays open for probes, mutual
//! TLS between orchestrator and workers refuses a certificate from another
//! CA in either direction, and the token never reaches a log line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use voxwire_orchestrator::config::{Args, Settings};
use voxwire_orchestrator::endpoint::EndpointState;
use voxwire_orchestrator::server::{start, Running};
use voxwire_proto::stt::stt_service_client::SttServiceClient;
use voxwire_proto::stt::{recognize_request, RecognitionConfig, RecognizeRequest};
use voxwire_proto::tts::tts_service_client::TtsServiceClient;
use voxwire_proto::tts::StartSessionRequest;
use voxwire_proto::voxwire::v1::registry_client::RegistryClient;
use voxwire_proto::voxwire::v1::voxwire_client::VoxwireClient;
use voxwire_proto::voxwire::v1::{
    converse_request, ConverseConfig, ConverseRequest, RegisterRequest, SpeakRequest,
};
use voxwire_service::credentials::{BearerToken, Secret};
use voxwire_service::tls::{ClientTls, DevPki, ServerTlsArgs, DEV_SERVER_NAMES};
use voxwire_tts_worker::server::{self as tts_server, Args as WorkerArgs, RunningWorker};

const WAIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "vx-test-token-7f3a9c1e5b";
const WRONG_TOKEN: &str = "vx-wrong-token-0000000000";
const REGISTRY_TOKEN: &str = "vx-registry-token-5d2e8b";

// ------------------------------------------------------------------ logs

/// Every log line of this test binary, from whichever test ran first on.
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let writer = Capture(Arc::clone(&logs));
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("first subscriber");
        logs
    })
}

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// ------------------------------------------------------------------ fixtures

struct Pki {
    dir: PathBuf,
    pki: DevPki,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "voxwire-security-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ));
        let pki = DevPki::generate(&format!("{name} CA"), DEV_SERVER_NAMES).expect("pki");
        pki.write_to(&dir).expect("write pki");
        Pki { dir, pki }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Server flags: this CA's server certificate, client certificates from `client_ca`.
    fn server_args(&self, client_ca: Option<&Path>) -> ServerTlsArgs {
        ServerTlsArgs {
            tls_cert: Some(self.path("server.pem")),
            tls_key: Some(self.path("server-key.pem")),
            tls_client_ca: client_ca.map(Path::to_path_buf),
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Worker {
    running: RunningWorker,
    _stop: oneshot::Sender<()>,
}

async fn tls_worker(tls: ServerTlsArgs) -> Worker {
    let (stop, stopped) = oneshot::channel::<()>();
    let args = WorkerArgs {
        tls,
        ..WorkerArgs::tone_for_tests()
    };
    let running = tts_server::start(&args, async {
        let _ = stopped.await;
    })
    .await
    .expect("worker starts");
    tokio::time::timeout(WAIT, async {
        while !running.worker.is_ready() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("worker warm");
    Worker {
        running,
        _stop: stop,
    }
}

struct Orchestrator {
    running: Running,
    _stop: oneshot::Sender<()>,
}

async fn orchestrator(args: Args) -> Orchestrator {
    let (stop, stopped) = oneshot::channel::<()>();
    let running = start(&args, async {
        let _ = stopped.await;
    })
    .await
    .expect("orchestrator starts");
    Orchestrator {
        running,
        _stop: stop,
    }
}

/// An orchestrator with TLS on its port, a token, and mutual TLS to `worker`.
fn secured_args(pki: &Pki, worker: &Worker) -> Args {
    Args {
        tts: worker.running.addr.to_string(),
        tls: pki.server_args(None),
        worker_tls_ca: Some(pki.path("ca.pem")),
        worker_tls_cert: Some(pki.path("client.pem")),
        worker_tls_key: Some(pki.path("client-key.pem")),
        auth_token: Some(Secret::new(TOKEN).expect("token")),
        registry_token: Some(Secret::new(REGISTRY_TOKEN).expect("token")),
        ready_wait_ms: 500,
        ..Args::for_tests()
    }
}

type Conn = InterceptedService<Channel, BearerToken>;

async fn connect(addr: &str, tls: Option<&ClientTls>, token: Option<&str>) -> Conn {
    let channel = voxwire_service::tls::connect(addr, tls)
        .await
        .expect("connect");
    InterceptedService::new(
        channel,
        BearerToken::new(token.map(|t| Secret::new(t).expect("token"))),
    )
}

async fn health(conn: &Conn) -> Result<ServingStatus, tonic::Status> {
    let response = HealthClient::new(conn.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown))
}

async fn wait_serving(conn: &Conn) {
    tokio::time::timeout(WAIT, async {
        while health(conn).await.ok() != Some(ServingStatus::Serving) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("orchestrator SERVING over TLS");
}

/// The status of one call of each guarded RPC (Ok: the call was let in).
async fn every_rpc(conn: &Conn) -> Vec<(&'static str, Result<(), tonic::Status>)> {
    let mut out = Vec::new();
    let speak = VoxwireClient::new(conn.clone())
        .speak(SpeakRequest {
            text: "Hello.".into(),
            ..Default::default()
        })
        .await;
    let speak = match speak {
        Ok(response) => {
            // Let in: the whole turn must succeed too.
            let mut frames = response.into_inner();
            let mut last = Ok(());
            while let Some(frame) = frames.next().await {
                if let Err(status) = frame {
                    last = Err(status);
                }
            }
            last
        }
        Err(status) => Err(status),
    };
    out.push(("Speak", speak));
    let config = RecognizeRequest {
        request: Some(recognize_request::Request::Config(RecognitionConfig {
            session_id: "sec-transcribe".into(),
            sample_rate: 16_000,
            ..Default::default()
        })),
    };
    out.push((
        "Transcribe",
        VoxwireClient::new(conn.clone())
            .transcribe(tokio_stream::iter(vec![config.clone()]))
            .await
            .map(drop),
    ));
    let converse = ConverseRequest {
        request: Some(converse_request::Request::Config(ConverseConfig {
            session_id: "sec-converse".into(),
            input_sample_rate: 16_000,
            ..Default::default()
        })),
    };
    out.push((
        "Converse",
        VoxwireClient::new(conn.clone())
            .converse(tokio_stream::iter(vec![converse]))
            .await
            .map(drop),
    ));
    out.push((
        "Register",
        RegistryClient::new(conn.clone())
            .register(RegisterRequest {
                kind: "tts".into(),
                address: "127.0.0.1:9".into(),
                lease_seconds: 5,
            })
            .await
            .map(drop),
    ));
    out.push((
        "TTS relay StartSession",
        TtsServiceClient::new(conn.clone())
            .start_session(StartSessionRequest {
                session_id: "sec-relay".into(),
                ..Default::default()
            })
            .await
            .map(drop),
    ));
    out.push((
        "STT relay Recognize",
        SttServiceClient::new(conn.clone())
            .recognize(tokio_stream::iter(vec![config]))
            .await
            .map(drop),
    ));
    out
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_and_a_token_no_rpc_succeeds_without_credentials() {
    captured();
    let pki = Pki::new("main");
    let worker = tls_worker(pki.server_args(Some(&pki.path("ca.pem")))).await;
    let orch = orchestrator(secured_args(&pki, &worker)).await;
    let addr = orch.running.addr.to_string();
    let tls = pki.pki.client_tls(false, None);

    // Health needs no token (probes), and the orchestrator becomes ready
    // only through its mutual-TLS link to the worker.
    let anonymous = connect(&addr, Some(&tls), None).await;
    wait_serving(&anonymous).await;

    for (rpc, result) in every_rpc(&anonymous).await {
        let status = result.expect_err(rpc);
        assert_eq!(status.code(), Code::Unauthenticated, "{rpc}: {status:?}");
        assert!(status.message().contains("Bearer"), "{rpc}: {status:?}");
    }
    let wrong = connect(&addr, Some(&tls), Some(WRONG_TOKEN)).await;
    for (rpc, result) in every_rpc(&wrong).await {
        let status = result.expect_err(rpc);
        assert_eq!(status.code(), Code::PermissionDenied, "{rpc}: {status:?}");
    }

    // With the token the same calls are let in (they may still fail on
    // their own merits: no STT worker here, a made-up registration address).
    let trusted = connect(&addr, Some(&tls), Some(TOKEN)).await;
    for (rpc, result) in every_rpc(&trusted).await {
        if rpc == "Register" {
            // Regression (issue 22, High 1): clients and workers shared one
            // credential, so any client could put a worker into the pools.
            let status = result.expect_err("a client token registers no worker");
            assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
            continue;
        }
        if let Err(status) = &result {
            assert!(
                !matches!(
                    status.code(),
                    Code::Unauthenticated | Code::PermissionDenied
                ),
                "{rpc} with the token: {status:?}"
            );
        }
        if rpc == "Speak" || rpc == "TTS relay StartSession" {
            assert!(result.is_ok(), "{rpc} with the token: {result:?}");
        }
    }
    // Workers register with the registry token, and only with it.
    let worker_side = connect(&addr, Some(&tls), Some(REGISTRY_TOKEN)).await;
    RegistryClient::new(worker_side)
        .register(RegisterRequest {
            kind: "tts".into(),
            address: "127.0.0.1:9".into(),
            lease_seconds: 5,
        })
        .await
        .expect("registration with the registry token");

    // Plaintext to the TLS port gets nothing, not even health.
    let plain = voxwire_service::tls::connect(&addr, None).await;
    if let Ok(channel) = plain {
        let conn = InterceptedService::new(channel, BearerToken::new(None));
        assert!(
            health(&conn).await.is_err(),
            "plaintext health on a TLS port"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_a_certificate_from_another_ca_is_rejected_by_the_orchestrator() {
    captured();
    let trusted = Pki::new("trusted");
    let rogue = Pki::new("rogue");
    // The rogue worker's certificate names the right host, but another CA issued it.
    let worker = tls_worker(rogue.server_args(None)).await;
    let orch = orchestrator(secured_args(&trusted, &worker)).await;
    let pool = orch.running.app.tts.pool();
    let conn = connect(
        &orch.running.addr.to_string(),
        Some(&trusted.pki.client_tls(false, None)),
        Some(TOKEN),
    )
    .await;
    // Several reconnect rounds (backoff here is 20..200 ms) within the wait.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let states: Vec<EndpointState> = pool.snapshot().iter().map(|e| e.state).collect();
    assert!(!states.is_empty(), "the endpoint is known");
    assert!(
        states
            .iter()
            .all(|s| !matches!(s, EndpointState::Serving | EndpointState::Connected)),
        "a worker from another CA was connected: {states:?}"
    );
    assert_eq!(
        health(&conn).await.expect("health"),
        ServingStatus::NotServing
    );
    let status = VoxwireClient::new(conn.clone())
        .speak(SpeakRequest {
            text: "Nobody should speak this.".into(),
            ..Default::default()
        })
        .await;
    let failed = match status {
        Err(status) => status,
        Ok(response) => {
            let mut frames = response.into_inner();
            let mut failure = None;
            while let Some(frame) = frames.next().await {
                if let Err(status) = frame {
                    failure = Some(status);
                }
            }
            failure.expect("the turn fails")
        }
    };
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_clients_without_a_certificate_from_its_ca() {
    captured();
    let pki = Pki::new("worker");
    let rogue = Pki::new("rogue-client");
    let worker = tls_worker(pki.server_args(Some(&pki.path("ca.pem")))).await;
    let addr = worker.running.addr.to_string();

    // The positive control: a certificate from the worker's CA gets in.
    let good = connect(&addr, Some(&pki.pki.client_tls(true, None)), None).await;
    assert_eq!(health(&good).await.expect("health"), ServingStatus::Serving);

    // No client certificate at all, and one from another CA: no call gets through.
    let without = pki.pki.client_tls(false, None);
    let other_ca = ClientTls::from_pem(
        pki.pki.ca_pem.as_bytes(),
        Some((
            rogue.pki.client_cert_pem.as_bytes(),
            rogue.pki.client_key_pem.as_bytes(),
        )),
        None,
    );
    for (name, tls) in [("no certificate", without), ("another CA", other_ca)] {
        match voxwire_service::tls::connect(&addr, Some(&tls)).await {
            Err(_) => {}
            Ok(channel) => {
                let conn = InterceptedService::new(channel, BearerToken::new(None));
                let result = TtsServiceClient::new(conn.clone())
                    .start_session(StartSessionRequest {
                        session_id: "sec-rogue".into(),
                        ..Default::default()
                    })
                    .await;
                assert!(result.is_err(), "{name}: StartSession got through");
                assert!(health(&conn).await.is_err(), "{name}: health got through");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_never_appears_in_logs() {
    let logs = captured();
    let pki = Pki::new("logs");
    let token_file = pki.path("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
    let worker = tls_worker(pki.server_args(Some(&pki.path("ca.pem")))).await;
    let args = Args {
        auth_token: None,
        auth_token_file: Some(token_file),
        ..secured_args(&pki, &worker)
    };
    // What an operator might log while debugging a start-up.
    let settings = Settings::from_args(&args).expect("settings");
    tracing::info!(?args, ?settings, "orchestrator configuration");
    let inline = Args {
        auth_token: Some(Secret::new(TOKEN).expect("token")),
        ..Args::for_tests()
    };
    tracing::info!(?inline, "inline token configuration");
    let orch = orchestrator(args).await;
    let addr = orch.running.addr.to_string();
    let tls = pki.pki.client_tls(false, None);
    let trusted = connect(&addr, Some(&tls), Some(TOKEN)).await;
    wait_serving(&trusted).await;
    let wrong = connect(&addr, Some(&tls), Some(WRONG_TOKEN)).await;
    let _ = every_rpc(&wrong).await;
    let _ = every_rpc(&trusted).await;

    let text = String::from_utf8_lossy(&logs.lock().expect("logs")).into_owned();
    // The capture works: the refusals and the configuration were logged.
    assert!(text.contains("call refused"), "no refusal logged");
    assert!(text.contains("wrong token"), "no reason logged");
    assert!(text.contains("orchestrator configuration"));
    assert!(
        text.contains("<redacted>"),
        "the secret was not logged redacted"
    );
    assert!(!text.contains(TOKEN), "the token leaked into the logs");
    assert!(
        !text.contains(WRONG_TOKEN),
        "a presented token leaked into the logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tls_or_a_token_nothing_changes() {
    captured();
    let worker = tls_worker(ServerTlsArgs::default()).await;
    let orch = orchestrator(Args {
        tts: worker.running.addr.to_string(),
        ..Args::for_tests()
    })
    .await;
    let conn = connect(&orch.running.addr.to_string(), None, None).await;
    wait_serving(&conn).await;
    let results = every_rpc(&conn).await;
    let (_, speak) = &results[0];
    assert!(speak.is_ok(), "plaintext Speak without a token: {speak:?}");
}

/// A minimal HTTP/1.1 GET on the side port: the status code.
async fn http_status(addr: std::net::SocketAddr, path: &str, extra: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("http connect");
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_websocket_needs_the_token_and_the_page_does_not() {
    captured();
    let orch = orchestrator(Args {
        auth_token: Some(Secret::new(TOKEN).expect("token")),
        ..Args::for_tests()
    })
    .await;
    let http = orch.running.http_addr;
    assert_eq!(http_status(http, "/ws", "").await, 401, "no token");
    assert_eq!(
        http_status(http, &format!("/ws?access_token={WRONG_TOKEN}"), "").await,
        403,
        "wrong token"
    );
    assert_eq!(
        http_status(
            http,
            "/ws",
            &format!("Authorization: Bearer {WRONG_TOKEN}\r\n")
        )
        .await,
        403,
        "wrong bearer header"
    );
    assert_eq!(
        http_status(
            http,
            &format!("/ws?access_token={TOKEN}"),
            "Origin: https://evil.example\r\n"
        )
        .await,
        403,
        "cross-origin"
    );
    // With the token the request reaches the WebSocket handler (which wants
    // an upgrade this plain GET does not ask for).
    let with_token = http_status(http, &format!("/ws?access_token={TOKEN}"), "").await;
    assert!(
        ![0, 401, 403].contains(&with_token),
        "with the token: {with_token}"
    );
    assert_eq!(
        http_status(http, "/healthz", "").await,
        200,
        "probes stay open"
    );
}
