//! The `conformance` binary as a third party uses it: exit status, the replay
//! command it prints, the known-failing list, JSON and JUnit output, env flags.

use std::path::PathBuf;
use std::process::Output;

use crate::support::faulty_tts::{self, TtsFault};

async fn conformance(args: Vec<String>, env: Vec<(&'static str, String)>) -> Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_conformance"))
            .args(&args)
            .envs(env)
            .output()
            .expect("the binary runs")
    })
    .await
    .expect("join")
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("voxwire-conformance-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir.join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_prints_every_case() {
    let _gate = crate::GATE.enter(module_path!());
    let output = conformance(args(&["list"]), Vec::new()).await;
    assert!(output.status.success());
    let text = stdout(&output);
    for case in voxwire_conformance::catalogue() {
        assert!(text.contains(case.id), "{} missing from list", case.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_must_failure_exits_non_zero_and_its_replay_reproduces_it() {
    let _gate = crate::GATE.enter(module_path!());
    let worker = faulty_tts::start(TtsFault::SeqGap).await;
    let target = worker.addr.to_string();
    let (json, junit) = (scratch("seq.json"), scratch("seq.xml"));
    let output = conformance(
        args(&[
            "tts",
            "--target",
            &target,
            "--run",
            "tts/frame/seq-gap,tts/health/*",
            "--seed",
            "5",
            "--cases",
            "3",
            "--json",
            json.to_str().expect("path"),
            "--junit",
            junit.to_str().expect("path"),
        ]),
        Vec::new(),
    )
    .await;
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL  MUST   tts/frame/seq-gap"), "{text}");
    assert!(text.contains("PASS  MUST   tts/health/check"), "{text}");
    assert!(text.contains("expected: TTS-SEQ-GAP"), "{text}");
    assert!(
        text.contains("<- here"),
        "the trace points at the frame: {text}"
    );

    let replay = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("replay:"))
        .expect("a replay command")
        .trim()
        .to_string();
    assert!(
        replay.contains("--cases 1") && replay.contains(&target),
        "{replay}"
    );
    let replay_args: Vec<String> = replay
        .split_whitespace()
        .skip(1)
        .map(str::to_string)
        .collect();
    let again = conformance(replay_args, Vec::new()).await;
    assert_eq!(
        again.status.code(),
        Some(1),
        "the replay fails too: {}",
        stdout(&again)
    );
    let input_line = |t: &str| {
        t.lines()
            .find(|l| l.trim().starts_with("input:"))
            .map(str::to_string)
    };
    assert_eq!(
        input_line(&stdout(&again)),
        input_line(&text),
        "the replay uses the same input"
    );

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written"))
            .expect("valid JSON");
    let results = report["results"].as_array().expect("results");
    assert!(results
        .iter()
        .any(|r| r["id"] == "tts/frame/seq-gap" && r["standing"] == "fail"));
    let xml = std::fs::read_to_string(&junit).expect("junit written");
    assert!(xml.starts_with("<?xml"));
    assert_eq!(xml.matches("<testcase ").count(), results.len());
    assert_eq!(xml.matches("<failure ").count(), 1);
    assert_eq!(xml.matches("</testsuites>").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_failing_cases_do_not_fail_the_run_but_a_stale_entry_does() {
    let _gate = crate::GATE.enter(module_path!());
    let worker = faulty_tts::start(TtsFault::HealthAbsent).await;
    let target = worker.addr.to_string();
    let list = scratch("known-failing.txt");
    std::fs::write(
        &list,
        "# the Python fleet has no health service\ntts/health/check\ntts/health/watch\n",
    )
    .expect("write list");
    // Every flag also comes from the environment.
    let env = vec![
        ("VOXWIRE_TARGET", target.clone()),
        (
            "VOXWIRE_RUN",
            "tts/health/*,tts/session/duplicate".to_string(),
        ),
        ("VOXWIRE_SKIP", "tts/health/unknown-service".to_string()),
        (
            "VOXWIRE_KNOWN_FAILING",
            list.to_str().expect("path").to_string(),
        ),
    ];
    let output = conformance(args(&["tts"]), env.clone()).await;
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("XFAIL MUST   tts/health/check"), "{text}");
    assert!(
        text.contains("PASS  MUST   tts/session/duplicate"),
        "{text}"
    );
    assert!(
        !text.contains("unknown-service"),
        "skipped by VOXWIRE_SKIP: {text}"
    );

    let healthy = faulty_tts::start(TtsFault::None).await;
    let mut env = env;
    env[0].1 = healthy.addr.to_string();
    let output = conformance(args(&["tts"]), env).await;
    let text = stdout(&output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "a listed case that passes fails the run: {text}"
    );
    assert!(text.contains("XPASS MUST   tts/health/check"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_should_failure_alone_exits_zero() {
    let _gate = crate::GATE.enter(module_path!());
    let worker = faulty_tts::start(TtsFault::MetricsMissing).await;
    let output = conformance(
        args(&[
            "tts",
            "--target",
            &worker.addr.to_string(),
            "--run",
            "tts/caps/*",
            "--seed",
            "1",
        ]),
        Vec::new(),
    )
    .await;
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("FAIL  SHOULD tts/caps/metrics"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typo_in_the_known_failing_list_is_an_error() {
    let _gate = crate::GATE.enter(module_path!());
    let list = scratch("typo.txt");
    std::fs::write(&list, "tts/health/chek\n").expect("write");
    let output = conformance(
        args(&[
            "tts",
            "--target",
            "127.0.0.1:1",
            "--known-failing",
            list.to_str().expect("path"),
        ]),
        Vec::new(),
    )
    .await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("tts/health/chek"));
}

/// Regression: a `--run` glob that matched nothing reported CONFORMS and
/// exited 0, having checked nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_glob_that_selects_nothing_is_an_error_not_a_pass() {
    let _gate = crate::GATE.enter(module_path!());
    let output = conformance(
        args(&[
            "tts",
            "--target",
            "127.0.0.1:1",
            "--run",
            "tts/no-such-family/*",
        ]),
        Vec::new(),
    )
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no tts case is selected by --run tts/no-such-family/*"),
        "{stderr}"
    );
    assert!(!stdout(&output).contains("CONFORMS"), "{}", stdout(&output));
}

/// Regression: a target nobody listens on ran every case, each failing on
/// its own connect error, instead of one clear line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_target_is_one_clear_error_and_no_case_runs() {
    let _gate = crate::GATE.enter(module_path!());
    // Bound and dropped: a loopback port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let target = format!("127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let output = conformance(args(&["tts", "--target", &target]), Vec::new()).await;
    assert_eq!(output.status.code(), Some(2), "no run was made");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot reach {target}")),
        "{stderr}"
    );
    assert!(stderr.contains("no case was run"), "{stderr}");
    // Said once: the transport's repeated cause is left out.
    assert!(
        !stderr.contains("tcp connect error: tcp connect error"),
        "{stderr}"
    );
    let text = stdout(&output);
    assert!(!text.contains("FAIL"), "cases ran: {text}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "not one case timeout per case"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_worker_that_dies_is_reported_not_waited_for() {
    let _gate = crate::GATE.enter(module_path!());
    let started = std::time::Instant::now();
    let output = conformance(
        args(&[
            "tts",
            "--target",
            "127.0.0.1:9",
            "--startup-timeout",
            "60",
            "--",
            "false",
        ]),
        Vec::new(),
    )
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("exited before it was SERVING"), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "no wait for the deadline"
    );
}

/// `conformance regress`: --update writes a golden, comparing against the same
/// worker exits 0, against a worker whose frames differ exits 1 with a diff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regress_records_compares_and_exits_non_zero_on_a_difference() {
    let _gate = crate::GATE.enter(module_path!());
    let good = faulty_tts::start(TtsFault::None).await;
    let golden = scratch("regress.json");
    let golden_arg = golden.display().to_string();
    let record = |target: String, update: bool| {
        let mut list = args(&["regress", "--target", &target, "--golden", &golden_arg]);
        list.extend(args(&["--seed", "3", "--cases", "1"]));
        if update {
            list.push("--update".to_string());
        }
        conformance(list, Vec::new())
    };
    let written = record(good.addr.to_string(), true).await;
    assert!(written.status.success(), "{}", stdout(&written));
    let text = std::fs::read_to_string(&golden).expect("golden written");
    assert!(text.contains("\"seed\": 3"), "{text}");
    let same = record(good.addr.to_string(), false).await;
    assert!(same.status.success(), "{}", stdout(&same));
    let bad = faulty_tts::start(TtsFault::WrongFrameSize).await;
    let differs = record(bad.addr.to_string(), false).await;
    assert_eq!(differs.status.code(), Some(1), "{}", stdout(&differs));
    assert!(stdout(&differs).contains("frames:"), "{}", stdout(&differs));
}

/// The "done when": `conformance tts --target` with its defaults
/// against a worker that holds every frame until the half-close ends within
/// 180 s, names TTS-STREAM-EARLY on one FAIL line, prints the run's total
/// time, and exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_run_against_a_worker_buffering_until_half_close_is_bounded() {
    let _gate = crate::GATE.enter(module_path!());
    let worker = faulty_tts::start(TtsFault::BufferUntilHalfClose).await;
    let started = std::time::Instant::now();
    let output = conformance(
        args(&["tts", "--target", &worker.addr.to_string(), "--seed", "7"]),
        Vec::new(),
    )
    .await;
    let took = started.elapsed();
    let text = stdout(&output);
    eprintln!("{text}");
    assert!(took < std::time::Duration::from_secs(180), "took {took:?}");
    assert_eq!(output.status.code(), Some(1), "{text}");
    let early: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("FAIL") && l.contains("TTS-STREAM-EARLY"))
        .collect();
    assert_eq!(early.len(), 1, "{text}");
    assert!(text.contains("after the input closed"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("tts/text/final-ends-input")),
        "{text}"
    );
    assert!(text.contains("case(s) in "), "the total time: {text}");
}
