//! Barge-in: from the client sending an interrupt on Converse to the last
//! audio frame it receives, through the orchestrator to a tone worker paced
//! at real time.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use voxwire_proto::voxwire::v1::voxwire_client::VoxwireClient;
use voxwire_proto::voxwire::v1::{
    converse_event, converse_request, ConverseConfig, ConverseEvent, ConverseRequest, Interrupt,
};

use crate::client::{connect, tone_text};
use crate::error::{BenchError, Result};
use crate::procs::Bins;
use crate::stack::{self, Engine, StackSpec};
use crate::stats::Pcts;

#[derive(Debug, Clone)]
pub struct BargeConfig {
    pub runs: usize,
    /// Audio frames of a turn received before interrupting it.
    pub frames_before: usize,
    /// After the Interrupted event, how long to keep listening for stray audio.
    pub linger: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct BargeResult {
    pub runs: usize,
    /// Interrupt sent to the last audio frame received (0 when none came after it).
    pub interrupt_to_silence_ms: Pcts,
    /// Interrupt sent to the Interrupted event received.
    pub interrupt_to_ack_ms: Pcts,
    /// The orchestrator's own figure (interrupt arrival to its last frame sent).
    pub server_reported_ms: Pcts,
    pub frames_after_interrupt: Pcts,
    /// Audio frames of an interrupted turn received after its Interrupted event (must be 0).
    pub frames_after_ack: u64,
}

pub async fn run(config: &BargeConfig, bins: &Bins, logs: &Path) -> Result<BargeResult> {
    let spec = StackSpec {
        workers: 1,
        engine: Engine::Tone { realtime: true },
        orchestrator: true,
        bare_relay: false,
        stt: None,
    };
    let mut stack = stack::start(&spec, bins, logs, "barge-in").await?;
    let addr = stack
        .orchestrator()
        .ok_or_else(|| BenchError::Setup("no orchestrator".into()))?
        .addr
        .clone();
    let mut client = VoxwireClient::new(connect(&addr).await?);
    let (tx, rx) = mpsc::channel(16);
    send(
        &tx,
        converse_request::Request::Config(ConverseConfig {
            session_id: "barge-in".into(),
            input_sample_rate: 16_000,
            ..Default::default()
        }),
    )
    .await?;
    let mut events = client.converse(ReceiverStream::new(rx)).await?.into_inner();
    let text = tone_text(10.0);
    let (mut silence, mut ack, mut server, mut after) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut frames_after_ack = 0;
    // Run 0 is a warm-up (it opens the session on the worker).
    for run in 0..=config.runs {
        send(&tx, converse_request::Request::Say(text.clone())).await?;
        let turn = wait_for_audio(&mut events, config.frames_before).await?;
        // Interrupt at varying points between two frames.
        tokio::time::sleep(Duration::from_millis((run as u64 * 7) % 20)).await;
        let sent = Instant::now();
        send(&tx, converse_request::Request::Interrupt(Interrupt {})).await?;
        let mut last_audio = None;
        let mut frames = 0u32;
        let (acked, reported_us) = loop {
            let event = next(&mut events).await?;
            match event.event {
                Some(converse_event::Event::Audio(frame))
                    if event.turn_id == turn && !frame.audio_data.is_empty() =>
                {
                    last_audio = Some(Instant::now());
                    frames += 1;
                }
                Some(converse_event::Event::Interrupted(i)) => {
                    break (sent.elapsed(), i.interrupt_to_silence_us)
                }
                Some(converse_event::Event::Error(e)) => {
                    return Err(BenchError::Setup(format!(
                        "turn error during barge-in: {} {}",
                        e.code, e.message
                    )))
                }
                _ => {}
            }
        };
        // Nothing of the interrupted turn may follow its Interrupted event.
        let until = Instant::now() + config.linger;
        while let Ok(event) = tokio::time::timeout_at(until.into(), next(&mut events)).await {
            let event = event?;
            if let Some(converse_event::Event::Audio(_)) = event.event {
                if event.turn_id == turn {
                    frames_after_ack += 1;
                }
            }
        }
        stack.check_alive()?;
        if run == 0 {
            continue;
        }
        silence.push(last_audio.map_or(0.0, |t| (t - sent).as_secs_f64() * 1000.0));
        ack.push(acked.as_secs_f64() * 1000.0);
        server.push(reported_us as f64 / 1000.0);
        after.push(f64::from(frames));
    }
    let result = BargeResult {
        runs: config.runs,
        interrupt_to_silence_ms: Pcts::of(silence),
        interrupt_to_ack_ms: Pcts::of(ack),
        server_reported_ms: Pcts::of(server),
        frames_after_interrupt: Pcts::of(after),
        frames_after_ack,
    };
    println!(
        "  barge-in: interrupt to silence p50 {:.2} p95 {:.2} ms, to the Interrupted event p50 {:.2} p95 {:.2} ms ({} runs; {} frames after the event)",
        result.interrupt_to_silence_ms.p50,
        result.interrupt_to_silence_ms.p95,
        result.interrupt_to_ack_ms.p50,
        result.interrupt_to_ack_ms.p95,
        config.runs,
        frames_after_ack
    );
    Ok(result)
}

async fn send(
    tx: &mpsc::Sender<ConverseRequest>,
    request: converse_request::Request,
) -> Result<()> {
    tx.send(ConverseRequest {
        request: Some(request),
    })
    .await
    .map_err(|_| BenchError::Setup("the Converse stream closed".into()))
}

async fn next(events: &mut Streaming<ConverseEvent>) -> Result<ConverseEvent> {
    events
        .message()
        .await?
        .ok_or_else(|| BenchError::Setup("the Converse stream ended".into()))
}

/// Reads events until `frames` audio frames of one turn arrived; returns the turn.
async fn wait_for_audio(events: &mut Streaming<ConverseEvent>, frames: usize) -> Result<u64> {
    let mut seen = 0;
    loop {
        let event = next(events).await?;
        match event.event {
            Some(converse_event::Event::Audio(frame)) if !frame.audio_data.is_empty() => {
                seen += 1;
                if seen >= frames {
                    return Ok(event.turn_id);
                }
            }
            Some(converse_event::Event::Error(e)) => {
                return Err(BenchError::Setup(format!(
                    "turn error: {} {}",
                    e.code, e.message
                )))
            }
            _ => {}
        }
    }
}
