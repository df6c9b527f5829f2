//! voxctl as a script runs it: against a peer that accepts connections and
//! never answers, with bad options, and what its help lists.

use std::process::Command;
use std::time::{Duration, Instant};

use voxctl::{ClientError, ClientOptions};

/// A listener nobody serves: the kernel completes the TCP handshake, and
/// then nothing ever comes back.
fn silent_peer() -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    (listener, address)
}

fn short() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_millis(300),
        call_timeout: Duration::from_millis(300),
        ..ClientOptions::default()
    }
}

/// Regression (issue 22, Medium 9): `voxctl health` and `voxctl say` hung for
/// ever on a peer that accepts and never answers (and compose and k8s
/// probes run `voxctl health`).
#[tokio::test]
async fn health_and_say_give_up_on_a_silent_peer() {
    let (_listener, address) = silent_peer();
    let started = Instant::now();
    let health = voxctl::health::check_with(&address, &short(), "").await;
    assert!(matches!(health, Err(ClientError::Timeout(_))), "{health:?}");
    let say = voxctl::speak::via_orchestrator_with(&address, &short(), "Hello.", "").await;
    assert!(matches!(say, Err(ClientError::Timeout(_))), "{say:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn the_binary_exits_non_zero_with_one_clear_line() {
    let (_listener, address) = silent_peer();
    for args in [
        vec!["health", address.as_str()],
        vec![
            "--orchestrator",
            address.as_str(),
            "say",
            "Hello.",
            "-o",
            "/dev/null",
        ],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_voxctl"))
            .args(&args)
            .args(["--connect-timeout-ms", "300", "--call-timeout-ms", "300"])
            .env_remove("VOXWIRE_AUTH_TOKEN")
            .output()
            .expect("voxctl runs");
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
        assert!(lines[0].contains("timeout-ms"), "{args:?}: {stderr}");
    }
}

/// Regression (issue 22, Medium 8): an invalid token was printed verbatim
/// in the start-up error.
#[test]
fn an_invalid_token_is_not_printed() {
    let secretish = "almost-the-token with-a-space";
    let output = Command::new(env!("CARGO_BIN_EXE_voxctl"))
        .args(["health", "127.0.0.1:1"])
        .env("VOXWIRE_AUTH_TOKEN", secretish)
        .output()
        .expect("voxctl runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("almost-the-token"), "{stderr}");
    assert!(stderr.contains("--auth-token"), "{stderr}");
}

fn voxctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_voxctl"))
        .args(args)
        .env_remove("VOXWIRE_AUTH_TOKEN")
        .env_remove("VOXWIRE_ORCHESTRATOR")
        .output()
        .expect("voxctl runs")
}

/// Regression (issue 22, Low): `voxctl certs --help` listed the connection
/// options, which it ignores, and `voxctl health` listed `--orchestrator`,
/// which it ignored.
#[test]
fn a_command_lists_only_the_options_it_uses() {
    let certs = voxctl(&["certs", "--help"]);
    assert!(certs.status.success());
    let help = String::from_utf8_lossy(&certs.stdout);
    for unused in [
        "--orchestrator",
        "--tls-ca",
        "--auth-token",
        "--call-timeout-ms",
    ] {
        assert!(
            !help.contains(unused),
            "certs --help shows {unused}:\n{help}"
        );
    }
    assert!(help.contains("--name"), "{help}");
    // health uses --orchestrator: it is the target when none is given.
    let (_listener, address) = silent_peer();
    let health = voxctl(&[
        "--orchestrator",
        &address,
        "health",
        "--connect-timeout-ms",
        "300",
        "--call-timeout-ms",
        "300",
    ]);
    assert!(!health.status.success());
    let stderr = String::from_utf8_lossy(&health.stderr);
    assert!(stderr.starts_with(&address), "asked {address}: {stderr}");
}

/// Regression (issue 22, Low): a connect error named its cause twice
/// ("tcp connect error: tcp connect error").
#[test]
fn a_connect_error_names_each_cause_once() {
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string();
    let output = voxctl(&["health", &refused]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert_eq!(stderr.matches("tcp connect error").count(), 1, "{stderr}");
}
