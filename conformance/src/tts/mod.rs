//! The TTS cases. Every stream goes through `TtsStreamValidator`; a frame case
//! fails only when the validator names its rule.
//!
//! This module holds what the cases share: making a call and reading its
//! frames, validating them, sessions for a property's inputs, control
//! commands. The cases themselves are in `stream` (how frames flow),
//! `session` (sessions, limits, reports) and `interrupt` (STOP, PAUSE,
//! cancel, drain).

mod interrupt;
mod session;
mod stream;

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Status, Streaming};
use voxwire_proto::metrics;
use voxwire_proto::tts::{AudioFrame, ControlCommand, ControlRequest, TextChunk};
use voxwire_proto::tts_stream::TtsStreamValidator;
use voxwire_proto::Violation;

use crate::client::{
    end_tts_session, load_metrics, must_ok, start_tts_session, status_text, Ctx, CALL_DEADLINE,
};
use crate::outcome::{ms, CaseResult, Failure, TraceEntry};
use crate::target::Service;

pub(crate) use interrupt::{
    cancel_frees, cancel_then_next, health_drain, pause_resume, stop_scoped,
};
pub(crate) use session::{
    capacity, chunk_session, duplicate, end_idempotent, info_models, invalid_id, many_calls,
    many_calls_texts, text_limit, unknown_model, unknown_session,
};
pub(crate) use stream::{completes, early_first_frame, final_ends_input, frame_rule, latency_flat};

/// Generated long texts stop here even when the worker allows more:
/// tts/text/limit covers the advertised limit itself.
const LONG_TEXT_CAP: usize = 1_500;

/// A text long enough that its frames cannot all sit in flow-control buffers
/// (about 30 frames with this client's window) by the time a control command
/// lands: ten sentences.
fn long_text() -> String {
    (1..=10)
        .map(|i| format!("Sentence number {i} is here to make the stream long enough to stop. "))
        .collect()
}

/// How a call ended.
#[derive(Debug)]
pub(crate) enum End {
    Ok,
    Status(Status),
    /// Still open at the deadline.
    Timeout,
}

pub(crate) struct Seen<T> {
    pub msg: T,
    pub at: Duration,
}

pub(crate) struct TtsCall {
    pub frames: Vec<Seen<AudioFrame>>,
    pub end: End,
}

impl TtsCall {
    fn data_frames(&self) -> usize {
        self.frames
            .iter()
            .filter(|f| !f.msg.audio_data.is_empty())
            .count()
    }

    fn trace(&self) -> Vec<TraceEntry> {
        trace(&self.frames)
    }
}

pub(crate) fn trace(frames: &[Seen<AudioFrame>]) -> Vec<TraceEntry> {
    frames
        .iter()
        .map(|f| TraceEntry {
            sequence_number: f.msg.sequence_number,
            detail: format!(
                "{} B {} Hz/{} ms",
                f.msg.audio_data.len(),
                f.msg.sample_rate,
                f.msg.frame_duration_ms,
            ),
            is_final: f.msg.is_final,
            at_ms: ms(f.at),
        })
        .collect()
}

/// Sends `chunks` (with `delay` between them, then half-closes) and opens the
/// response stream.
async fn open_call(
    ctx: &Ctx,
    chunks: Vec<TextChunk>,
    delay: Duration,
) -> (Instant, Result<Streaming<AudioFrame>, End>) {
    let (tx, rx) = mpsc::channel(chunks.len().max(1));
    tokio::spawn(async move {
        for (i, chunk) in chunks.into_iter().enumerate() {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let opened =
        tokio::time::timeout(CALL_DEADLINE, ctx.tts().synthesize(ReceiverStream::new(rx))).await;
    let stream = match opened {
        Err(_) => Err(End::Timeout),
        Ok(Err(status)) => Err(End::Status(status)),
        Ok(Ok(response)) => Ok(response.into_inner()),
    };
    (started, stream)
}

/// Reads a stream to its end (past any final frame: what follows it is
/// exactly what the after-final rules look for) or to `deadline`.
async fn drain(
    stream: &mut Streaming<AudioFrame>,
    started: Instant,
    frames: &mut Vec<Seen<AudioFrame>>,
    deadline: Duration,
) -> End {
    loop {
        let left = deadline.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.next()).await {
            Err(_) => return End::Timeout,
            Ok(None) => return End::Ok,
            Ok(Some(Err(status))) => return End::Status(status),
            Ok(Some(Ok(frame))) => frames.push(Seen {
                msg: frame,
                at: started.elapsed(),
            }),
        }
    }
}

pub(crate) async fn call(ctx: &Ctx, chunks: Vec<TextChunk>, delay: Duration) -> TtsCall {
    let (started, stream) = open_call(ctx, chunks, delay).await;
    let mut frames = Vec::new();
    let end = match stream {
        Err(end) => end,
        Ok(mut stream) => drain(&mut stream, started, &mut frames, CALL_DEADLINE).await,
    };
    TtsCall { frames, end }
}

fn one_chunk(session: &str, text: &str) -> Vec<TextChunk> {
    vec![TextChunk {
        session_id: session.to_string(),
        text: text.to_string(),
        is_final: true,
        sequence_number: 1,
    }]
}

/// Runs the frames through the validator: the first violation and the index
/// of the frame that broke it (`None` for the stream's end).
fn validate(
    session: &str,
    frames: &[Seen<AudioFrame>],
    end: &End,
) -> Result<(), (Violation, Option<usize>)> {
    let mut validator = TtsStreamValidator::new(session);
    for (i, frame) in frames.iter().enumerate() {
        validator.observe(&frame.msg).map_err(|v| (v, Some(i)))?;
    }
    if matches!(end, End::Ok) {
        validator.finish().map_err(|v| (v, None))?;
    }
    Ok(())
}

fn end_text(end: &End) -> String {
    match end {
        End::Ok => "OK".to_string(),
        End::Status(status) => status_text(status),
        End::Timeout => format!("still open after {} s", CALL_DEADLINE.as_secs()),
    }
}

/// A call that must succeed: ends OK, every frame valid.
fn valid(session: &str, what: &str, call: &TtsCall) -> Result<(), Failure> {
    if let Err((violation, focus)) = validate(session, &call.frames, &call.end) {
        return Err(Failure::violation(&violation, call.trace(), focus));
    }
    if !matches!(call.end, End::Ok) {
        return Err(
            Failure::new(format!("{what} to end OK"), end_text(&call.end))
                .with_trace(call.trace(), None),
        );
    }
    Ok(())
}

pub(crate) async fn text_cap(ctx: &Ctx) -> Result<usize, Failure> {
    let (metrics, _) = load_metrics(ctx, Service::Tts).await?;
    let advertised = metrics
        .get(metrics::MAX_TEXT_CHARS)
        .map_or(LONG_TEXT_CAP, |v| *v as usize);
    Ok(advertised.clamp(1, LONG_TEXT_CAP))
}

/// One session for all of a property's inputs: a worker serves many calls
/// per session (tts/session/many-calls checks it).
async fn with_session<F, Fut>(ctx: Ctx, body: F) -> CaseResult
where
    F: FnOnce(Ctx, String) -> Fut,
    Fut: std::future::Future<Output = CaseResult>,
{
    let session = ctx.session_id();
    start_tts_session(&ctx, &session).await?;
    let result = body(ctx.clone(), session.clone()).await;
    end_tts_session(&ctx, &session).await;
    result
}

/// Frames of [`long_text`] on an uninterrupted call of `session`.
async fn reference_length(ctx: &Ctx, session: &str) -> Result<usize, Failure> {
    let call = call(ctx, one_chunk(session, &long_text()), Duration::ZERO).await;
    valid(session, "an uninterrupted call", &call)?;
    Ok(call.frames.len())
}

/// Under this many frames a long text ends before a command can meet it.
const MIN_REFERENCE_FRAMES: usize = 200;

async fn read_some(
    stream: &mut Streaming<AudioFrame>,
    started: Instant,
    frames: &mut Vec<Seen<AudioFrame>>,
    n: usize,
) -> Result<(), Failure> {
    while frames.len() < n {
        match tokio::time::timeout(CALL_DEADLINE, stream.next()).await {
            Ok(Some(Ok(frame))) => frames.push(Seen {
                msg: frame,
                at: started.elapsed(),
            }),
            Ok(Some(Err(status))) => return Err(Failure::new("frames", status_text(&status))),
            Ok(None) => {
                return Err(Failure::new(
                    format!("at least {n} frames"),
                    format!("the stream ended after {}", frames.len()),
                ))
            }
            Err(_) => return Err(Failure::new(format!("{n} frames"), "the stream stalled")),
        }
    }
    Ok(())
}

async fn control(ctx: &Ctx, session: &str, command: ControlCommand) -> Result<(), Failure> {
    must_ok(
        &format!("Control {command:?}"),
        ctx.tts().control(ControlRequest {
            session_id: session.to_string(),
            command: command as i32,
        }),
    )
    .await
    .map(drop)
}

#[cfg(test)]
mod tests {
    use voxwire_proto::Rule;

    use super::*;

    fn frame(seq: i64, bytes: usize, is_final: bool) -> Seen<AudioFrame> {
        Seen {
            msg: AudioFrame {
                session_id: "s".into(),
                audio_data: vec![0u8; bytes].into(),
                sample_rate: 48_000,
                frame_duration_ms: 20,
                sequence_number: seq,
                is_final,
            },
            at: Duration::ZERO,
        }
    }

    #[test]
    fn validate_points_at_the_frame_that_broke_the_rule() {
        let frames = [frame(1, 1920, false), frame(3, 1920, true)];
        let (violation, focus) = validate("s", &frames, &End::Ok).expect_err("a gap");
        assert_eq!(violation.rule, Rule::TtsSeqGap);
        assert_eq!(focus, Some(1));
        let ok = [frame(1, 1920, false), frame(2, 0, true)];
        assert!(validate("s", &ok, &End::Ok).is_ok());
        let (violation, focus) = validate("s", &ok[..1], &End::Ok).expect_err("no final");
        assert_eq!((violation.rule, focus), (Rule::TtsFinalMissing, None));
        // A stream cut by an error status owes no final frame.
        assert!(validate("s", &ok[..1], &End::Status(Status::internal("x"))).is_ok());
    }
}
