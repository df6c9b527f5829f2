//! The processes under test: spawned from the built binaries, so the
//! orchestrator's CPU time and memory can be read from /proc on their own.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::error::{io, BenchError, Result};

/// Where the binaries under test are: beside voxbench unless told otherwise.
#[derive(Debug, Clone)]
pub struct Bins {
    pub dir: PathBuf,
    pub voxbench: PathBuf,
}

impl Bins {
    pub fn locate(dir: Option<PathBuf>) -> Result<Bins> {
        let voxbench = std::env::current_exe().map_err(io("locating voxbench"))?;
        let dir = match dir {
            Some(dir) => dir,
            None => voxbench
                .parent()
                .map(Path::to_path_buf)
                .ok_or_else(|| BenchError::Setup("voxbench has no parent directory".into()))?,
        };
        let bins = Bins { dir, voxbench };
        for name in ["tts-worker", "orchestrator"] {
            let path = bins.path(name);
            if !path.exists() {
                return Err(BenchError::Setup(format!(
                    "{} is missing: build it first (cargo build [--release] --bin tts-worker --bin orchestrator --bin voxbench)",
                    path.display()
                )));
            }
        }
        Ok(bins)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// A child process, killed when dropped.
pub struct Proc {
    pub name: String,
    /// HOST:PORT of its gRPC port.
    pub addr: String,
    child: Child,
}

impl Proc {
    /// Starts `program` with `args`; its stderr goes to `log_dir/<name>.log`.
    /// Logging is kept to warnings so that log formatting is not part of
    /// what is measured.
    pub fn spawn(
        program: &Path,
        name: &str,
        addr: String,
        args: &[String],
        log_dir: &Path,
    ) -> Result<Proc> {
        std::fs::create_dir_all(log_dir).map_err(io(format!("creating {}", log_dir.display())))?;
        let log_path = log_dir.join(format!("{name}.log"));
        let log =
            File::create(&log_path).map_err(io(format!("creating {}", log_path.display())))?;
        let child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "warn")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(io(format!("starting {}", program.display())))?;
        Ok(Proc {
            name: name.to_string(),
            addr,
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has already exited (a crash under load must not
    /// pass as a slow run).
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(BenchError::Setup(format!(
                "{} exited ({status}); see its log in target/bench/logs/",
                self.name
            ))),
            Err(e) => Err(io(format!("waiting on {}", self.name))(e)),
        }
    }

    pub fn stats(&self) -> Result<ProcStats> {
        ProcStats::read(self.pid())
    }

    /// Waits until the process answers SERVING for `service` ("" = the whole server).
    pub async fn wait_serving(&mut self, service: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            if let Ok(ServingStatus::Serving) = check(&self.addr, service).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BenchError::Setup(format!(
                    "{} at {} not SERVING within {timeout:?}",
                    self.name, self.addr
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn check(addr: &str, service: &str) -> Result<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(BenchError::Transport)?
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await?;
    Ok(ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown))
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    let addr = listener.local_addr().map_err(io("finding a free port"))?;
    Ok(addr.to_string())
}

/// CPU time and resident memory of a process, from /proc.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ProcStats {
    /// User plus system CPU time.
    pub cpu_seconds: f64,
    pub rss_kib: u64,
}

impl ProcStats {
    pub fn read(pid: u32) -> Result<ProcStats> {
        let stat = read_proc(pid, "stat")?;
        let status = read_proc(pid, "status")?;
        Ok(ProcStats {
            cpu_seconds: parse_cpu_ticks(&stat)
                .ok_or_else(|| BenchError::Setup(format!("unreadable /proc/{pid}/stat")))?
                as f64
                / clock_ticks(),
            rss_kib: parse_rss_kib(&status)
                .ok_or_else(|| BenchError::Setup(format!("no VmRSS in /proc/{pid}/status")))?,
        })
    }

    pub fn own() -> Result<ProcStats> {
        ProcStats::read(std::process::id())
    }
}

fn read_proc(pid: u32, file: &str) -> Result<String> {
    let path = format!("/proc/{pid}/{file}");
    std::fs::read_to_string(&path).map_err(io(format!("reading {path}")))
}

/// utime + stime (fields 14 and 15), counted after the command name, which
/// may itself hold spaces and parentheses.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): utime is field 14, index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

pub fn parse_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// Clock ticks per second of /proc/PID/stat (USER_HZ).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            // USER_HZ is 100 on every Linux this runs on.
            .unwrap_or(100.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_with_a_tricky_command_name() {
        let stat = "1234 (tts (worker) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 5 0 100 1000 200";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
    }

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nThreads:\t3\n";
        assert_eq!(parse_rss_kib(status), Some(5120));
        assert_eq!(parse_rss_kib("Name: x\n"), None);
    }

    #[test]
    fn reads_its_own_process() {
        let own = ProcStats::own().expect("own /proc entry");
        assert!(own.rss_kib > 0);
    }
}
