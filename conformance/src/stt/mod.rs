//! The STT cases. Every Recognize stream goes through `SttStreamValidator`;
//! an event case fails only when the validator names its rule. The cases on
//! what a client may send are in `request`.

mod request;

pub(crate) use request::*;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::{Code, Status};
use voxwire_proto::metrics;
use voxwire_proto::stt::{RecognizeRequest, TranscriptEvent};
use voxwire_proto::stt_stream::SttStreamValidator;
use voxwire_proto::{Rule, Violation};

use crate::client::{load_metrics, must_ok, status_text, Ctx, CALL_DEADLINE, PROMPT};
use crate::inputs::{self, audio_request, config_request, AudioEnd, AudioInput, Segment};
use crate::outcome::{ensure, ms, pass, pass_with, skip, CaseResult, Failure, TraceEntry};
use crate::prop::{self, Probe};
use crate::target::Service;

const DEFAULT_RATES: [u32; 5] = [8_000, 16_000, 22_050, 44_100, 48_000];
/// The chunk limit assumed when the worker advertises none (the proto
/// crate's default).
const DEFAULT_CHUNK_BYTES: usize = 96_000;

#[derive(Debug)]
enum End {
    Ok,
    Status(Status),
    Timeout,
}

fn end_text(end: &End) -> String {
    match end {
        End::Ok => "OK".to_string(),
        End::Status(status) => status_text(status),
        End::Timeout => "still open at the deadline".to_string(),
    }
}

struct Seen {
    event: TranscriptEvent,
    at: Duration,
    /// Whether the client had ended its audio when the event arrived.
    after_end: bool,
}

struct SttCall {
    events: Vec<Seen>,
    end: End,
    /// When the client's end of audio went out, since the call started.
    end_sent: Option<Duration>,
}

impl SttCall {
    fn trace(&self) -> Vec<TraceEntry> {
        self.events
            .iter()
            .map(|s| TraceEntry {
                sequence_number: s.event.sequence_number,
                detail: format!(
                    "utt {} {:?} {}-{} ms{}",
                    s.event.utterance_id,
                    s.event.text,
                    s.event.start_ms,
                    s.event.end_ms,
                    if s.after_end {
                        " (after end of audio)"
                    } else {
                        ""
                    }
                ),
                is_final: s.event.is_final,
                at_ms: ms(s.at),
            })
            .collect()
    }
}

/// Streams `requests` (with `pace` between them). The end of audio is the
/// last request when `ends_audio`; a half-close follows either way.
async fn recognize(
    ctx: &Ctx,
    requests: Vec<RecognizeRequest>,
    pace: Duration,
    ends_audio: bool,
    deadline: Duration,
) -> SttCall {
    let (tx, rx) = mpsc::channel(requests.len().max(1));
    let ended = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let end_sent = Arc::new(std::sync::Mutex::new(None));
    {
        let ended = Arc::clone(&ended);
        let end_sent = Arc::clone(&end_sent);
        tokio::spawn(async move {
            let n = requests.len();
            for (i, request) in requests.into_iter().enumerate() {
                if i > 0 && !pace.is_zero() {
                    tokio::time::sleep(pace).await;
                }
                if tx.send(request).await.is_err() {
                    return;
                }
                if i + 1 == n && ends_audio {
                    *end_sent.lock().unwrap_or_else(|e| e.into_inner()) = Some(started.elapsed());
                    ended.store(true, Ordering::SeqCst);
                }
            }
            if !ends_audio {
                drop(tx);
                *end_sent.lock().unwrap_or_else(|e| e.into_inner()) = Some(started.elapsed());
                ended.store(true, Ordering::SeqCst);
            }
        });
    }
    let rx = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut events = Vec::new();
    let end = match tokio::time::timeout(deadline, ctx.stt().recognize(rx)).await {
        Err(_) => End::Timeout,
        Ok(Err(status)) => End::Status(status),
        Ok(Ok(response)) => {
            let mut stream = response.into_inner();
            loop {
                let left = deadline.saturating_sub(started.elapsed());
                match tokio::time::timeout(left, stream.next()).await {
                    Err(_) => break End::Timeout,
                    Ok(None) => break End::Ok,
                    Ok(Some(Err(status))) => break End::Status(status),
                    Ok(Some(Ok(event))) => events.push(Seen {
                        event,
                        at: started.elapsed(),
                        after_end: ended.load(Ordering::SeqCst),
                    }),
                }
            }
        }
    };
    let end_sent = *end_sent.lock().unwrap_or_else(|e| e.into_inner());
    SttCall {
        events,
        end,
        end_sent,
    }
}

fn validate(
    session: &str,
    partials: bool,
    call: &SttCall,
) -> Result<(), (Violation, Option<usize>)> {
    let mut validator = SttStreamValidator::new(session, partials);
    let mut told = false;
    for (i, seen) in call.events.iter().enumerate() {
        if seen.after_end && !told {
            validator.end_of_audio();
            told = true;
        }
        validator.observe(&seen.event).map_err(|v| (v, Some(i)))?;
    }
    if matches!(call.end, End::Ok) {
        if call.end_sent.is_some() && !told {
            validator.end_of_audio();
        }
        validator.finish().map_err(|v| (v, None))?;
    }
    Ok(())
}

struct Limits {
    rates: Vec<u32>,
    max_chunk_bytes: usize,
}

async fn limits(ctx: &Ctx) -> Result<Limits, Failure> {
    let caps = must_ok(
        "GetCapabilities",
        ctx.stt()
            .get_capabilities(voxwire_proto::stt::GetCapabilitiesRequest {}),
    )
    .await?;
    let mut rates: Vec<u32> = caps
        .capabilities
        .map(|c| c.sample_rates)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| u32::try_from(r).ok())
        .filter(|r| voxwire_proto::audio::STT_SAMPLE_RATES.contains(r))
        .collect();
    if rates.is_empty() {
        rates = DEFAULT_RATES.to_vec();
    }
    let max_chunk_bytes = caps
        .metrics
        .get(metrics::MAX_CHUNK_BYTES)
        .map_or(DEFAULT_CHUNK_BYTES, |v| *v as usize);
    Ok(Limits {
        rates,
        max_chunk_bytes,
    })
}

async fn run_input(
    ctx: &Ctx,
    session: &str,
    input: &AudioInput,
    max_chunk_bytes: usize,
    deadline: Duration,
) -> SttCall {
    recognize(
        ctx,
        input.requests(session, max_chunk_bytes),
        Duration::from_millis(input.pace_ms),
        input.end != AudioEnd::HalfClose,
        deadline,
    )
    .await
}

pub(crate) async fn event_rule(ctx: Ctx, rule: Rule) -> CaseResult {
    let limits = limits(&ctx).await?;
    let partials = match rule {
        Rule::SttPartialUnrequested => Some(false),
        // Only partials leave an utterance open: without them these rules
        // have nothing to look at.
        Rule::SttPartialEmpty | Rule::SttUtteranceOverlap | Rule::SttFinalMissing => Some(true),
        _ => None,
    };
    let probe_ctx = ctx.clone();
    let max_chunk = limits.max_chunk_bytes;
    prop::check(
        &ctx,
        move || inputs::audio_input(limits.rates, partials),
        move |input: AudioInput| {
            let ctx = probe_ctx.clone();
            Box::pin(async move {
                let session = ctx.session_id();
                let call = run_input(&ctx, &session, &input, max_chunk, CALL_DEADLINE).await;
                match validate(&session, input.partials, &call) {
                    Err((violation, focus)) if violation.rule == rule => {
                        Err(Failure::violation(&violation, call.trace(), focus))
                    }
                    Err((violation, _)) => Ok(Probe::Blocked(format!(
                        "the stream broke {} first",
                        violation.rule
                    ))),
                    Ok(()) => match call.end {
                        End::Ok => Ok(Probe::Checked),
                        other => Ok(Probe::Blocked(format!("a call ended {}", end_text(&other)))),
                    },
                }
            })
        },
    )
    .await
}

fn silence(rate: u32, ms: u32) -> Vec<u8> {
    vec![0u8; (rate * ms / 1000) as usize * 2]
}

/// A call that must fail with `code`, the error arriving in time.
async fn expect_status(
    ctx: &Ctx,
    what: &str,
    requests: Vec<RecognizeRequest>,
    code: Code,
) -> Result<(), Failure> {
    let call = recognize(ctx, requests, Duration::ZERO, true, CALL_DEADLINE).await;
    match &call.end {
        End::Status(status) if status.code() == code => Ok(()),
        other => Err(Failure::new(
            format!("{what} to fail {code:?}"),
            format!("{} events, then {}", call.events.len(), end_text(other)),
        )
        .with_trace(call.trace(), None)),
    }
}

const CAPACITY_CEILING: i32 = 256;

pub(crate) async fn capacity(ctx: Ctx) -> CaseResult {
    let (_, max) = load_metrics(&ctx, Service::Stt).await?;
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
    // Each held stream: config and a little audio sent, input kept open.
    let mut held = Vec::new();
    for _ in 0..max {
        let session = ctx.session_id();
        let (tx, rx) = mpsc::channel(4);
        let _ = tx.send(config_request(&session, 16_000, false)).await;
        let _ = tx.send(audio_request(silence(16_000, 100), false)).await;
        // Awaiting the response headers: a worker admits a stream before it
        // answers, so the next one is counted after this one.
        let opened = tokio::time::timeout(
            PROMPT,
            ctx.stt()
                .recognize(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await;
        match opened {
            Ok(Ok(response)) => held.push((session, tx, response.into_inner())),
            Ok(Err(status)) => {
                return Err(Failure::new(
                    format!("{max} streams (max_concurrent_sessions) to be served"),
                    format!(
                        "stream {} refused: {}",
                        held.len() + 1,
                        status_text(&status)
                    ),
                ))
            }
            Err(_) => {
                return Err(Failure::new(
                    format!("{max} streams to open"),
                    format!(
                        "stream {} got no response headers within 5 s",
                        held.len() + 1
                    ),
                ))
            }
        }
    }
    let session = ctx.session_id();
    let extra = tokio::time::timeout(
        PROMPT * 2,
        recognize(
            &ctx,
            vec![
                config_request(&session, 16_000, false),
                audio_request(silence(16_000, 200), true),
            ],
            Duration::ZERO,
            true,
            CALL_DEADLINE,
        ),
    )
    .await;
    let outcome = match extra {
        Err(_) => Err(Failure::new(
            format!(
                "stream {} (past max_concurrent_sessions) to fail RESOURCE_EXHAUSTED at once",
                max + 1
            ),
            "no answer within 10 s (it hangs)",
        )),
        Ok(call) => match &call.end {
            End::Status(status) if status.code() == Code::ResourceExhausted => Ok(()),
            other => Err(Failure::new(
                format!(
                    "stream {} (past max_concurrent_sessions) to fail RESOURCE_EXHAUSTED",
                    max + 1
                ),
                format!("{} events, then {}", call.events.len(), end_text(other)),
            )),
        },
    };
    // The held streams end their audio and must each finish properly.
    let mut finals = 0;
    for (session, tx, mut stream) in held {
        let _ = tx.send(audio_request(Vec::new(), true)).await;
        drop(tx);
        let mut validator = SttStreamValidator::new(&session, false);
        validator.end_of_audio();
        loop {
            match tokio::time::timeout(CALL_DEADLINE, stream.next()).await {
                Ok(Some(Ok(event))) => {
                    validator
                        .observe(&event)
                        .map_err(|v| Failure::violation(&v, Vec::new(), None))?;
                }
                Ok(None) => {
                    validator
                        .finish()
                        .map_err(|v| Failure::violation(&v, Vec::new(), None))?;
                    finals += 1;
                    break;
                }
                Ok(Some(Err(status))) => {
                    return Err(Failure::new(
                        "a held stream to finish OK",
                        status_text(&status),
                    ))
                }
                Err(_) => return Err(Failure::new("a held stream to finish", "it hangs")),
            }
        }
    }
    outcome?;
    pass_with(format!("{finals} streams served at once"))
}

/// How long a call of one second of audio may take, end included: a
/// stream that is never closed is caught here rather than at the general
/// call deadline.
const CLOSE_AFTER_END: Duration = Duration::from_secs(10);

pub(crate) async fn final_after_end(ctx: Ctx) -> CaseResult {
    let limits = limits(&ctx).await?;
    let rate = limits.rates[0];
    for end in [AudioEnd::FinalChunk, AudioEnd::HalfClose] {
        let input = AudioInput {
            sample_rate: rate,
            segments: vec![
                Segment::Silence { ms: 200 },
                Segment::Tone { hz: 440, ms: 600 },
                Segment::Silence { ms: 200 },
            ],
            odd_tail: false,
            chunk_ms: 100,
            end,
            partials: false,
            pace_ms: 0,
        };
        let session = ctx.session_id();
        let call = run_input(
            &ctx,
            &session,
            &input,
            limits.max_chunk_bytes,
            CLOSE_AFTER_END,
        )
        .await;
        let expected = format!("after end of audio by {end:?}: a final, then the stream closes OK");
        match &call.end {
            End::Ok => {}
            End::Timeout => {
                return Err(Failure::new(
                    expected,
                    format!("still open {CLOSE_AFTER_END:?} after the call started"),
                )
                .with_trace(call.trace(), None))
            }
            other => {
                return Err(Failure::new(expected, end_text(other)).with_trace(call.trace(), None))
            }
        }
        let final_after = call.events.iter().any(|s| s.after_end && s.event.is_final);
        ensure(
            final_after,
            &expected,
            "no final event after the end of audio",
        )
        .map_err(|f| f.with_trace(call.trace(), None))?;
    }
    pass()
}

pub(crate) async fn info_capabilities(ctx: Ctx) -> CaseResult {
    let caps = must_ok(
        "GetCapabilities",
        ctx.stt()
            .get_capabilities(voxwire_proto::stt::GetCapabilitiesRequest {}),
    )
    .await?;
    let mut keys: Vec<String> = caps
        .metrics
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    keys.sort();
    pass_with(format!(
        "capabilities {:?}; resident models {:?}; metrics {}",
        caps.capabilities,
        caps.resident_models,
        keys.join(" ")
    ))
}

/// HEALTH-DRAIN, last of the STT cases: it ends the worker.
pub(crate) async fn health_drain(ctx: Ctx) -> CaseResult {
    let session = ctx.session_id();
    let (tx, rx) = mpsc::channel(4);
    let busy = async {
        let _ = tx.send(config_request(&session, 16_000, false)).await;
        let _ = tx.send(audio_request(silence(16_000, 200), false)).await;
        let opened = tokio::time::timeout(
            PROMPT,
            ctx.stt()
                .recognize(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await
        .map_err(|_| Failure::new("a stream to open", "no response headers within 5 s"))?
        .map_err(|s| Failure::new("a stream to open", status_text(&s)))?;
        Ok(opened.into_inner())
    };
    let Some(mut held) = crate::client::drain_to_not_serving(&ctx, Service::Stt, busy).await?
    else {
        return skip(crate::client::NO_DRAIN);
    };
    let late = ctx.session_id();
    expect_status(
        &ctx,
        "a Recognize started while draining",
        vec![
            config_request(&late, 16_000, false),
            audio_request(silence(16_000, 100), true),
        ],
        Code::Unavailable,
    )
    .await?;
    // The stream in flight finishes: its end of audio gets its final.
    let _ = tx.send(audio_request(Vec::new(), true)).await;
    drop(tx);
    let mut validator = SttStreamValidator::new(&session, false);
    validator.end_of_audio();
    loop {
        match tokio::time::timeout(CALL_DEADLINE, held.next()).await {
            Ok(Some(Ok(event))) => {
                validator
                    .observe(&event)
                    .map_err(|v| Failure::violation(&v, Vec::new(), None))?;
            }
            Ok(None) => break,
            Ok(Some(Err(status))) => {
                return Err(Failure::new(
                    "the stream in flight when the drain began to finish OK",
                    status_text(&status),
                ))
            }
            Err(_) => return Err(Failure::new("the stream in flight to finish", "it hangs")),
        }
    }
    validator
        .finish()
        .map_err(|v| Failure::violation(&v, Vec::new(), None))?;
    pass()
}
