//! Time to first frame of the TTS worker with the real Piper voice, over
//! gRPC on loopback: one sentence, and a 5,000-character text sent as one
//! chunk. Prints p50 / p95 and writes `target/bench/tts_first_frame.json`.
//!
//! `cargo run --release -p voxwire-tts-worker --example first_frame [RUNS]`
//! with VOXWIRE_MODEL_DIR set (default ../shared/models).

use std::time::Instant;

use tokio_stream::StreamExt;
use voxwire_proto::tts::tts_service_client::TtsServiceClient;
use voxwire_proto::tts::{StartSessionRequest, TextChunk};
use voxwire_tts_worker::server::{start, Args, EngineKind};

const ONE_SENTENCE: &str = "The quick brown fox jumps over the lazy dog.";

fn long_text() -> String {
    let sentences = [
        "Voice systems are judged in milliseconds.",
        "A listener notices a pause long before a reader would.",
        "This worker starts speaking as soon as the first sentence is complete.",
        "The rest of the text is synthesized while the first audio plays.",
    ];
    let mut text = String::new();
    let mut i = 0;
    while text.chars().count() < 5_000 {
        text.push_str(sentences[i % sentences.len()]);
        text.push(' ');
        i += 1;
    }
    text.chars().take(5_000).collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Milliseconds to the first frame and to the last, for one call.
async fn one_call(
    client: &mut TtsServiceClient<tonic::transport::Channel>,
    session: &str,
    text: &str,
) -> anyhow::Result<(f64, f64)> {
    let chunk = TextChunk {
        session_id: session.to_string(),
        text: text.to_string(),
        is_final: true,
        sequence_number: 1,
    };
    let started = Instant::now();
    let mut frames = client
        .synthesize(tokio_stream::iter(vec![chunk]))
        .await?
        .into_inner();
    let mut first = None;
    while let Some(frame) = frames.next().await {
        let frame = frame?;
        first.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1000.0);
        if frame.is_final {
            break;
        }
    }
    Ok((
        first.unwrap_or(f64::NAN),
        started.elapsed().as_secs_f64() * 1000.0,
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let models = std::env::var_os("VOXWIRE_MODEL_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "../shared/models".into());
    let args = Args {
        engine: EngineKind::Piper,
        voice: Some(models.join("piper-en_US-joe-medium")),
        ..Args::tone_for_tests()
    };
    let running = start(&args, std::future::pending()).await?;
    while !running.worker.is_ready() {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut client = TtsServiceClient::connect(format!("http://{}", running.addr)).await?;
    client
        .start_session(StartSessionRequest {
            session_id: "bench".into(),
            ..Default::default()
        })
        .await?;
    let long = long_text();
    let mut report = serde_json::Map::new();
    for (name, text, n) in [
        ("one_sentence", ONE_SENTENCE, runs),
        ("text_5000_chars", long.as_str(), runs.div_ceil(3)),
    ] {
        let mut firsts = Vec::new();
        let mut totals = Vec::new();
        for _ in 0..n {
            let (first, total) = one_call(&mut client, "bench", text).await?;
            firsts.push(first);
            totals.push(total);
        }
        firsts.sort_by(f64::total_cmp);
        totals.sort_by(f64::total_cmp);
        let (p50, p95) = (percentile(&firsts, 50.0), percentile(&firsts, 95.0));
        println!(
            "{name:>16}: first frame p50 {p50:7.1} ms  p95 {p95:7.1} ms  (whole call p50 {:8.1} ms, {n} runs)",
            percentile(&totals, 50.0)
        );
        report.insert(
            name.to_string(),
            serde_json::json!({
                "runs": n,
                "chars": text.chars().count(),
                "first_frame_ms": {"p50": p50, "p95": p95, "all": firsts},
                "whole_call_ms_p50": percentile(&totals, 50.0),
            }),
        );
    }
    report.insert(
        "machine".into(),
        serde_json::json!({
            "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        }),
    );
    std::fs::create_dir_all("target/bench")?;
    let path = "target/bench/tts_first_frame.json";
    std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {path}");
    Ok(())
}
