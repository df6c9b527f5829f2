//! Calls interrupted: STOP scoped to its session, PAUSE and RESUME, a
//! cancelled call freeing its slot and its session, and the drain.

use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use tonic::Code;
use voxwire_proto::metrics;
use voxwire_proto::tts::{ControlCommand, StartSessionRequest};

use super::{
    call, control, drain, end_text, long_text, one_chunk, open_call, read_some, reference_length,
    trace, valid, with_session, Seen, TtsCall, MIN_REFERENCE_FRAMES,
};
use crate::client::{
    end_tts_session, expect_code, load_metrics, prompt, start_tts_session, status_text, Ctx,
    CALL_DEADLINE, PROMPT,
};
use crate::outcome::{ensure, pass, pass_with, skip, CaseResult, Failure};
use crate::target::Service;

pub(crate) async fn stop_scoped(ctx: Ctx) -> CaseResult {
    let (a, b) = (ctx.session_id(), ctx.session_id());
    start_tts_session(&ctx, &a).await?;
    if let Err(failure) = start_tts_session(&ctx, &b).await {
        end_tts_session(&ctx, &a).await;
        return Err(failure);
    }
    let result = stop_scoped_inner(&ctx, &a, &b).await;
    end_tts_session(&ctx, &a).await;
    end_tts_session(&ctx, &b).await;
    result
}

async fn stop_scoped_inner(ctx: &Ctx, a: &str, b: &str) -> CaseResult {
    let full = reference_length(ctx, b).await?;
    if full < MIN_REFERENCE_FRAMES {
        return skip(format!(
            "ten sentences give only {full} frames: too short to stop mid-stream"
        ));
    }
    let (a_start, a_stream) = open_call(ctx, one_chunk(a, &long_text()), Duration::ZERO).await;
    let (b_start, b_stream) = open_call(ctx, one_chunk(b, &long_text()), Duration::ZERO).await;
    let mut a_stream = a_stream.map_err(|e| Failure::new("call on a to open", end_text(&e)))?;
    let mut b_stream = b_stream.map_err(|e| Failure::new("call on b to open", end_text(&e)))?;
    let (mut a_frames, mut b_frames) = (Vec::new(), Vec::new());
    read_some(&mut a_stream, a_start, &mut a_frames, 3).await?;
    read_some(&mut b_stream, b_start, &mut b_frames, 3).await?;
    control(ctx, a, ControlCommand::Stop).await?;
    let a_end = drain(&mut a_stream, a_start, &mut a_frames, CALL_DEADLINE).await;
    let a_call = TtsCall {
        frames: a_frames,
        end: a_end,
    };
    valid(a, "the stopped call on session a", &a_call)?;
    ensure(
        a_call.frames.len() < full / 2,
        format!(
            "STOP to end session a's synthesis early (an uninterrupted call has {full} frames)"
        ),
        format!("session a's call ran to {} frames", a_call.frames.len()),
    )
    .map_err(|f| f.with_trace(a_call.trace(), None))?;
    let b_end = drain(&mut b_stream, b_start, &mut b_frames, CALL_DEADLINE).await;
    let b_call = TtsCall {
        frames: b_frames,
        end: b_end,
    };
    valid(b, "the call on session b", &b_call)?;
    ensure(
        b_call.frames.len() * 10 >= full * 9,
        format!("session b's call, not stopped, to run to its end (about {full} frames)"),
        format!(
            "it ended after {} frames: STOP on a reached b",
            b_call.frames.len()
        ),
    )
    .map_err(|f| f.with_trace(b_call.trace(), None))?;
    let again = call(
        ctx,
        one_chunk(a, "Still here after the stop."),
        Duration::ZERO,
    )
    .await;
    valid(a, "a call on session a after STOP", &again)?;
    ensure(
        again.data_frames() > 0,
        "audio on session a after STOP",
        "no data frame",
    )?;
    pass_with(format!(
        "a stopped at {} frames, b ran {} of {full}",
        a_call.frames.len(),
        b_call.frames.len()
    ))
}

/// A paused stream counts as quiet once no frame came for this long.
const QUIET: Duration = Duration::from_millis(700);
/// The most a PAUSE may take to quiet a stream.
const PAUSE_SETTLE: Duration = Duration::from_secs(10);

pub(crate) async fn pause_resume(ctx: Ctx) -> CaseResult {
    with_session(ctx, |ctx, session| async move {
        let full = reference_length(&ctx, &session).await?;
        if full < MIN_REFERENCE_FRAMES {
            return skip(format!(
                "ten sentences give only {full} frames: too short to pause mid-stream"
            ));
        }
        let (started, stream) =
            open_call(&ctx, one_chunk(&session, &long_text()), Duration::ZERO).await;
        let mut stream = stream.map_err(|e| Failure::new("the call to open", end_text(&e)))?;
        let mut frames = Vec::new();
        read_some(&mut stream, started, &mut frames, 3).await?;
        control(&ctx, &session, ControlCommand::Pause).await?;
        let paused_at = frames.len();
        let settle = Instant::now();
        loop {
            let during = frames.len() - paused_at;
            if during > full / 2 || settle.elapsed() > PAUSE_SETTLE {
                let _ = control(&ctx, &session, ControlCommand::Resume).await;
                return Err(Failure::new(
                    "PAUSE to hold the session's frames (after what was already in flight)",
                    format!(
                        "{during} frames arrived in {:?} after PAUSE",
                        settle.elapsed()
                    ),
                )
                .with_trace(trace(&frames), Some(paused_at)));
            }
            match tokio::time::timeout(QUIET, stream.next()).await {
                Err(_) => break,
                Ok(Some(Ok(frame))) => frames.push(Seen {
                    msg: frame,
                    at: started.elapsed(),
                }),
                Ok(Some(Err(status))) => {
                    return Err(Failure::new(
                        "the paused stream to stay open",
                        status_text(&status),
                    ))
                }
                Ok(None) => {
                    return Err(Failure::new(
                        "the paused stream to stay open",
                        format!("it ended after {} frames while paused", frames.len()),
                    )
                    .with_trace(trace(&frames), Some(paused_at)))
                }
            }
        }
        let held = frames.len();
        control(&ctx, &session, ControlCommand::Resume).await?;
        let end = drain(&mut stream, started, &mut frames, CALL_DEADLINE).await;
        let whole = TtsCall { frames, end };
        valid(&session, "the paused and resumed call", &whole)?;
        ensure(
            whole.frames.len() * 10 >= full * 9,
            format!("RESUME to let the rest through (about {full} frames in all)"),
            format!("{} frames", whole.frames.len()),
        )?;
        pass_with(format!(
            "held at {held} frames of {full}, resumed to {}",
            whole.frames.len()
        ))
    })
    .await
}

/// How long a worker may take to notice a cancelled call.
const CANCEL_NOTICE: Duration = Duration::from_secs(5);
const METRIC_POLL: Duration = Duration::from_millis(20);

pub(crate) async fn cancel_frees(ctx: Ctx) -> CaseResult {
    with_session(ctx, |ctx, session| async move {
        let streams = |m: &std::collections::HashMap<String, f64>| m.get(metrics::ACTIVE_STREAMS).copied();
        let (before, _) = load_metrics(&ctx, Service::Tts).await?;
        let before = streams(&before);
        let (started, stream) = open_call(&ctx, one_chunk(&session, &long_text()), Duration::ZERO).await;
        let mut stream = stream.map_err(|e| Failure::new("the call to open", end_text(&e)))?;
        let mut frames = Vec::new();
        read_some(&mut stream, started, &mut frames, 1).await?;
        drop(stream);
        let cancelled = Instant::now();
        let mut note = "active_streams not advertised; only the next call was checked".to_string();
        if let Some(before) = before {
            loop {
                let (now, _) = load_metrics(&ctx, Service::Tts).await?;
                let now = streams(&now).unwrap_or(f64::NAN);
                if now <= before {
                    note = format!("active_streams back to {before} after {:?}", cancelled.elapsed());
                    break;
                }
                if cancelled.elapsed() > CANCEL_NOTICE {
                    return Err(Failure::new(
                        format!("active_streams back to {before} within {CANCEL_NOTICE:?} of the cancel"),
                        format!("still {now}"),
                    ));
                }
                // Polling a gauge: there is no event to wait on from outside.
                tokio::time::sleep(METRIC_POLL).await;
            }
        }
        let next = call(&ctx, one_chunk(&session, "The next request."), Duration::ZERO).await;
        valid(&session, "the call after the cancelled one", &next)?;
        pass_with(note)
    })
    .await
}

/// Regression (named after a bug found in the orchestrator, which once left a
/// turn holding its session lock forever when a client cancelled a Speak): a
/// cancelled call must not keep its session busy. Unlike tts/cancel/frees,
/// nothing waits for the worker to notice the cancel: the very next request on
/// the same session goes out at once and must be served promptly.
pub(crate) async fn cancel_then_next(ctx: Ctx) -> CaseResult {
    with_session(ctx, |ctx, session| async move {
        let (started, stream) =
            open_call(&ctx, one_chunk(&session, &long_text()), Duration::ZERO).await;
        let mut stream = stream.map_err(|e| Failure::new("the call to open", end_text(&e)))?;
        let mut frames = Vec::new();
        read_some(&mut stream, started, &mut frames, 1).await?;
        drop(stream);
        let expected = format!(
            "the next call on the session, sent right after the cancel, to complete within {} s",
            PROMPT.as_secs()
        );
        let next = tokio::time::timeout(
            PROMPT,
            call(
                &ctx,
                one_chunk(&session, "The next request."),
                Duration::ZERO,
            ),
        )
        .await
        .map_err(|_| {
            Failure::new(
                &expected,
                "it did not: the cancelled call still holds the session",
            )
        })?;
        valid(&session, "the call right after the cancelled one", &next)?;
        ensure(
            next.data_frames() > 0,
            "the call right after the cancelled one to carry audio",
            "no data frame",
        )?;
        pass()
    })
    .await
}

/// HEALTH-DRAIN, last of the TTS cases: it ends the worker.
pub(crate) async fn health_drain(ctx: Ctx) -> CaseResult {
    let session = ctx.session_id();
    let busy = async {
        start_tts_session(&ctx, &session).await?;
        let (started, stream) =
            open_call(&ctx, one_chunk(&session, &long_text()), Duration::ZERO).await;
        let mut stream = stream.map_err(|e| Failure::new("the call to open", end_text(&e)))?;
        let mut frames = Vec::new();
        read_some(&mut stream, started, &mut frames, 1).await?;
        Ok((started, stream, frames))
    };
    let Some((started, mut stream, mut frames)) =
        crate::client::drain_to_not_serving(&ctx, Service::Tts, busy).await?
    else {
        return skip(crate::client::NO_DRAIN);
    };
    let refused = prompt(
        "StartSession while draining",
        ctx.tts().start_session(StartSessionRequest {
            session_id: ctx.session_id(),
            ..Default::default()
        }),
    )
    .await?;
    expect_code("StartSession while draining", refused, Code::Unavailable)?;
    let end = drain(&mut stream, started, &mut frames, CALL_DEADLINE).await;
    let call = TtsCall { frames, end };
    valid(&session, "the call in flight when the drain began", &call)?;
    pass()
}
