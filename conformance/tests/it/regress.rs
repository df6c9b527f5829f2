//! Protocol regression goldens: the in-process tone tts-worker's exchanges
//! must match conformance/goldens/tts-tone.json. `just regress` (or
//! `VOXWIRE_REGRESS_UPDATE=1`) re-records it after an intentional change.

use crate::support;

use std::path::PathBuf;

use voxwire_conformance::regress::{self, Golden, RecordConfig};

const WORKER: &str = "tts-worker --engine tone (in process: conformance/tests/it/regress.rs)";

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("goldens/tts-tone.json")
}

fn updating() -> bool {
    std::env::var("VOXWIRE_REGRESS_UPDATE").is_ok_and(|v| !v.is_empty() && v != "0")
}

async fn record(seed: u64, cases: u32) -> Golden {
    let worker = support::tone_tts_worker().await;
    regress::record(&RecordConfig {
        target: worker.addr.to_string(),
        seed,
        cases,
        worker: WORKER.to_string(),
    })
    .await
    .expect("the tone worker records")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tone_worker_matches_the_golden() {
    let _gate = crate::GATE.enter(module_path!());
    let path = golden_path();
    if updating() {
        // Keep the golden's seed and size, so a re-record shows only what
        // the worker changed.
        let (seed, cases) = regress::read(&path)
            .map_or((regress::DEFAULT_SEED, regress::DEFAULT_CASES), |g| {
                (g.seed, g.cases_per_property)
            });
        let recorded = record(seed, cases).await;
        regress::write(&path, &recorded).expect("golden written");
        eprintln!("re-recorded {}", path.display());
        return;
    }
    let golden = regress::read(&path).unwrap_or_else(|e| {
        panic!("{e}\nrecord it with `just regress` (VOXWIRE_REGRESS_UPDATE=1)")
    });
    let recorded = record(golden.seed, golden.cases_per_property).await;
    if let Err(mismatch) = regress::compare(&golden, &recorded) {
        panic!("{}: {mismatch}", path.display());
    }
    // The file is exactly what the recorder writes: stable ordering and
    // layout, so a re-record's diff holds only real changes.
    let on_disk = std::fs::read_to_string(&path).expect("golden readable");
    let mut canonical = recorded.clone();
    canonical.worker = golden.worker.clone();
    assert_eq!(
        on_disk,
        regress::to_text(&canonical).expect("serializes"),
        "{} is not in the recorder's layout: re-record it with `just regress`",
        path.display()
    );
}

#[test]
fn the_committed_golden_covers_the_deterministic_cases() {
    let _gate = crate::GATE.enter(module_path!());
    let golden = regress::read(&golden_path()).expect("the golden is committed");
    assert!(!golden.cases.is_empty());
    for case in &golden.cases {
        assert!(!case.calls.is_empty(), "{} has no calls", case.id);
        for call in &case.calls {
            assert_eq!(call.end, "OK", "{} input {}", case.id, call.input);
        }
    }
    for (id, _) in regress::EXCLUDED {
        assert!(golden.excluded.contains_key(*id), "{id} not in the header");
    }
}

#[test]
fn a_changed_golden_entry_is_detected() {
    let _gate = crate::GATE.enter(module_path!());
    let golden = regress::read(&golden_path()).expect("the golden is committed");
    assert_eq!(regress::compare(&golden, &golden), Ok(()));

    // A frame one sample shorter, as a framing change would make it.
    let mut changed = golden.clone();
    let case = &mut changed.cases[0];
    let id = case.id.clone();
    let input = case.calls[0].input;
    case.calls[0].frames[0].bytes -= 2;
    let mismatch = regress::compare(&golden, &changed).expect_err("a changed frame is detected");
    let text = mismatch.to_string();
    assert!(
        text.contains(&format!("{id} input {input} frames:")),
        "names the call: {text}"
    );
    assert!(
        text.contains("\n  - seq 1..=") && text.contains("\n  + seq 1..="),
        "{text}"
    );

    // The audio alone, the requests, the end of the call and the header.
    let mut changed = golden.clone();
    changed.cases[1].calls[0].audio_fnv1a64 = "0000000000000000".to_string();
    changed.cases[1].calls[0].request.chunks[0].text.push('!');
    changed.cases[1].calls[0].end = "Internal".to_string();
    changed.seed += 1;
    let mismatch = regress::compare(&golden, &changed).expect_err("detected");
    let text = mismatch.to_string();
    for what in ["audio_fnv1a64", "request", "end", "seed"] {
        assert!(text.contains(what), "{what} not reported: {text}");
    }
    assert_eq!(mismatch.differences.len(), 4, "{text}");

    // A case the recording lost.
    let mut changed = golden.clone();
    changed.cases.pop();
    let text = regress::compare(&golden, &changed)
        .expect_err("detected")
        .to_string();
    assert!(text.contains("recorded cases"), "{text}");
}

/// The recording against a worker with a real framing fault differs from a
/// fault-free recording of the same worker: the comparison sees protocol
/// changes, not only edited files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framing_change_in_the_worker_is_detected() {
    let _gate = crate::GATE.enter(module_path!());
    use crate::support::faulty_tts::{self, TtsFault};
    let config = |addr: std::net::SocketAddr| RecordConfig {
        target: addr.to_string(),
        seed: regress::DEFAULT_SEED,
        cases: 1,
        worker: "faulty".to_string(),
    };
    let good = faulty_tts::start(TtsFault::None).await;
    let before = regress::record(&config(good.addr)).await.expect("records");
    let again = regress::record(&config(good.addr)).await.expect("records");
    assert_eq!(regress::compare(&before, &again), Ok(()), "deterministic");
    let bad = faulty_tts::start(TtsFault::SeqGap).await;
    let after = regress::record(&config(bad.addr)).await.expect("records");
    let text = regress::compare(&before, &after)
        .expect_err("a sequence gap changes the frames")
        .to_string();
    assert!(text.contains("frames:"), "{text}");
}
