//! Flags (each also an environment variable `VOXWIRE_<FLAG>`) and the
//! validated settings built from them.

use std::path::PathBuf;
use std::time::Duration;

use voxwire_proto::stt_stream::SttLimits;
use voxwire_service::credentials::{resolve_token, CredentialsError, Secret, SecretParser};
use voxwire_service::limits::DEFAULT_MAX_MESSAGE_BYTES;
use voxwire_service::tls::{ClientTls, ServerTls, ServerTlsArgs, TlsError};

use crate::backoff::{Backoff, BackoffError};
use crate::discovery::{parse_cidrs, AddressPolicy};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("target {0:?} is not HOST:PORT or dns://NAME:PORT")]
    Target(String),
    #[error("{0}")]
    Backoff(#[from] BackoffError),
    #[error("{0} must be more than zero")]
    Zero(&'static str),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("console origin {0:?} is not SCHEME://HOST[:PORT]")]
    Origin(String),
    #[error("--registry-allow: {0}")]
    RegistryAllow(#[from] crate::discovery::CidrError),
    #[error("the registry token must differ from the client token (--auth-token): a client could register workers")]
    RegistryTokenIsClientToken,
}

/// voxwire orchestrator: holds client sessions and dispatches each turn to a
/// TTS or STT worker chosen by health and load.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "orchestrator", version, about)]
pub struct Args {
    /// Address to serve gRPC on (voxwire.v1, tts.TTSService, stt.STTService).
    #[arg(long, env = "VOXWIRE_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: String,
    /// TTS workers: comma-separated HOST:PORT or dns://NAME:PORT.
    #[arg(long, env = "VOXWIRE_TTS", default_value = "")]
    pub tts: String,
    /// STT workers: comma-separated HOST:PORT or dns://NAME:PORT.
    #[arg(long, env = "VOXWIRE_STT", default_value = "")]
    pub stt: String,
    /// Address of the HTTP side port (/metrics, /healthz, /readyz, /api/workers).
    #[arg(long, env = "VOXWIRE_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    pub http_listen: String,
    /// HTTP side port: close a connection whose request headers have not
    /// all arrived within this long, in milliseconds.
    #[arg(
        long,
        env = "VOXWIRE_HTTP_HEADER_READ_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub http_header_read_timeout_ms: u64,
    /// HTTP side port: connections open at once; past it new connections
    /// wait in the listen backlog (file descriptors stay for the gRPC side).
    #[arg(long, env = "VOXWIRE_HTTP_MAX_CONNECTIONS", default_value_t = 256)]
    pub http_max_connections: usize,
    /// How often dns:// targets are resolved again, in milliseconds.
    #[arg(long, env = "VOXWIRE_DNS_REFRESH_MS", default_value_t = 5_000)]
    pub dns_refresh_ms: u64,
    /// Reconnect backoff: first delay, in milliseconds.
    #[arg(
        long,
        env = "VOXWIRE_CONNECT_BACKOFF_INITIAL_MS",
        default_value_t = 100
    )]
    pub connect_backoff_initial_ms: u64,
    /// Reconnect backoff: growth factor per attempt.
    #[arg(long, env = "VOXWIRE_CONNECT_BACKOFF_FACTOR", default_value_t = 2.0)]
    pub connect_backoff_factor: f64,
    /// Reconnect backoff: longest delay, in milliseconds.
    #[arg(long, env = "VOXWIRE_CONNECT_BACKOFF_MAX_MS", default_value_t = 5_000)]
    pub connect_backoff_max_ms: u64,
    /// Reconnect attempts before an endpoint is given up (0: never give up).
    #[arg(long, env = "VOXWIRE_CONNECT_MAX_ATTEMPTS", default_value_t = 0)]
    pub connect_max_attempts: u32,
    /// Timeout of one connection attempt, in milliseconds.
    #[arg(long, env = "VOXWIRE_CONNECT_TIMEOUT_MS", default_value_t = 2_000)]
    pub connect_timeout_ms: u64,
    /// Turn retry backoff: first delay, in milliseconds.
    #[arg(long, env = "VOXWIRE_RETRY_BACKOFF_INITIAL_MS", default_value_t = 50)]
    pub retry_backoff_initial_ms: u64,
    /// Turn retry backoff: growth factor per attempt.
    #[arg(long, env = "VOXWIRE_RETRY_BACKOFF_FACTOR", default_value_t = 2.0)]
    pub retry_backoff_factor: f64,
    /// Turn retry backoff: longest delay, in milliseconds.
    #[arg(long, env = "VOXWIRE_RETRY_BACKOFF_MAX_MS", default_value_t = 1_000)]
    pub retry_backoff_max_ms: u64,
    /// Attempts per turn, the first included.
    #[arg(long, env = "VOXWIRE_RETRY_MAX_ATTEMPTS", default_value_t = 3)]
    pub retry_max_attempts: u32,
    /// How long a turn waits for a SERVING worker with free capacity, in milliseconds.
    #[arg(long, env = "VOXWIRE_READY_WAIT_MS", default_value_t = 5_000)]
    pub ready_wait_ms: u64,
    /// Deadline of unary worker calls (StartSession, GetCapabilities...), in milliseconds.
    #[arg(long, env = "VOXWIRE_CALL_TIMEOUT_MS", default_value_t = 5_000)]
    pub call_timeout_ms: u64,
    /// Deadline for a worker's first frame of a turn, in milliseconds.
    #[arg(long, env = "VOXWIRE_FIRST_FRAME_TIMEOUT_MS", default_value_t = 10_000)]
    pub first_frame_timeout_ms: u64,
    /// Longest gap between two frames of a turn, in milliseconds.
    #[arg(long, env = "VOXWIRE_FRAME_TIMEOUT_MS", default_value_t = 5_000)]
    pub frame_timeout_ms: u64,
    /// End a TTS turn whose client takes no audio for this long (it fell
    /// that far behind real time), in seconds; the worker is not blamed.
    #[arg(long, env = "VOXWIRE_CLIENT_LAG_SECONDS", default_value_t = 10)]
    pub client_lag_seconds: u64,
    /// Deadline of a whole streaming call (Synthesize / Recognize), in seconds.
    #[arg(long, env = "VOXWIRE_STREAM_TIMEOUT_SECONDS", default_value_t = 600)]
    pub stream_timeout_seconds: u64,
    /// How often workers' load is polled with GetCapabilities (and health
    /// probed that way for workers without grpc.health.v1), in milliseconds.
    #[arg(long, env = "VOXWIRE_LOAD_POLL_MS", default_value_t = 1_000)]
    pub load_poll_ms: u64,
    /// Deadline of a load poll (GetCapabilities) and of a health Watch's
    /// first status, in milliseconds: a worker silent past it is
    /// UNRESPONSIVE (a stopped or wedged process keeps its TCP connection).
    #[arg(long, env = "VOXWIRE_LOAD_POLL_TIMEOUT_MS", default_value_t = 1_000)]
    pub load_poll_timeout_ms: u64,
    /// HTTP/2 keepalive: a PING on every worker connection after this long
    /// without a frame from the worker, in milliseconds.
    #[arg(long, env = "VOXWIRE_KEEPALIVE_INTERVAL_MS", default_value_t = 500)]
    pub keepalive_interval_ms: u64,
    /// HTTP/2 keepalive: a PING unanswered this long closes the connection
    /// (its turns fail over, the endpoint reconnects), in milliseconds.
    #[arg(long, env = "VOXWIRE_KEEPALIVE_TIMEOUT_MS", default_value_t = 500)]
    pub keepalive_timeout_ms: u64,
    /// Shortest deadline for a worker's first answer of an attempt
    /// (StartSession, the first frame, Recognize's response), in
    /// milliseconds. The deadline is 3x the worker's recent p95 first-frame
    /// latency between this floor and --attempt-deadline-cap-ms; past it the
    /// attempt moves to another SERVING worker when there is one.
    #[arg(long, env = "VOXWIRE_ATTEMPT_DEADLINE_FLOOR_MS", default_value_t = 750)]
    pub attempt_deadline_floor_ms: u64,
    /// Longest such deadline, in milliseconds (also the deadline of a worker
    /// with no latency measured yet).
    #[arg(long, env = "VOXWIRE_ATTEMPT_DEADLINE_CAP_MS", default_value_t = 3_000)]
    pub attempt_deadline_cap_ms: u64,
    /// Concurrent turns per worker when it reports no max_sessions.
    #[arg(long, env = "VOXWIRE_DEFAULT_WORKER_CAPACITY", default_value_t = 64)]
    pub default_worker_capacity: usize,
    /// Turns worker registration (voxwire.v1.Registry) on: the bearer token
    /// workers must send to Register, distinct from client tokens. Without
    /// it (or --registry-token-file) Register is refused. Prefer the file.
    #[arg(long, env = "VOXWIRE_REGISTRY_TOKEN", hide_env_values = true, value_parser = SecretParser)]
    pub registry_token: Option<Secret>,
    /// A file holding the registry token (surrounding white space ignored).
    #[arg(long, env = "VOXWIRE_REGISTRY_TOKEN_FILE")]
    pub registry_token_file: Option<PathBuf>,
    /// Networks registered worker addresses must lie in, comma-separated
    /// CIDRs. Registered addresses are IP:PORT; link-local and cloud metadata
    /// addresses are refused unless a range inside them is listed.
    #[arg(long, env = "VOXWIRE_REGISTRY_ALLOW", default_value = crate::discovery::DEFAULT_REGISTRY_ALLOW)]
    pub registry_allow: String,
    /// Longest Registry lease granted, in seconds.
    #[arg(long, env = "VOXWIRE_MAX_LEASE_SECONDS", default_value_t = 60)]
    pub max_lease_seconds: u32,
    /// Close client sessions unused for this long (and their worker sessions), in seconds.
    #[arg(long, env = "VOXWIRE_SESSION_IDLE_SECONDS", default_value_t = 300)]
    pub session_idle_seconds: u64,
    /// Close a client stream that holds a worker stream open but sends
    /// nothing for this long (a Transcribe or relayed Recognize stream, a
    /// relayed Synthesize waiting for text, a Converse listening turn), in
    /// seconds: it would hold a worker slot for ever.
    #[arg(long, env = "VOXWIRE_STREAM_IDLE_SECONDS", default_value_t = 30)]
    pub stream_idle_seconds: u64,
    /// Bound on finishing in-flight turns after SIGTERM, in seconds.
    #[arg(long, env = "VOXWIRE_DRAIN_SECONDS", default_value_t = 10)]
    pub drain_seconds: u64,
    /// TLS of the client-facing gRPC port (--tls-cert, --tls-key, --tls-client-ca).
    #[command(flatten)]
    pub tls: ServerTlsArgs,
    /// Connect to workers over TLS, trusting worker certificates from this CA (PEM).
    #[arg(long, env = "VOXWIRE_WORKER_TLS_CA")]
    pub worker_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) presented to workers: mutual TLS; needs --worker-tls-key.
    #[arg(long, env = "VOXWIRE_WORKER_TLS_CERT")]
    pub worker_tls_cert: Option<PathBuf>,
    /// The private key of --worker-tls-cert (PEM).
    #[arg(long, env = "VOXWIRE_WORKER_TLS_KEY")]
    pub worker_tls_key: Option<PathBuf>,
    /// The name worker certificates must carry (default: the address dialled).
    #[arg(long, env = "VOXWIRE_WORKER_TLS_DOMAIN")]
    pub worker_tls_domain: Option<String>,
    /// Bearer token clients must send (`authorization: Bearer TOKEN`) on every
    /// RPC but health and reflection. Prefer --auth-token-file.
    #[arg(long, env = "VOXWIRE_AUTH_TOKEN", hide_env_values = true, value_parser = SecretParser)]
    pub auth_token: Option<Secret>,
    /// A file holding the bearer token (surrounding white space ignored).
    #[arg(long, env = "VOXWIRE_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Largest gRPC message accepted, in bytes (past it: OUT_OF_RANGE).
    #[arg(long, env = "VOXWIRE_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    /// Longest text of one Speak call, in characters (past it: INVALID_ARGUMENT).
    #[arg(long, env = "VOXWIRE_MAX_TEXT_CHARS", default_value_t = 20_000)]
    pub max_text_chars: usize,
    /// Calls open at once from one client address (0: no limit; past it:
    /// RESOURCE_EXHAUSTED).
    #[arg(long, env = "VOXWIRE_MAX_SESSIONS_PER_CLIENT", default_value_t = 0)]
    pub max_sessions_per_client: usize,
    /// Sessions one client address may hold open at once (StartSession,
    /// named Speak sessions; 0: no limit; past it: RESOURCE_EXHAUSTED).
    #[arg(
        long,
        env = "VOXWIRE_MAX_OPEN_SESSIONS_PER_CLIENT",
        default_value_t = 256
    )]
    pub max_open_sessions_per_client: usize,
    /// Largest audio chunk a client may send to Transcribe or Converse, in
    /// bytes (past it: INVALID_ARGUMENT, STT-CHUNK-LIMIT).
    #[arg(long, env = "VOXWIRE_MAX_CHUNK_BYTES", default_value_t = SttLimits::default().max_chunk_bytes)]
    pub max_chunk_bytes: usize,
    /// Longest audio of one Transcribe stream or one Converse listening turn,
    /// in seconds (past it: OUT_OF_RANGE, STT-DURATION-LIMIT).
    #[arg(long, env = "VOXWIRE_MAX_STREAM_SECONDS", default_value_t = SttLimits::default().max_stream_seconds)]
    pub max_stream_seconds: u32,
    /// Origins besides the page's own host whose pages may open the web
    /// console's WebSocket, comma-separated (`https://voice.example.com`):
    /// for a proxy that rewrites the Host header.
    #[arg(long, env = "VOXWIRE_CONSOLE_ORIGINS", default_value = "")]
    pub console_origins: String,
    /// Serve the OpenAI-compatible audio API on the HTTP side port under
    /// /v1 (models, audio/speech, audio/transcriptions).
    #[arg(long, env = "VOXWIRE_OPENAI_API", default_value_t = true, action = clap::ArgAction::Set)]
    pub openai_api: bool,
    /// Largest upload /v1/audio/transcriptions accepts, in bytes (past it: 413).
    #[arg(long, env = "VOXWIRE_OPENAI_MAX_UPLOAD_BYTES", default_value_t = DEFAULT_OPENAI_MAX_UPLOAD_BYTES)]
    pub openai_max_upload_bytes: usize,
}

/// OpenAI's own limit on an uploaded audio file: clients sized for it fit.
pub const DEFAULT_OPENAI_MAX_UPLOAD_BYTES: usize = 25 * 1024 * 1024;

impl Args {
    /// Loopback defaults for tests: free ports, short waits.
    pub fn for_tests() -> Args {
        Args {
            listen: "127.0.0.1:0".into(),
            tts: String::new(),
            stt: String::new(),
            http_listen: "127.0.0.1:0".into(),
            http_header_read_timeout_ms: 10_000,
            http_max_connections: 256,
            dns_refresh_ms: 200,
            connect_backoff_initial_ms: 20,
            connect_backoff_factor: 2.0,
            connect_backoff_max_ms: 200,
            connect_max_attempts: 0,
            connect_timeout_ms: 1_000,
            retry_backoff_initial_ms: 10,
            retry_backoff_factor: 2.0,
            retry_backoff_max_ms: 100,
            retry_max_attempts: 3,
            ready_wait_ms: 3_000,
            call_timeout_ms: 3_000,
            first_frame_timeout_ms: 5_000,
            frame_timeout_ms: 3_000,
            stream_timeout_seconds: 60,
            client_lag_seconds: 10,
            load_poll_ms: 100,
            load_poll_timeout_ms: 1_000,
            keepalive_interval_ms: 500,
            keepalive_timeout_ms: 500,
            attempt_deadline_floor_ms: 750,
            attempt_deadline_cap_ms: 3_000,
            default_worker_capacity: 64,
            registry_token: None,
            registry_token_file: None,
            registry_allow: crate::discovery::DEFAULT_REGISTRY_ALLOW.into(),
            max_lease_seconds: 60,
            session_idle_seconds: 300,
            stream_idle_seconds: 30,
            drain_seconds: 2,
            tls: ServerTlsArgs::default(),
            worker_tls_ca: None,
            worker_tls_cert: None,
            worker_tls_key: None,
            worker_tls_domain: None,
            auth_token: None,
            auth_token_file: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_text_chars: 20_000,
            max_sessions_per_client: 0,
            max_open_sessions_per_client: 256,
            max_chunk_bytes: SttLimits::default().max_chunk_bytes,
            max_stream_seconds: SttLimits::default().max_stream_seconds,
            console_origins: String::new(),
            openai_api: true,
            openai_max_upload_bytes: DEFAULT_OPENAI_MAX_UPLOAD_BYTES,
        }
    }
}

/// Where a pool's endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A fixed HOST:PORT.
    Static(String),
    /// `dns://NAME:PORT`: every address NAME resolves to, re-resolved.
    Dns { host: String, port: u16 },
}

/// Parses a comma-separated list of origins (`SCHEME://HOST[:PORT]`) into
/// the form browsers send in the Origin header: lower case, no trailing slash,
/// no path.
pub fn parse_origins(list: &str) -> Result<Vec<String>, ConfigError> {
    list.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let origin = item.trim_end_matches('/').to_ascii_lowercase();
            match origin.split_once("://") {
                Some((scheme, host))
                    if !scheme.is_empty() && !host.is_empty() && !host.contains('/') =>
                {
                    Ok(origin)
                }
                _ => Err(ConfigError::Origin(item.to_string())),
            }
        })
        .collect()
}

/// Parses a comma-separated TARGETS list; empty items are skipped.
pub fn parse_targets(list: &str) -> Result<Vec<Target>, ConfigError> {
    list.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(parse_target)
        .collect()
}

fn parse_target(item: &str) -> Result<Target, ConfigError> {
    let bad = || ConfigError::Target(item.to_string());
    let (dns, rest) = match item.strip_prefix("dns://") {
        Some(rest) => (true, rest),
        None => (false, item),
    };
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok(if dns {
        Target::Dns {
            host: host.to_string(),
            port,
        }
    } else {
        Target::Static(rest.to_string())
    })
}

/// What endpoint monitors need.
#[derive(Debug, Clone)]
pub struct EndpointSettings {
    pub reconnect: Backoff,
    pub connect_timeout: Duration,
    pub call_timeout: Duration,
    pub load_poll: Duration,
    /// See `--load-poll-timeout-ms`.
    pub load_poll_timeout: Duration,
    /// HTTP/2 keepalive PING interval and timeout.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub default_capacity: usize,
    /// TLS to workers (mutual when it carries a client certificate).
    pub tls: Option<ClientTls>,
}

/// Who may call, over what, and how much.
#[derive(Debug, Clone)]
pub struct SecuritySettings {
    /// TLS of the client-facing port.
    pub tls: Option<ServerTls>,
    /// The bearer token clients must present; `None`: no token needed.
    pub auth_token: Option<Secret>,
    pub max_message_bytes: usize,
    pub max_text_chars: usize,
    /// 0: no limit.
    pub max_sessions_per_client: usize,
    /// Sessions held open per client address; 0: no limit.
    pub max_open_sessions_per_client: usize,
    /// What one client audio stream may carry (Transcribe, a Converse turn).
    pub audio: SttLimits,
    /// Origins allowed to open the console's WebSocket besides the page's own
    /// host, lower case, without a trailing slash.
    pub console_origins: Vec<String>,
}

/// What dispatching a turn needs.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    pub retry: Backoff,
    pub ready_wait: Duration,
    pub call_timeout: Duration,
    pub first_frame_timeout: Duration,
    pub frame_timeout: Duration,
    pub stream_timeout: Duration,
    /// See `--client-lag-seconds`.
    pub client_lag: Duration,
    /// Bounds of the per-worker deadline for an attempt's first answer.
    pub attempt_deadline: AttemptDeadline,
}

/// The deadline for a worker's first answer of an attempt, from what that
/// worker usually takes: [`AttemptDeadline::FACTOR`] times its recent p95
/// first-frame latency, clamped to `floor..=cap`; `cap` when nothing was
/// measured yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptDeadline {
    pub floor: Duration,
    pub cap: Duration,
}

impl AttemptDeadline {
    /// How far past its usual p95 a worker may be before the attempt moves:
    /// enough that an honest worker's slow tail does not move (and so
    /// redo) its turns, small against the cost of a frozen one.
    pub const FACTOR: u32 = 3;

    pub fn for_p95(&self, p95: Option<Duration>) -> Duration {
        match p95 {
            Some(p95) => (p95 * Self::FACTOR).clamp(self.floor, self.cap),
            None => self.cap,
        }
    }
}

/// The OpenAI-compatible audio API (`crate::openai`).
#[derive(Debug, Clone)]
pub struct OpenAiSettings {
    pub enabled: bool,
    pub max_upload_bytes: usize,
}

/// The HTTP side port's own limits.
#[derive(Debug, Clone, Copy)]
pub struct HttpSettings {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

/// Worker registration: on only with a token of its own.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// `None`: registration is off.
    pub token: Option<Secret>,
    pub policy: AddressPolicy,
    pub max_lease: Duration,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub tts: Vec<Target>,
    pub stt: Vec<Target>,
    pub dns_refresh: Duration,
    pub http: HttpSettings,
    pub endpoint: EndpointSettings,
    pub dispatch: DispatchSettings,
    pub registry: RegistrySettings,
    pub session_idle: Duration,
    /// See `--stream-idle-seconds`.
    pub stream_idle: Duration,
    pub drain: Duration,
    pub security: SecuritySettings,
    pub openai: OpenAiSettings,
}

fn positive(ms: u64, name: &'static str) -> Result<Duration, ConfigError> {
    if ms == 0 {
        return Err(ConfigError::Zero(name));
    }
    Ok(Duration::from_millis(ms))
}

impl Settings {
    pub fn from_args(args: &Args) -> Result<Settings, ConfigError> {
        let reconnect = Backoff::new(
            Duration::from_millis(args.connect_backoff_initial_ms),
            args.connect_backoff_factor,
            Duration::from_millis(args.connect_backoff_max_ms),
            args.connect_max_attempts,
        )?;
        if args.retry_max_attempts == 0 {
            return Err(ConfigError::Zero("--retry-max-attempts"));
        }
        let retry = Backoff::new(
            Duration::from_millis(args.retry_backoff_initial_ms),
            args.retry_backoff_factor,
            Duration::from_millis(args.retry_backoff_max_ms),
            args.retry_max_attempts,
        )?;
        if args.default_worker_capacity == 0 {
            return Err(ConfigError::Zero("--default-worker-capacity"));
        }
        if args.session_idle_seconds == 0 {
            return Err(ConfigError::Zero("--session-idle-seconds"));
        }
        if args.http_max_connections == 0 {
            return Err(ConfigError::Zero("--http-max-connections"));
        }
        if args.stream_idle_seconds == 0 {
            return Err(ConfigError::Zero("--stream-idle-seconds"));
        }
        if args.max_lease_seconds == 0 {
            return Err(ConfigError::Zero("--max-lease-seconds"));
        }
        if args.max_message_bytes == 0 {
            return Err(ConfigError::Zero("--max-message-bytes"));
        }
        if args.max_chunk_bytes == 0 {
            return Err(ConfigError::Zero("--max-chunk-bytes"));
        }
        if args.max_stream_seconds == 0 {
            return Err(ConfigError::Zero("--max-stream-seconds"));
        }
        if args.openai_max_upload_bytes == 0 {
            return Err(ConfigError::Zero("--openai-max-upload-bytes"));
        }
        let auth_token = resolve_token(args.auth_token.as_ref(), args.auth_token_file.as_deref())?;
        let registry_token = resolve_token(
            args.registry_token.as_ref(),
            args.registry_token_file.as_deref(),
        )?;
        if registry_token.is_some() && registry_token == auth_token {
            return Err(ConfigError::RegistryTokenIsClientToken);
        }
        Ok(Settings {
            tts: parse_targets(&args.tts)?,
            stt: parse_targets(&args.stt)?,
            dns_refresh: positive(args.dns_refresh_ms, "--dns-refresh-ms")?,
            http: HttpSettings {
                header_read_timeout: positive(
                    args.http_header_read_timeout_ms,
                    "--http-header-read-timeout-ms",
                )?,
                max_connections: args.http_max_connections,
            },
            endpoint: EndpointSettings {
                reconnect,
                connect_timeout: positive(args.connect_timeout_ms, "--connect-timeout-ms")?,
                call_timeout: positive(args.call_timeout_ms, "--call-timeout-ms")?,
                load_poll: positive(args.load_poll_ms, "--load-poll-ms")?,
                load_poll_timeout: positive(args.load_poll_timeout_ms, "--load-poll-timeout-ms")?,
                keepalive_interval: positive(
                    args.keepalive_interval_ms,
                    "--keepalive-interval-ms",
                )?,
                keepalive_timeout: positive(args.keepalive_timeout_ms, "--keepalive-timeout-ms")?,
                default_capacity: args.default_worker_capacity,
                tls: ClientTls::from_flags(
                    args.worker_tls_ca.as_deref(),
                    args.worker_tls_cert.as_deref(),
                    args.worker_tls_key.as_deref(),
                    args.worker_tls_domain.as_deref(),
                )?,
            },
            dispatch: DispatchSettings {
                retry,
                ready_wait: Duration::from_millis(args.ready_wait_ms),
                call_timeout: positive(args.call_timeout_ms, "--call-timeout-ms")?,
                first_frame_timeout: positive(
                    args.first_frame_timeout_ms,
                    "--first-frame-timeout-ms",
                )?,
                frame_timeout: positive(args.frame_timeout_ms, "--frame-timeout-ms")?,
                stream_timeout: Duration::from_secs(args.stream_timeout_seconds.max(1)),
                client_lag: positive(
                    args.client_lag_seconds.saturating_mul(1_000),
                    "--client-lag-seconds",
                )?,
                attempt_deadline: AttemptDeadline {
                    floor: positive(
                        args.attempt_deadline_floor_ms,
                        "--attempt-deadline-floor-ms",
                    )?,
                    cap: positive(args.attempt_deadline_cap_ms, "--attempt-deadline-cap-ms")?
                        .max(Duration::from_millis(args.attempt_deadline_floor_ms)),
                },
            },
            registry: RegistrySettings {
                token: registry_token,
                policy: AddressPolicy::new(parse_cidrs(&args.registry_allow)?),
                max_lease: Duration::from_secs(u64::from(args.max_lease_seconds)),
            },
            session_idle: Duration::from_secs(args.session_idle_seconds),
            stream_idle: Duration::from_secs(args.stream_idle_seconds),
            drain: Duration::from_secs(args.drain_seconds),
            security: SecuritySettings {
                tls: args.tls.load()?,
                auth_token,
                max_message_bytes: args.max_message_bytes,
                max_text_chars: args.max_text_chars,
                max_sessions_per_client: args.max_sessions_per_client,
                max_open_sessions_per_client: args.max_open_sessions_per_client,
                audio: SttLimits {
                    max_chunk_bytes: args.max_chunk_bytes,
                    max_stream_seconds: args.max_stream_seconds,
                },
                console_origins: parse_origins(&args.console_origins)?,
            },
            openai: OpenAiSettings {
                enabled: args.openai_api,
                max_upload_bytes: args.openai_max_upload_bytes,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_origins_are_normalised_and_checked() {
        assert_eq!(
            parse_origins(" https://Voice.Example.com/, http://10.0.0.5:8080 ,").expect("valid"),
            vec!["https://voice.example.com", "http://10.0.0.5:8080"]
        );
        assert!(parse_origins("").expect("empty").is_empty());
        for bad in [
            "voice.example.com",
            "https://",
            "https://host/path",
            "://host",
        ] {
            assert!(parse_origins(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn parses_static_and_dns_targets() {
        let targets = parse_targets(" 10.0.0.1:50061, dns://tts.svc:50061,,").expect("valid");
        assert_eq!(
            targets,
            vec![
                Target::Static("10.0.0.1:50061".into()),
                Target::Dns {
                    host: "tts.svc".into(),
                    port: 50061
                }
            ]
        );
        assert!(parse_targets("").expect("empty").is_empty());
        for bad in ["host", "host:x", ":80", "dns://host", "host:0"] {
            assert!(parse_targets(bad).is_err(), "{bad}");
        }
    }

    /// Regression (issue 22, Medium 8): an invalid token was printed
    /// verbatim in the start-up error.
    #[test]
    fn an_invalid_token_is_not_printed() {
        use clap::Parser;
        for flag in ["--auth-token", "--registry-token"] {
            let error =
                Args::try_parse_from(["orchestrator", flag, "almost-the-token with-a-space"])
                    .expect_err("a token with a space");
            let text = error.to_string();
            assert!(!text.contains("almost-the-token"), "{text}");
            assert!(text.contains(flag), "{text}");
        }
    }

    #[test]
    fn the_registry_token_must_not_be_the_client_token() {
        let token = Secret::new("shared-token").expect("token");
        let args = Args {
            auth_token: Some(token.clone()),
            registry_token: Some(token),
            ..Args::for_tests()
        };
        assert!(matches!(
            Settings::from_args(&args),
            Err(ConfigError::RegistryTokenIsClientToken)
        ));
        let off = Settings::from_args(&Args::for_tests()).expect("defaults");
        assert!(
            off.registry.token.is_none(),
            "registration is off by default"
        );
        let bad = Args {
            registry_allow: "10.0.0.0/8,nonsense".into(),
            ..Args::for_tests()
        };
        assert!(matches!(
            Settings::from_args(&bad),
            Err(ConfigError::RegistryAllow(_))
        ));
    }

    #[test]
    fn the_attempt_deadline_follows_the_worker_within_its_bounds() {
        let bounds = AttemptDeadline {
            floor: Duration::from_millis(750),
            cap: Duration::from_millis(3_000),
        };
        assert_eq!(bounds.for_p95(None), bounds.cap, "nothing measured yet");
        assert_eq!(
            bounds.for_p95(Some(Duration::from_millis(5))),
            bounds.floor,
            "a fast worker gets the floor"
        );
        assert_eq!(
            bounds.for_p95(Some(Duration::from_millis(400))),
            Duration::from_millis(1_200)
        );
        assert_eq!(bounds.for_p95(Some(Duration::from_secs(5))), bounds.cap);
    }

    #[test]
    fn test_defaults_are_valid_and_bad_backoff_is_refused() {
        assert!(Settings::from_args(&Args::for_tests()).is_ok());
        let args = Args {
            connect_backoff_factor: 0.1,
            ..Args::for_tests()
        };
        assert!(matches!(
            Settings::from_args(&args),
            Err(ConfigError::Backoff(_))
        ));
    }
}
