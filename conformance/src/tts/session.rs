//! Sessions and limits: ids, duplicates, unknown sessions and models,
//! capacity, EndSession, many calls per session, chunks of another session,
//! the text limit, and what the worker reports (ListModels, capabilities).

use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::Code;
use voxwire_proto::metrics;
use voxwire_proto::tts::{
    ControlCommand, ControlRequest, EndSessionRequest, ListModelsRequest, StartSessionRequest,
    TextChunk,
};

use super::{call, end_text, one_chunk, open_call, valid, with_session, End};
use crate::client::{
    end_tts_session, expect_code, load_metrics, must_ok, prompt, start_tts_session, status_text,
    Ctx, CALL_DEADLINE,
};
use crate::inputs;
use crate::outcome::{ensure, pass, pass_with, skip, CaseResult, Failure};
use crate::prop::{self, Probe};
use crate::target::Service;

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
