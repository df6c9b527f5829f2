//! How a call streams: every frame rule over generated inputs, calls that
//! complete, is_final ending the input, the first frame before the input
//! ends, and first-frame latency that does not grow with the text.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use voxwire_proto::tts::TextChunk;
use voxwire_proto::Rule;

use super::{
    call, drain, end_text, one_chunk, open_call, text_cap, trace, valid, validate, with_session,
    End, Seen, TtsCall,
};
use crate::client::{status_text, Ctx, CALL_DEADLINE, PROMPT};
use crate::inputs::{self, TextInput};
use crate::outcome::{ensure, pass, pass_with, CaseResult, Failure};
use crate::prop::{self, Probe};

pub(crate) async fn frame_rule(ctx: Ctx, rule: Rule) -> CaseResult {
    let cap = text_cap(&ctx).await?;
    with_session(ctx, move |ctx, session| async move {
        let probe_ctx = ctx.clone();
        prop::check(
            &ctx,
            move || inputs::text_input(cap),
            move |input: TextInput| {
                let ctx = probe_ctx.clone();
                let session = session.clone();
                Box::pin(async move {
                    let delay = Duration::from_millis(input.delay_ms);
                    let call = call(&ctx, input.to_chunks(&session), delay).await;
                    match validate(&session, &call.frames, &call.end) {
                        Err((violation, focus)) if violation.rule == rule => {
                            Err(Failure::violation(&violation, call.trace(), focus))
                        }
                        Err((violation, _)) => Ok(Probe::Blocked(format!(
                            "the stream broke {} first",
                            violation.rule
                        ))),
                        Ok(()) => match call.end {
                            End::Ok => Ok(Probe::Checked),
                            other => {
                                Ok(Probe::Blocked(format!("a call ended {}", end_text(&other))))
                            }
                        },
                    }
                })
            },
        )
        .await
    })
    .await
}

pub(crate) async fn completes(ctx: Ctx) -> CaseResult {
    let cap = text_cap(&ctx).await?;
    with_session(ctx, move |ctx, session| async move {
        let probe_ctx = ctx.clone();
        prop::check(
            &ctx,
            move || inputs::text_input(cap),
            move |input: TextInput| {
                let ctx = probe_ctx.clone();
                let session = session.clone();
                Box::pin(async move {
                    let delay = Duration::from_millis(input.delay_ms);
                    let call = call(&ctx, input.to_chunks(&session), delay).await;
                    match call.end {
                        End::Ok => Ok(Probe::Checked),
                        ref other => Err(Failure::new(
                            format!("the call to end OK within {} s", CALL_DEADLINE.as_secs()),
                            end_text(other),
                        )
                        .with_trace(call.trace(), None)),
                    }
                })
            },
        )
        .await
    })
    .await
}

/// How long the first frame may take once a sentence is complete.
const EARLY_WAIT: Duration = Duration::from_secs(5);
/// How long a failing streaming case waits, once it closed the input, to
/// tell a worker that buffers from one that does not answer.
const AFTER_CLOSE_WAIT: Duration = Duration::from_secs(10);
/// How long a short call may take to end after its is_final chunk.
const FINAL_ENDS_WAIT: Duration = Duration::from_secs(10);

/// The client ends its input with is_final and keeps its request stream
/// open: a worker MUST treat that as it treats a half-close
/// (docs/protocol.md, TTS sessions and requests). One that waits for the
/// half-close never answers such a client.
pub(crate) async fn final_ends_input(ctx: Ctx) -> CaseResult {
    with_session(ctx, |ctx, session| async move {
        let (tx, rx) = mpsc::channel(1);
        let _ = tx
            .send(TextChunk {
                session_id: session.clone(),
                text: "The input ends here.".to_string(),
                is_final: true,
                sequence_number: 1,
            })
            .await;
        let started = Instant::now();
        // `tx` stays alive: the request stream is not half-closed.
        let opened =
            tokio::time::timeout(FINAL_ENDS_WAIT, ctx.tts().synthesize(ReceiverStream::new(rx)))
                .await;
        let mut frames = Vec::new();
        let (end, stream) = match opened {
            Err(_) => (End::Timeout, None),
            Ok(Err(status)) => (End::Status(status), None),
            Ok(Ok(response)) => {
                let mut stream = response.into_inner();
                let end = drain(&mut stream, started, &mut frames, FINAL_ENDS_WAIT).await;
                (end, Some(stream))
            }
        };
        if matches!(end, End::Timeout) {
            let held = frames.len();
            drop(tx);
            let closed = Instant::now();
            let after = match stream {
                Some(mut stream) => {
                    let end = drain(&mut stream, started, &mut frames, FINAL_ENDS_WAIT + AFTER_CLOSE_WAIT).await;
                    match end {
                        End::Ok if frames.len() > held => format!(
                            "; after the half-close {} frame(s) came within {:?}: the worker waits \
                             for the half-close, not for is_final",
                            frames.len() - held,
                            closed.elapsed()
                        ),
                        End::Ok => "; after the half-close the call ended".to_string(),
                        End::Status(status) => format!("; after the half-close: {}", status_text(&status)),
                        End::Timeout => "; nor after the half-close".to_string(),
                    }
                }
                None => "; not even the response headers came".to_string(),
            };
            return Err(Failure::new(
                "the call to end (final frame, OK) once a chunk with is_final arrived, the request stream still open",
                format!(
                    "{held} frame(s) and no end within {} s while the request stream stayed open{after}",
                    FINAL_ENDS_WAIT.as_secs()
                ),
            )
            .with_trace(trace(&frames), None));
        }
        drop(tx);
        let call = TtsCall { frames, end };
        valid(&session, "the call ended by is_final", &call)?;
        ensure(
            call.data_frames() > 0,
            "the call ended by is_final to carry audio",
            "no data frame",
        )?;
        pass()
    })
    .await
}

pub(crate) async fn early_first_frame(ctx: Ctx) -> CaseResult {
    with_session(ctx, |ctx, session| async move {
        let (tx, rx) = mpsc::channel(4);
        let chunk = |text: &str, is_final: bool, seq: i64| TextChunk {
            session_id: session.clone(),
            text: text.to_string(),
            is_final,
            sequence_number: seq,
        };
        let _ = tx
            .send(chunk("The first sentence is complete.", false, 1))
            .await;
        let started = Instant::now();
        let mut stream =
            tokio::time::timeout(PROMPT, ctx.tts().synthesize(ReceiverStream::new(rx)))
                .await
                .map_err(|_| Failure::new("the call to open", "no response headers within 5 s"))?
                .map_err(|s| Failure::new("the call to open", status_text(&s)))?
                .into_inner();
        let first = tokio::time::timeout(EARLY_WAIT, stream.next()).await;
        let first = match first {
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(status))) => {
                return Err(Failure::new("a first frame", status_text(&status)))
            }
            Ok(None) => {
                return Err(Failure::new(
                    "a first frame",
                    "the stream ended before the input did",
                ))
            }
            Err(_) => {
                // Say what the worker waits for: end the input and time it.
                let _ = tx.send(chunk(" And the second one.", true, 2)).await;
                drop(tx);
                let closed = Instant::now();
                let after = match tokio::time::timeout(AFTER_CLOSE_WAIT, stream.next()).await {
                    Ok(Some(Ok(_))) => format!(
                        "; the first frame came {:?} after the input closed: the worker holds \
                         its audio until the end of input",
                        closed.elapsed()
                    ),
                    Ok(Some(Err(status))) => {
                        format!("; once the input closed: {}", status_text(&status))
                    }
                    Ok(None) => "; the stream then ended with no frame".to_string(),
                    Err(_) => format!(
                        "; none within {} s after the input closed either",
                        AFTER_CLOSE_WAIT.as_secs()
                    ),
                };
                return Err(Failure::new(
                    "a frame once the first sentence is complete, before the input ends",
                    format!(
                        "no frame within {} s while the input stayed open{after}",
                        EARLY_WAIT.as_secs()
                    ),
                ));
            }
        };
        let latency = started.elapsed();
        let _ = tx.send(chunk(" And the second one.", true, 2)).await;
        drop(tx);
        let mut frames = vec![Seen {
            msg: first,
            at: latency,
        }];
        let end = drain(&mut stream, started, &mut frames, CALL_DEADLINE).await;
        let whole = TtsCall { frames, end };
        valid(&session, "the call", &whole)?;
        pass_with(format!("first frame after {latency:?} with the input open"))
    })
    .await
}

async fn first_frame_latency(ctx: &Ctx, session: &str, text: &str) -> Result<Duration, Failure> {
    let (started, stream) = open_call(ctx, one_chunk(session, text), Duration::ZERO).await;
    let mut stream = stream.map_err(|end| Failure::new("the call to open", end_text(&end)))?;
    match tokio::time::timeout(CALL_DEADLINE, stream.next()).await {
        Ok(Some(Ok(_))) => Ok(started.elapsed()),
        Ok(Some(Err(status))) => Err(Failure::new("a first frame", status_text(&status))),
        Ok(None) => Err(Failure::new("a first frame", "the stream ended with none")),
        Err(_) => Err(Failure::new(
            "a first frame",
            "none within the call deadline",
        )),
    }
}

/// Slack on top of 2x: a fast engine's first frame takes about a
/// millisecond, where scheduling noise alone can double it.
const LATENCY_SLACK: Duration = Duration::from_millis(25);

pub(crate) async fn latency_flat(ctx: Ctx) -> CaseResult {
    with_session(ctx, |ctx, session| async move {
        let one = "This is a single sentence of ordinary length.";
        let ten = [one; 10].join(" ");
        // Warm-up: the first call of a session may pay for loading.
        first_frame_latency(&ctx, &session, one).await?;
        let mut short = Vec::new();
        let mut long = Vec::new();
        for _ in 0..3 {
            short.push(first_frame_latency(&ctx, &session, one).await?);
            long.push(first_frame_latency(&ctx, &session, &ten).await?);
        }
        short.sort();
        long.sort();
        let (s, l) = (short[1], long[1]);
        ensure(
            l <= s * 2 + LATENCY_SLACK,
            format!(
                "first frame for ten sentences within 2x (+{LATENCY_SLACK:?}) of one sentence's"
            ),
            format!("median {l:?} for ten sentences, {s:?} for one"),
        )?;
        pass_with(format!("median first frame: one sentence {s:?}, ten {l:?}"))
    })
    .await
}
