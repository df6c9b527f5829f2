//! One service process: started with its output in a log file, stopped and
//! resumed by signals, killed (and reaped) when dropped.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use crate::{bins, Error, Result};

pub struct Service {
    pub name: String,
    pub pid: u32,
    child: Child,
    log: PathBuf,
}

/// Signals the harness sends, by their `kill -s` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Kill,
    Stop,
    Cont,
    Term,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Kill => "KILL",
            Signal::Stop => "STOP",
            Signal::Cont => "CONT",
            Signal::Term => "TERM",
        }
    }
}

impl Service {
    /// Starts `binary` with `args`; inside network namespace `netns` when
    /// given (`ip netns exec` execs the binary, so the pid is the service's).
    pub fn spawn(name: &str, binary: &Path, args: &[String], netns: Option<&str>) -> Result<Self> {
        let dir = bins::log_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io(dir.display().to_string(), e))?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        let log = dir.join(format!("{name}-{}-{stamp}.log", std::process::id()));
        let file = File::create(&log).map_err(|e| Error::Io(log.display().to_string(), e))?;
        let err = file
            .try_clone()
            .map_err(|e| Error::Io(log.display().to_string(), e))?;
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        command
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err));
        let child = command
            .spawn()
            .map_err(|e| Error::Io(format!("starting {}", binary.display()), e))?;
        Ok(Service {
            name: name.to_string(),
            pid: child.id(),
            child,
            log,
        })
    }

    pub fn signal(&self, signal: Signal) -> Result<()> {
        let status = Command::new("kill")
            .args(["-s", signal.name(), &self.pid.to_string()])
            .status()
            .map_err(|e| Error::Io("running kill".into(), e))?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::Setup(format!(
                "kill -s {} {} failed",
                signal.name(),
                self.pid
            )))
        }
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit (after SIGTERM), up to `timeout`.
    pub async fn wait_exit(&mut self, timeout: std::time::Duration) -> Result<i32> {
        let name = self.name.clone();
        crate::wait_for(&format!("{name} to exit"), timeout, || {
            let status = self.child.try_wait();
            async move {
                match status {
                    Ok(Some(status)) => Some(status.code().unwrap_or(-1)),
                    _ => None,
                }
            }
        })
        .await
    }

    /// Resident memory in KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid)
    }

    /// The last `lines` lines of the service's log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let from = all.len().saturating_sub(lines);
        format!(
            "--- {} ({}) ---\n{}",
            self.name,
            self.log.display(),
            all[from..].join("\n")
        )
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Resident memory of process `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A loopback port free right now, never handed out twice by this process
/// (tests in one binary run in parallel and each binds its own).
pub fn free_port() -> Result<u16> {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| Error::Io("binding a free port".into(), e))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::Io("reading a free port".into(), e))?
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
}
