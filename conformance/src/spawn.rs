//! `conformance tts --target ADDR -- CMD ARGS...`: starts the worker, waits on
//! its health Watch stream (with a deadline) until it is SERVING, and stops it
//! after the run.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_stream::StreamExt;
use tonic::transport::Endpoint;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::target::{DrainTrigger, Service};

/// Between connection attempts while the worker has not bound its port yet.
/// Readiness itself comes from the Watch stream, never from a delay.
const CONNECT_RETRY: Duration = Duration::from_millis(50);
/// How long a stopped worker gets to drain before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("no command to spawn")]
    NoCommand,
    #[error("cannot start {command:?}: {source}")]
    Start {
        command: String,
        source: std::io::Error,
    },
    #[error("the worker exited before it was SERVING ({0})")]
    Exited(std::process::ExitStatus),
    #[error("the worker was not SERVING within {0:?} ({1})")]
    Deadline(Duration, String),
    #[error("bad target {0:?}")]
    Target(String),
}

/// A worker this process started; stopped by [`SpawnedWorker::stop`] or, at
/// the latest, when dropped.
pub struct SpawnedWorker {
    child: Child,
}

/// How the wait ended when the worker has no health service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Serving,
    /// Health is UNIMPLEMENTED: the worker accepted a connection, which is
    /// all that can be known; the health cases will report the rest.
    NoHealthService,
}

pub async fn spawn(
    command: &[String],
    target: &str,
    service: Service,
    deadline: Duration,
) -> Result<(SpawnedWorker, Readiness), SpawnError> {
    let (program, args) = command.split_first().ok_or(SpawnError::NoCommand)?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| SpawnError::Start {
            command: command.join(" "),
            source,
        })?;
    // The report owns stdout: the worker's stdout goes to stderr.
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[worker] {line}");
            }
        });
    }
    let mut worker = SpawnedWorker { child };
    let started = Instant::now();
    match tokio::time::timeout(deadline, worker.wait_serving(target, service)).await {
        Ok(Ok(readiness)) => Ok((worker, readiness)),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(SpawnError::Deadline(
            started.elapsed(),
            "no SERVING on the health Watch stream".to_string(),
        )),
    }
}

fn sigterm(pid: u32) {
    // kill(1): the crate forbids the unsafe a direct libc call would need.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

impl SpawnedWorker {
    /// SIGTERM on demand: the drain cases run it last.
    pub fn drain_trigger(&self) -> Option<DrainTrigger> {
        let pid = self.child.id()?;
        Some(DrainTrigger::new(move || sigterm(pid)))
    }

    async fn wait_serving(
        &mut self,
        target: &str,
        service: Service,
    ) -> Result<Readiness, SpawnError> {
        let uri = format!("http://{target}");
        let endpoint =
            Endpoint::from_shared(uri).map_err(|_| SpawnError::Target(target.to_string()))?;
        let channel = loop {
            if let Some(status) = self.child.try_wait().ok().flatten() {
                return Err(SpawnError::Exited(status));
            }
            match endpoint.connect().await {
                Ok(channel) => break channel,
                Err(_) => tokio::time::sleep(CONNECT_RETRY).await,
            }
        };
        let mut health = HealthClient::new(channel);
        let watch = health
            .watch(HealthCheckRequest {
                service: service.grpc_name().to_string(),
            })
            .await;
        let mut updates = match watch {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                return Ok(Readiness::NoHealthService)
            }
            Err(status) => {
                return Err(SpawnError::Deadline(
                    Duration::ZERO,
                    format!("Watch failed: {status}"),
                ))
            }
        };
        while let Some(update) = updates.next().await {
            match update {
                Ok(update) if update.status == ServingStatus::Serving as i32 => {
                    return Ok(Readiness::Serving)
                }
                Ok(_) => {}
                Err(status) => {
                    return Err(SpawnError::Deadline(
                        Duration::ZERO,
                        format!("Watch failed: {status}"),
                    ))
                }
            }
        }
        Err(SpawnError::Deadline(
            Duration::ZERO,
            "the Watch stream ended".to_string(),
        ))
    }

    /// Asks the worker to drain (SIGTERM), then kills it if it has not
    /// exited within the grace period.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            tokio::task::spawn_blocking(move || sigterm(pid)).await.ok();
        }
        if tokio::time::timeout(STOP_GRACE, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
