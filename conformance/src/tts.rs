//! The TTS cases. Every stream goes through `TtsStreamValidator`; a frame case
//! fails only when the validator names its rule.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Code, Status, Streaming};
use voxwire_proto::metrics;
use voxwire_proto::tts::{
    AudioFrame, ControlCommand, ControlRequest, EndSessionRequest, ListModelsRequest,
    StartSessionRequest, TextChunk,
};
use voxwire_proto::tts_stream::TtsStreamValidator;
use voxwire_proto::{Rule, Violation};

use crate::target::Service;
use crate::client::{
    end_tts_session, expect_code, load_metrics, must_ok, prompt, start_tts_session, status_text,
    Ctx, CALL_DEADLINE, PROMPT,
};
use crate::inputs::{self, TextInput};
use crate::outcome::{ensure, ms, pass, pass_with, skip, CaseResult, Failure, TraceEntry};
use crate::prop::{self, Probe};

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

pub(crate) async fn invalid_id(ctx: Ctx) -> CaseResult {
    let probe_ctx = ctx.clone();
    prop::check(&ctx, inputs::invalid_session_id, move |id: String| {
        let ctx = probe_ctx.clone();
        Box::pin(async move {
            let answer = prompt(
                "StartSession",
                ctx.tts().start_session(StartSessionRequest {
                    session_id: id.clone(),
                    ..Default::default()
                }),
            )
            .await?;
            if answer.is_ok() {
                end_tts_session(&ctx, &id).await;
            }
            expect_code(
                &format!("StartSession({id:?})"),
                answer,
                Code::InvalidArgument,
            )?;
            Ok(Probe::Checked)
        })
    })
    .await
}

pub(crate) async fn duplicate(ctx: Ctx) -> CaseResult {
    with_session(ctx, |ctx, session| async move {
        let again = prompt(
            "StartSession",
            ctx.tts().start_session(StartSessionRequest {
                session_id: session.clone(),
                ..Default::default()
            }),
        )
        .await?;
        expect_code(
            "a second StartSession with an open id",
            again,
            Code::AlreadyExists,
        )?;
        pass()
    })
    .await
}

pub(crate) async fn unknown_session(ctx: Ctx) -> CaseResult {
    let id = ctx.session_id();
    let call = call(
        &ctx,
        one_chunk(&id, "Nobody opened this session."),
        Duration::ZERO,
    )
    .await;
    match &call.end {
        End::Status(status) if status.code() == Code::NotFound && call.frames.is_empty() => {}
        other => {
            return Err(Failure::new(
                "Synthesize on a session never opened to fail NOT_FOUND with no frames",
                format!("{} frames, then {}", call.frames.len(), end_text(other)),
            )
            .with_trace(call.trace(), None))
        }
    }
    let control = prompt(
        "Control",
        ctx.tts().control(ControlRequest {
            session_id: id,
            command: ControlCommand::Stop as i32,
        }),
    )
    .await?;
    expect_code(
        "Control STOP on a session never opened",
        control,
        Code::NotFound,
    )?;
    pass()
}

pub(crate) async fn unknown_model(ctx: Ctx) -> CaseResult {
    let id = ctx.session_id();
    let answer = prompt(
        "StartSession",
        ctx.tts().start_session(StartSessionRequest {
            session_id: id.clone(),
            model_id: "voxwire-conformance-no-such-model".to_string(),
            ..Default::default()
        }),
    )
    .await?;
    if answer.is_ok() {
        end_tts_session(&ctx, &id).await;
    }
    expect_code("StartSession with an unknown model", answer, Code::NotFound)?;
    pass()
}

/// Sessions the capacity case opens at most; a worker advertising more is
/// skipped rather than flooded.
const CAPACITY_CEILING: i32 = 512;
/// Sessions that synthesize at the same time in the capacity case.
const CONCURRENT_CALLS: usize = 8;

pub(crate) async fn capacity(ctx: Ctx) -> CaseResult {
    let (_, max) = load_metrics(&ctx, Service::Tts).await?;
    ensure(
        max > 0,
        "Capabilities.max_concurrent_sessions advertised (> 0)",
        format!("{max}"),
    )?;
    if max > CAPACITY_CEILING {
        return skip(format!(
            "max_concurrent_sessions {max} is above the {CAPACITY_CEILING} this case opens"
        ));
    }
    let mut open = Vec::new();
    let result = capacity_inner(&ctx, max, &mut open).await;
    for id in &open {
        end_tts_session(&ctx, id).await;
    }
    result
}

async fn capacity_inner(ctx: &Ctx, max: i32, open: &mut Vec<String>) -> CaseResult {
    for _ in 0..max {
        let id = ctx.session_id();
        let answer = prompt(
            "StartSession",
            ctx.tts().start_session(StartSessionRequest {
                session_id: id.clone(),
                ..Default::default()
            }),
        )
        .await?;
        match answer {
            Ok(_) => {
                ctx.track_session(&id);
                open.push(id);
            }
            Err(status) => {
                return Err(Failure::new(
                    format!("{max} sessions (max_concurrent_sessions) to open"),
                    format!(
                        "session {} of {max} refused: {} (other clients on this worker count too)",
                        open.len() + 1,
                        status_text(&status)
                    ),
                ))
            }
        }
    }
    let extra = ctx.session_id();
    let answer = prompt(
        "StartSession past the limit",
        ctx.tts().start_session(StartSessionRequest {
            session_id: extra.clone(),
            ..Default::default()
        }),
    )
    .await?;
    if answer.is_ok() {
        ctx.track_session(&extra);
        open.push(extra);
    }
    expect_code(
        &format!(
            "StartSession number {} (past max_concurrent_sessions)",
            max + 1
        ),
        answer,
        Code::ResourceExhausted,
    )?;
    let mut calls = Vec::new();
    for id in open.iter().take(CONCURRENT_CALLS) {
        let ctx = ctx.clone();
        let id = id.clone();
        calls.push(tokio::spawn(async move {
            let call = call(
                &ctx,
                one_chunk(&id, "Many sessions speak at once."),
                Duration::ZERO,
            )
            .await;
            valid(&id, "a call made while every session is open", &call)
        }));
    }
    for handle in calls {
        handle
            .await
            .map_err(|e| Failure::new("the concurrent call to finish", e.to_string()))??;
    }
    pass_with(format!(
        "{max} sessions open, {} synthesizing at once",
        open.len().min(CONCURRENT_CALLS)
    ))
}

pub(crate) async fn end_idempotent(ctx: Ctx) -> CaseResult {
    let id = ctx.session_id();
    start_tts_session(&ctx, &id).await?;
    let never = ctx.session_id();
    for (what, target) in [
        ("EndSession of an open session", &id),
        ("EndSession of a session just ended", &id),
        ("EndSession of a session never opened", &never),
    ] {
        let answer = must_ok(
            what,
            ctx.tts().end_session(EndSessionRequest {
                session_id: target.clone(),
            }),
        )
        .await?;
        ensure(
            answer.success,
            format!("{what} to succeed"),
            "success: false",
        )?;
    }
    pass()
}

/// The texts of tts/session/many-calls, one per call (the goldens record them too).
pub(crate) fn many_calls_texts() -> Vec<String> {
    (1..=4)
        .map(|i| format!("Call number {i} in one session. It has two sentences."))
        .collect()
}

pub(crate) async fn many_calls(ctx: Ctx) -> CaseResult {
    with_session(ctx, |ctx, session| async move {
        for (i, text) in (1..).zip(many_calls_texts()) {
            let call = call(&ctx, one_chunk(&session, &text), Duration::ZERO).await;
            valid(&session, &format!("call {i} of 4 on one session"), &call)?;
            ensure(
                call.data_frames() > 0,
                format!("call {i} of 4 to carry audio"),
                "no data frame",
            )?;
        }
        pass()
    })
    .await
}

pub(crate) async fn chunk_session(ctx: Ctx) -> CaseResult {
    with_session(ctx, |ctx, session| async move {
        let other = ctx.session_id();
        let chunks = vec![
            TextChunk {
                session_id: session.clone(),
                text: "Hello there.".to_string(),
                is_final: false,
                sequence_number: 1,
            },
            TextChunk {
                session_id: other,
                text: " And hello from elsewhere.".to_string(),
                is_final: true,
                sequence_number: 2,
            },
        ];
        let call = call(&ctx, chunks, Duration::ZERO).await;
        match &call.end {
            End::Status(status) if status.code() == Code::InvalidArgument => pass(),
            other => Err(Failure::new(
                "a call whose second chunk names another session to fail INVALID_ARGUMENT",
                end_text(other),
            )
            .with_trace(call.trace(), None)),
        }
    })
    .await
}

/// Advertised limits above this are not exercised: the text alone would be
/// megabytes of audio.
const TEXT_LIMIT_CEILING: usize = 100_000;

pub(crate) async fn text_limit(ctx: Ctx) -> CaseResult {
    let (metrics, _) = load_metrics(&ctx, Service::Tts).await?;
    let Some(limit) = metrics.get(metrics::MAX_TEXT_CHARS).map(|v| *v as usize) else {
        return skip("the worker does not advertise max_text_chars");
    };
    if limit > TEXT_LIMIT_CEILING {
        return skip(format!(
            "max_text_chars {limit} is above {TEXT_LIMIT_CEILING}"
        ));
    }
    with_session(ctx, move |ctx, session| async move {
        let text = |n: usize| -> String { "Words to fill. ".chars().cycle().take(n).collect() };
        // At the limit: accepted. Waiting for the first frame (or a clean
        // end) shows that; synthesizing all of it is not the point.
        let (started, stream) =
            open_call(&ctx, one_chunk(&session, &text(limit)), Duration::ZERO).await;
        let mut stream = stream.map_err(|end| {
            Failure::new(
                format!("a text of exactly {limit} characters to be accepted"),
                end_text(&end),
            )
        })?;
        match tokio::time::timeout(CALL_DEADLINE, stream.next()).await {
            Ok(Some(Ok(_))) | Ok(None) => {}
            Ok(Some(Err(status))) => {
                return Err(Failure::new(
                    format!("a text of exactly {limit} characters (max_text_chars) to be accepted"),
                    status_text(&status),
                ))
            }
            Err(_) => {
                return Err(Failure::new(
                    format!("a text of exactly {limit} characters to be accepted"),
                    format!("no frame after {:?}", started.elapsed()),
                ))
            }
        }
        drop(stream);
        let call = call(&ctx, one_chunk(&session, &text(limit + 1)), Duration::ZERO).await;
        match &call.end {
            End::Status(status) if status.code() == Code::InvalidArgument => pass(),
            other => Err(Failure::new(
                format!(
                    "a text of {} characters (max_text_chars + 1) to fail INVALID_ARGUMENT",
                    limit + 1
                ),
                format!("{} frames, then {}", call.frames.len(), end_text(other)),
            )),
        }
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

pub(crate) async fn info_models(ctx: Ctx) -> CaseResult {
    let models = must_ok("ListModels", ctx.tts().list_models(ListModelsRequest {})).await?;
    let (metrics, max) = load_metrics(&ctx, Service::Tts).await?;
    let ids: Vec<String> = models
        .models
        .iter()
        .map(|m| {
            format!(
                "{}{}",
                m.model_id,
                if m.is_loaded { " (loaded)" } else { "" }
            )
        })
        .collect();
    let mut keys: Vec<String> = metrics.iter().map(|(k, v)| format!("{k}={v}")).collect();
    keys.sort();
    pass_with(format!(
        "models {ids:?}; max_concurrent_sessions {max}; metrics {}",
        keys.join(" ")
    ))
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

#[cfg(test)]
mod tests {
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
