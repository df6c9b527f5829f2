//! The official `openai` Python SDK, unmodified, against the orchestrator's
//! `/v1` with the real Piper voice and the real Whisper worker behind it:
//! speech streamed and saved as WAV, that file transcribed back (the
//! recognizer judges the speech), espeak-ng speech transcribed, an error
//! raised as the SDK's own exception.
//!
//! The SDK lives in a venv under target/ (`target/venv-openai`, created and
//! filled from PyPI on first use, reused after). Without python3, pip or the
//! models the test skips with a message; in CI (`CI=true`) it fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use voxwire_orchestrator::config::Args;
use voxwire_orchestrator::openai::wav;
use voxwire_service::credentials::Secret;
use voxwire_testkit::wer::word_error_rate;
use voxwire_tts_worker::server::{Args as TtsArgs, EngineKind};

/// Loading and warming both models on a loaded 2-core machine.
const MODELS_READY: Duration = Duration::from_secs(300);
const SPOKEN: &str = "The quick brown fox jumps over the lazy dog.";
const CLIP: &str = "Please transcribe this short sentence for me.";
/// The SDK versions this is known to work with.
const SDK_REQUIREMENT: &str = "openai>=1.40,<3";

fn skip_or_fail(why: &str) {
    if voxwire_testkit::in_ci() {
        panic!("the OpenAI SDK test is required in CI, but {why}");
    }
    eprintln!("SKIPPED: {why}");
}

fn run(command: &mut Command) -> Result<(), String> {
    match command.output() {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(format!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Err(error) => Err(format!("{command:?} cannot run: {error}")),
    }
}

/// The venv's python with `openai` importable, creating the venv and
/// installing the SDK when missing (idempotent).
fn sdk_python() -> Result<PathBuf, String> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let venv = target.join("venv-openai");
    let python = venv.join("bin/python");
    if !python.exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    if run(Command::new(&python).args(["-c", "import openai"])).is_err() {
        run(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            SDK_REQUIREMENT,
        ]))?;
    }
    Ok(python)
}

fn write_wav(path: &Path, samples: &[i16], rate: u32) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec).expect("create wav");
    for &sample in samples {
        writer.write_sample(sample).expect("sample");
    }
    writer.finalize().expect("finalize wav");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_speaks_and_transcribes_through_the_orchestrator() {
    let _gate = crate::GATE.enter(module_path!());
    let Some(voice) = voxwire_testkit::model_dir(voxwire_testkit::PIPER_JOE_MEDIUM) else {
        return;
    };
    let Some(whisper) = voxwire_testkit::model_dir(voxwire_testkit::WHISPER_TINY_EN) else {
        return;
    };
    let Some((clip, clip_rate)) = voxwire_testkit::speech::espeak(CLIP) else {
        return;
    };
    let python = match tokio::task::spawn_blocking(sdk_python)
        .await
        .expect("venv task")
    {
        Ok(python) => python,
        Err(why) => return skip_or_fail(&why),
    };

    let tts = tone_worker(TtsArgs {
        engine: EngineKind::Piper,
        voice: Some(voice),
        ..TtsArgs::tone_for_tests()
    })
    .await;
    let (stt_stop, stt_stopped) = tokio::sync::oneshot::channel::<()>();
    let stt = voxwire_stt_worker::server::start(
        &voxwire_stt_worker::server::Args::for_tests(whisper),
        async {
            let _ = stt_stopped.await;
        },
    )
    .await
    .expect("stt-worker starts");
    let token = "sk-voxwire-sdk-test";
    let orch = orchestrator(Args {
        tts: tts.address(),
        stt: stt.addr.to_string(),
        auth_token: Some(Secret::new(token).expect("token")),
        first_frame_timeout_ms: 120_000,
        frame_timeout_ms: 60_000,
        call_timeout_ms: 120_000,
        ready_wait_ms: 60_000,
        ..Args::for_tests()
    })
    .await;
    let ready = tokio::time::timeout(MODELS_READY, async {
        wait_serving(&orch.channel, "").await;
        let mut stt_changes = orch.running.app.stt.pool().subscribe();
        while serving_count(&orch.running.app.stt.pool().snapshot()) == 0 {
            stt_changes.changed().await.expect("pool alive");
        }
    })
    .await;
    assert!(ready.is_ok(), "both pools SERVING within {MODELS_READY:?}");

    let out = voxwire_testkit::speech::scratch_path("openai-sdk");
    std::fs::create_dir_all(&out).expect("scratch dir");
    let clip_path = out.join("clip.wav");
    write_wav(&clip_path, &clip, clip_rate);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_sdk.py");
    let base_url = format!("http://{}/v1", orch.running.http_addr);
    let mut command = Command::new(&python);
    command
        .arg(&script)
        .arg(&base_url)
        .arg(token)
        .arg(&out)
        .arg(SPOKEN)
        .arg(&clip_path)
        // The SDK must not pick up a real key or endpoint from the environment.
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("script task")
        .expect("the SDK script runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "SDK script failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "SDK script printed no JSON ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    println!("openai SDK report: {report:#}");

    let models: Vec<&str> = report["models"]
        .as_array()
        .expect("models")
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    assert!(
        models.contains(&"tts-1") && models.contains(&"whisper-1"),
        "{models:?}"
    );
    assert_eq!(report["speech_content_type"], "audio/wav");

    // The streamed WAV as saved by the SDK: real speech, then intelligible.
    let saved = std::fs::read(out.join("speech.wav")).expect("speech.wav saved");
    let speech = wav::decode(&saved).expect("the saved file is a WAV");
    assert!(
        speech.seconds() > 1.0,
        "{:.2} s of speech",
        speech.seconds()
    );
    let spoken_text = report["spoken_text"].as_str().expect("spoken text");
    let wer = word_error_rate(SPOKEN, spoken_text);
    println!("speech -> transcription: {spoken_text:?}: WER {wer:.3}");
    assert!(wer <= 0.35, "WER {wer:.3} for {spoken_text:?}");
    assert!(report["pcm_bytes"].as_u64().expect("pcm bytes") > 24_000);

    // espeak-ng speech, in text and verbose_json.
    let clip_text = report["clip_text"].as_str().expect("text");
    let wer = word_error_rate(CLIP, clip_text);
    println!("espeak clip: {clip_text:?}: WER {wer:.3}");
    assert!(wer <= 0.35, "WER {wer:.3} for {clip_text:?}");
    assert_eq!(
        report["clip_verbose_text"].as_str().map(str::trim),
        Some(clip_text.trim())
    );
    let segments = report["clip_segments"].as_array().expect("segments");
    assert!(!segments.is_empty(), "segments: {report}");
    let duration = report["clip_duration"].as_f64().expect("duration");
    let clip_seconds = clip.len() as f64 / f64::from(clip_rate);
    assert!(
        (duration - clip_seconds).abs() < 0.01,
        "{duration} vs {clip_seconds}"
    );
    for segment in segments {
        let (start, end) = (
            segment["start"].as_f64().expect("start"),
            segment["end"].as_f64().expect("end"),
        );
        assert!(
            0.0 <= start && start <= end && end <= duration + 0.5,
            "{segment}"
        );
    }

    // An empty input is the SDK's BadRequestError with OpenAI's error body.
    assert_eq!(report["error"]["status"], 400, "{report}");
    assert_eq!(report["error"]["body"]["param"], "input", "{report}");

    let _ = std::fs::remove_dir_all(&out);
    let _ = stt_stop.send(());
}
