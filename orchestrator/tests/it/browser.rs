//! The web console in a real headless Chromium, against the real stack on
//! loopback: the orchestrator, a tts-worker on the Piper voice, a tone
//! tts-worker (the one stopped), and an stt-worker on Whisper. Chromium's
//! fake microphone plays a WAV spoken by espeak-ng.
//!
//! Needs `chromium` and `chromium-driver` (Debian), the two models and
//! espeak-ng: each missing one fails in CI (CI=true) and skips elsewhere.
//! Writes the page's screenshot to target/console.png.

use std::net::TcpListener as StdListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::webdriver::Session;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use voxwire_orchestrator::config::Args;
use voxwire_orchestrator::endpoint::EndpointState;
use voxwire_orchestrator::pool::Pool;
use voxwire_proto::metrics::ACTIVE_STREAMS;
use voxwire_tts_worker::server::{Args as TtsArgs, EngineKind};

/// Loading and warming both models on a loaded 2-core machine.
const MODELS_READY: Duration = Duration::from_secs(300);
/// A turn of real synthesis or recognition, page round trip included.
const TURN: Duration = Duration::from_secs(120);
const SPOKEN: &str = "Please call me back tomorrow morning after nine.";
const LONG: &str = "This is a long story, told so there is time to interrupt it. \
    It goes on for quite a while, one sentence after another. \
    Every sentence is synthesized by the neural voice as the last one plays. \
    The orchestrator relays each frame to the browser as soon as it arrives. \
    The browser plays the frames through an audio worklet with a small buffer. \
    Somebody will press the interrupt button before the story is over. \
    When they do, the playback stops and the synthesis is cancelled. \
    Nobody will ever hear how the story ends, which is a pity. \
    It would have ended with a moral about listening before speaking. \
    And a second moral, about not writing stories this long.";

fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|candidate| candidate.is_file())
}

/// Chromium and its driver, or why the test cannot run (fatal in CI).
fn browser() -> Option<(PathBuf, PathBuf)> {
    let chromium = which(&["chromium", "chromium-browser", "google-chrome"]);
    let driver = which(&["chromedriver"]);
    match (chromium, driver) {
        (Some(chromium), Some(driver)) => Some((chromium, driver)),
        _ => {
            let why = "chromium and chromedriver are not on PATH \
                       (Debian packages chromium and chromium-driver; scripts/install-deps.sh)";
            assert!(
                !voxwire_testkit::in_ci(),
                "the browser test is required in CI: {why}"
            );
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}

/// chromedriver on a free loopback port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    /// Ends chromedriver and the browser it started, also when the test
    /// failed before closing its session: they share a process group.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg("--")
            .arg(format!("-{}", self.child.id()))
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_driver(path: &Path) -> Driver {
    let port = StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(path)
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    // chromedriver prints no readiness signal we could wait on: dial until
    // it accepts, under a deadline.
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    driver
}

async fn open_browser(driver: &Driver, chromium: &Path, mic_wav: &Path) -> Session {
    let args = [
        "--headless=new".to_string(),
        "--no-sandbox".to_string(),
        "--disable-dev-shm-usage".to_string(),
        "--use-fake-device-for-media-stream".to_string(),
        "--use-fake-ui-for-media-stream".to_string(),
        format!("--use-file-for-fake-audio-capture={}", mic_wav.display()),
        "--autoplay-policy=no-user-gesture-required".to_string(),
        "--window-size=1280,1000".to_string(),
    ];
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": chromium, "args": args },
    });
    Session::new(&driver.url, capabilities)
        .await
        .expect("a Chromium session")
}

async fn js(client: &Session, script: &str) -> Value {
    client
        .execute(script)
        .await
        .unwrap_or_else(|e| panic!("script {script:?} failed: {e}"))
}

/// Polls `script` (which returns a value, `null` meaning "not yet") until it
/// is not null; panics after `timeout` naming `what`.
async fn wait_js(client: &Session, script: &str, timeout: Duration, what: &str) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let value = js(client, script).await;
        if !value.is_null() && value != Value::Bool(false) {
            return value;
        }
        if Instant::now() > deadline {
            let stats = js(client, "return window.voxwire && window.voxwire.stats").await;
            let alerts = js(client, "return document.getElementById('alerts').innerText").await;
            panic!(
                "timed out after {timeout:?} waiting for {what}; stats {stats}; alerts {alerts:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn stat(client: &Session, name: &str) -> Value {
    js(client, &format!("return window.voxwire.stats.{name};")).await
}

async fn wait_pool_serving(pool: &Arc<Pool>, count: usize) {
    let mut changes = pool.subscribe();
    let waited = tokio::time::timeout(MODELS_READY, async {
        loop {
            changes.borrow_and_update();
            if serving_count(&pool.snapshot()) >= count {
                return;
            }
            changes.changed().await.expect("pool alive");
        }
    })
    .await;
    assert!(waited.is_ok(), "workers SERVING: {:?}", pool.snapshot());
}

/// 16-bit mono WAV: a little silence, the speech, then long silence (the
/// fake microphone may loop the file; the test stops it well before).
fn write_mic_wav(path: &Path, speech: &[i16], rate: u32) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec).expect("create the microphone WAV");
    let samples = voxwire_testkit::speech::silence(rate, 500)
        .into_iter()
        .chain(speech.iter().copied())
        .chain(voxwire_testkit::speech::silence(rate, 30_000));
    for sample in samples {
        writer.write_sample(sample).expect("write sample");
    }
    writer.finalize().expect("finish the WAV");
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_headless_chromium() {
    let _gate = crate::GATE.enter(module_path!());
    let Some((chromium, chromedriver)) = browser() else {
        return;
    };
    let Some(voice) = voxwire_testkit::model_dir(voxwire_testkit::PIPER_JOE_MEDIUM) else {
        return;
    };
    let Some(whisper) = voxwire_testkit::model_dir(voxwire_testkit::WHISPER_TINY_EN) else {
        return;
    };
    let Some((speech, rate)) = voxwire_testkit::speech::espeak(SPOKEN) else {
        return;
    };
    let mic_wav = voxwire_testkit::speech::scratch_path("console-mic.wav");
    write_mic_wav(&mic_wav, &speech, rate);

    // The stack: Piper paced at real time (a live source: a long text is
    // still being synthesized when the page interrupts it), a tone worker to
    // stop, Whisper.
    let voice_worker = tone_worker(TtsArgs {
        engine: EngineKind::Piper,
        voice: Some(voice),
        realtime: true,
        ..TtsArgs::tone_for_tests()
    })
    .await;
    let mut spare = tone_worker(TtsArgs::tone_for_tests()).await;
    let (stt_stop, stt_stopped) = oneshot::channel::<()>();
    let stt = voxwire_stt_worker::server::start(
        &voxwire_stt_worker::server::Args::for_tests(whisper),
        async {
            let _ = stt_stopped.await;
        },
    )
    .await
    .expect("stt-worker starts");
    let orch = orchestrator(Args {
        tts: format!("{},{}", voice_worker.address(), spare.address()),
        stt: stt.addr.to_string(),
        first_frame_timeout_ms: 60_000,
        frame_timeout_ms: 30_000,
        call_timeout_ms: 600_000,
        ..Args::for_tests()
    })
    .await;
    wait_pool_serving(orch.running.app.tts.pool(), 2).await;
    wait_pool_serving(orch.running.app.stt.pool(), 1).await;

    let driver = start_driver(&chromedriver).await;
    let client = open_browser(&driver, &chromium, &mic_wav).await;
    let page = format!("http://{}/", orch.running.http_addr);
    client.goto(&page).await.expect("open the console");
    wait_js(
        &client,
        "return window.voxwire && window.voxwire.stats.connected;",
        Duration::from_secs(20),
        "the page's conversation",
    )
    .await;

    // 1. Every worker listed SERVING; stopping one turns its row around.
    let spare_addr = spare.address();
    let all_serving = format!(
        "const rows = [...document.querySelectorAll('#workers tr')];
         const want = {addrs};
         return want.every(a => rows.some(r => r.dataset.endpoint === a && r.dataset.state === 'SERVING'))
             && rows.length === want.length;",
        addrs = json!([voice_worker.address(), spare.address(), stt.addr.to_string()])
    );
    wait_js(
        &client,
        &all_serving,
        Duration::from_secs(10),
        "3 SERVING rows",
    )
    .await;
    let kinds = js(
        &client,
        "return [...document.querySelectorAll('#workers tr')].map(r => r.dataset.kind).sort();",
    )
    .await;
    assert_eq!(kinds, json!(["stt", "tts", "tts"]));
    js(
        &client,
        &format!(
            "window.__states = [];
             new MutationObserver(ms => ms.forEach(m => {{
               const s = window.__states, state = m.target.dataset.state;
               if (m.target.dataset.endpoint === '{spare_addr}' && state !== 'SERVING'
                   && s[s.length - 1] !== state)
                 s.push(state);
             }})).observe(document.getElementById('workers'),
               {{subtree: true, attributes: true, attributeFilter: ['data-state']}});
             return true;"
        ),
    )
    .await;
    let stopped_at = Instant::now();
    let _ = spare.stop.take().map(|stop| stop.send(()));
    let row_state = wait_js(
        &client,
        &format!(
            "const r = document.querySelector('#workers tr[data-endpoint=\"{spare_addr}\"]');
             return r && r.dataset.state !== 'SERVING' ? r.dataset.state : null;"
        ),
        Duration::from_secs(5),
        "the stopped worker's row to leave SERVING",
    )
    .await;
    let took = stopped_at.elapsed();
    let seen = js(&client, "return window.__states;").await;
    println!("stopped worker: row {row_state} after {took:?}; states seen {seen}");
    assert!(
        took < Duration::from_secs(1),
        "the row left SERVING after {took:?}"
    );
    assert_eq!(
        seen.get(0),
        Some(&json!("NOT_SERVING")),
        "the stopped worker's row shows NOT_SERVING first (the worker drains before it goes)"
    );
    wait_pool(orch.tts_pool(), "the spare out of rotation", |all| {
        state_of(all, &spare_addr) != Some(EndpointState::Serving)
    })
    .await;

    // 2. Say a sentence: it plays, and its first-audio latency is shown.
    let text_box = client.find_id("say-text").await.expect("say-text");
    text_box.clear().await.expect("clear");
    text_box
        .send_keys("Hello from the voxwire console.")
        .await
        .expect("type");
    client.click_id("say").await.expect("click say");
    let first_audio = wait_js(
        &client,
        "const s = window.voxwire.stats; return s.framesPlayed > 0 && s.lastFirstAudioMs;",
        TURN,
        "the first frame played",
    )
    .await;
    let played = wait_js(
        &client,
        "const s = window.voxwire.stats;
         return document.getElementById('session-state').textContent === 'LISTENING'
             && s.framesPlayed >= 25 ? s.framesPlayed : null;",
        TURN,
        "the sentence played through",
    )
    .await;
    println!("say: first audio {first_audio} ms in the page, {played} frames played");
    let shown = client
        .find_id("first-audio")
        .await
        .expect("first-audio")
        .text()
        .await
        .expect("text");
    assert!(shown.contains("ms"), "latency shown: {shown:?}");

    // 3. The fake microphone's speech comes back as a final transcript, and
    // with echo on it is spoken back.
    let session = stat(&client, "sessionId").await;
    client.click_id("echo").await.expect("echo on");
    wait_js(
        &client,
        &format!(
            "const s = window.voxwire.stats; return s.connected && s.sessionId !== {session};"
        ),
        Duration::from_secs(10),
        "a conversation with echo on",
    )
    .await;
    let mic = client.find_id("mic").await.expect("mic");
    mic.click().await.expect("mic on");
    let heard = wait_js(
        &client,
        "const li = document.querySelector('#transcript li.you[data-final=\"true\"]');
         return li ? li.querySelector('.text').textContent : null;",
        TURN,
        "a final transcript",
    )
    .await;
    let heard = heard.as_str().unwrap_or_default().to_string();
    mic.click().await.expect("mic off");
    let wer = voxwire_testkit::wer::word_error_rate(SPOKEN, &heard);
    println!("microphone: heard {heard:?} for {SPOKEN:?}: WER {wer:.3}");
    assert!(wer <= 0.35, "WER {wer:.3}: {heard:?}");
    wait_js(
        &client,
        "return document.querySelectorAll('#transcript li.voxwire').length >= 2
             && document.getElementById('session-state').textContent === 'LISTENING';",
        TURN,
        "the echo spoken back",
    )
    .await;

    // 4. Barge-in during a long synthesis: playback stops at once, and the
    // worker's synthesis ends.
    js(
        &client,
        "window.voxwire.stats.lastInterruptMs = null; return true;",
    )
    .await;
    text_box.clear().await.expect("clear");
    text_box.send_keys(LONG).await.expect("type");
    let before = stat(&client, "framesPlayed").await.as_u64().unwrap_or(0);
    client.click_id("say").await.expect("click say");
    wait_js(
        &client,
        &format!(
            "return window.voxwire.stats.framesPlayed >= {};",
            before + 50
        ),
        TURN,
        "a second of the long text played",
    )
    .await;
    let streams = voice_worker.running.worker.load_metrics()[ACTIVE_STREAMS];
    assert!(streams >= 1.0, "synthesis still running: {streams}");
    client.click_id("interrupt").await.expect("click interrupt");
    let interrupt_ms = wait_js(
        &client,
        "return window.voxwire.stats.lastInterruptMs;",
        Duration::from_secs(5),
        "the interrupt-to-silence time",
    )
    .await;
    let server_ms = wait_js(
        &client,
        "return window.voxwire.stats.lastServerInterruptMs;",
        Duration::from_secs(5),
        "the orchestrator's Interrupted event",
    )
    .await;
    let frames_then = stat(&client, "framesPlayed").await;
    // Silence must last: nothing of the cancelled turn may play later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stat(&client, "framesPlayed").await,
        frames_then,
        "playback stopped"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let streams = voice_worker.running.worker.load_metrics()[ACTIVE_STREAMS];
        if streams == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "worker synthesis still running: {streams}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "barge-in: {interrupt_ms} ms to silence in the page, {server_ms} ms in the orchestrator, \
         worker synthesis ended"
    );
    let (_, metrics) = orch.http_get("/metrics").await;
    assert!(
        metrics.contains("outcome=\"interrupted\""),
        "interrupted turn counted"
    );

    // 5. The page with the conversation in it.
    let png = client.screenshot().await.expect("screenshot");
    let shot = target_dir().join("console.png");
    std::fs::create_dir_all(target_dir()).expect("target dir");
    std::fs::write(&shot, &png).expect("write the screenshot");
    println!("screenshot: {} ({} bytes)", shot.display(), png.len());
    assert!(png.starts_with(b"\x89PNG"), "a PNG");

    client.close().await.expect("close the browser");
    drop(driver);
    let _ = std::fs::remove_file(&mic_wav);
    let _ = stt_stop.send(());
}
