//! The STT cases on the client's requests: config first, its rate, model
//! and language, audio chunk shape, limits. Each sends what the rule refuses
//! and expects its status; where the worker offers a choice, what it offers
//! must also be accepted.

use std::time::Duration;

use tonic::Code;
use voxwire_proto::metrics;
use voxwire_proto::stt::RecognizeRequest;

use super::{end_text, expect_status, recognize, silence, End};
use crate::client::{load_metrics, must_ok, Ctx, CALL_DEADLINE};
use crate::inputs::{self, audio_request, config_request};
use crate::outcome::{ensure, pass, skip, CaseResult, Failure};
use crate::prop::{self, Probe};
use crate::target::Service;

pub(crate) async fn config_first(ctx: Ctx) -> CaseResult {
    expect_status(
        &ctx,
        "audio before any config",
        vec![
            audio_request(silence(16_000, 100), false),
            audio_request(Vec::new(), true),
        ],
        Code::InvalidArgument,
    )
    .await?;
    let session = ctx.session_id();
    expect_status(
        &ctx,
        "a second config",
        vec![
            config_request(&session, 16_000, false),
            audio_request(silence(16_000, 100), false),
            config_request(&session, 16_000, false),
            audio_request(Vec::new(), true),
        ],
        Code::InvalidArgument,
    )
    .await?;
    pass()
}

pub(crate) async fn invalid_session(ctx: Ctx) -> CaseResult {
    for id in ["", "   "] {
        expect_status(
            &ctx,
            &format!("a config with session id {id:?}"),
            vec![
                config_request(id, 16_000, false),
                audio_request(silence(16_000, 100), true),
            ],
            Code::InvalidArgument,
        )
        .await?;
    }
    pass()
}

pub(crate) async fn bad_rate(ctx: Ctx) -> CaseResult {
    let probe_ctx = ctx.clone();
    prop::check(&ctx, inputs::bad_sample_rate, move |rate: i32| {
        let ctx = probe_ctx.clone();
        Box::pin(async move {
            let session = ctx.session_id();
            expect_status(
                &ctx,
                &format!("a config with sample_rate {rate}"),
                vec![
                    config_request(&session, rate, false),
                    audio_request(silence(16_000, 100), true),
                ],
                Code::InvalidArgument,
            )
            .await?;
            Ok(Probe::Checked)
        })
    })
    .await
}

/// What the worker's GetCapabilities offers a config: resident models and
/// languages.
async fn offer(ctx: &Ctx) -> Result<(Vec<String>, Vec<String>), Failure> {
    let caps = must_ok(
        "GetCapabilities",
        ctx.stt()
            .get_capabilities(voxwire_proto::stt::GetCapabilitiesRequest {}),
    )
    .await?;
    let languages = caps.capabilities.map(|c| c.languages).unwrap_or_default();
    Ok((caps.resident_models, languages))
}

/// A call with `config` that must end OK: what the worker offers is accepted.
async fn expect_accepted(ctx: &Ctx, what: &str, config: RecognizeRequest) -> Result<(), Failure> {
    let call = recognize(
        ctx,
        vec![config, audio_request(silence(16_000, 200), true)],
        Duration::ZERO,
        true,
        CALL_DEADLINE,
    )
    .await;
    match &call.end {
        End::Ok => Ok(()),
        other => Err(Failure::new(
            format!("{what} to be accepted (it is what GetCapabilities offers)"),
            end_text(other),
        )
        .with_trace(call.trace(), None)),
    }
}

pub(crate) async fn unknown_model(ctx: Ctx) -> CaseResult {
    let (models, _) = offer(&ctx).await?;
    let missing = "voxwire-conformance-no-such-model";
    if models.iter().any(|m| m == missing) {
        return skip(format!("the worker lists {missing:?} as resident"));
    }
    let session = ctx.session_id();
    expect_status(
        &ctx,
        &format!("a config naming model_id {missing:?} (resident: {models:?})"),
        vec![
            inputs::chosen_config_request(&session, missing, ""),
            audio_request(silence(16_000, 100), true),
        ],
        Code::NotFound,
    )
    .await?;
    if let Some(resident) = models.first() {
        let session = ctx.session_id();
        expect_accepted(
            &ctx,
            &format!("a config naming the resident model {resident:?}"),
            inputs::chosen_config_request(&session, resident, ""),
        )
        .await?;
    }
    pass()
}

pub(crate) async fn bad_language(ctx: Ctx) -> CaseResult {
    let (_, languages) = offer(&ctx).await?;
    let offered = |tag: &str| {
        voxwire_proto::stt_stream::primary_language(tag).is_some_and(|primary| {
            languages.iter().any(|l| {
                voxwire_proto::stt_stream::primary_language(l)
                    .is_some_and(|p| p.eq_ignore_ascii_case(primary))
            })
        })
    };
    // Malformed tags, and well-formed ones the worker does not list.
    let refused: Vec<&str> = ["en_US", "english!", "e", "en--GB", "x"]
        .into_iter()
        .chain(["qaa", "zxx-Latn"].into_iter().filter(|tag| !offered(tag)))
        .collect();
    for language in refused {
        let session = ctx.session_id();
        expect_status(
            &ctx,
            &format!("a config with language {language:?} (offered: {languages:?})"),
            vec![
                inputs::chosen_config_request(&session, "", language),
                audio_request(silence(16_000, 100), true),
            ],
            Code::InvalidArgument,
        )
        .await?;
    }
    if let Some(primary) = languages
        .first()
        .and_then(|l| voxwire_proto::stt_stream::primary_language(l))
    {
        // A region of an offered language is that language.
        let regional = format!("{primary}-001");
        let session = ctx.session_id();
        expect_accepted(
            &ctx,
            &format!("a config with language {regional:?}"),
            inputs::chosen_config_request(&session, "", &regional),
        )
        .await?;
    }
    pass()
}

pub(crate) async fn odd_bytes(ctx: Ctx) -> CaseResult {
    let probe_ctx = ctx.clone();
    let odd = proptest::strategy::Strategy::prop_map(0usize..1000, |n| 2 * n + 1);
    prop::check(
        &ctx,
        move || odd,
        move |len: usize| {
            let ctx = probe_ctx.clone();
            Box::pin(async move {
                let session = ctx.session_id();
                expect_status(
                    &ctx,
                    &format!("an audio chunk of {len} bytes"),
                    vec![
                        config_request(&session, 16_000, false),
                        audio_request(vec![0u8; len], false),
                        audio_request(Vec::new(), true),
                    ],
                    Code::InvalidArgument,
                )
                .await?;
                Ok(Probe::Checked)
            })
        },
    )
    .await
}

pub(crate) async fn audio_after_end(ctx: Ctx) -> CaseResult {
    let session = ctx.session_id();
    expect_status(
        &ctx,
        "an audio chunk after the one with is_final",
        vec![
            config_request(&session, 16_000, false),
            audio_request(silence(16_000, 100), true),
            audio_request(silence(16_000, 100), false),
        ],
        Code::InvalidArgument,
    )
    .await?;
    pass()
}

pub(crate) async fn chunk_limit(ctx: Ctx) -> CaseResult {
    let caps = load_metrics(&ctx, Service::Stt).await?.0;
    let Some(limit) = caps.get(metrics::MAX_CHUNK_BYTES).map(|v| *v as usize) else {
        return skip("the worker does not advertise max_chunk_bytes");
    };
    let limit = limit & !1;
    let session = ctx.session_id();
    let call = recognize(
        &ctx,
        vec![
            config_request(&session, 16_000, false),
            audio_request(vec![0u8; limit], true),
        ],
        Duration::ZERO,
        true,
        CALL_DEADLINE,
    )
    .await;
    ensure(
        matches!(call.end, End::Ok),
        format!("a chunk of exactly max_chunk_bytes ({limit}) to be accepted"),
        end_text(&call.end),
    )?;
    let session = ctx.session_id();
    expect_status(
        &ctx,
        &format!("a chunk of {} bytes (max_chunk_bytes + 2)", limit + 2),
        vec![
            config_request(&session, 16_000, false),
            audio_request(vec![0u8; limit + 2], true),
        ],
        Code::InvalidArgument,
    )
    .await?;
    pass()
}

/// Longer advertised limits are not exercised (the audio would be tens of MB).
const DURATION_CEILING_S: f64 = 900.0;

pub(crate) async fn duration_limit(ctx: Ctx) -> CaseResult {
    let caps = load_metrics(&ctx, Service::Stt).await?.0;
    let Some(seconds) = caps.get(metrics::MAX_STREAM_SECONDS).copied() else {
        return skip("the worker does not advertise max_stream_seconds");
    };
    if seconds > DURATION_CEILING_S {
        return skip(format!(
            "max_stream_seconds {seconds} is above {DURATION_CEILING_S}"
        ));
    }
    let chunk_bytes = caps
        .get(metrics::MAX_CHUNK_BYTES)
        .map_or(16_000, |v| (*v as usize).min(16_000))
        & !1;
    let rate = 8_000u32;
    let total = (seconds.ceil() as usize + 1) * rate as usize * 2;
    let session = ctx.session_id();
    let mut requests = vec![config_request(&session, rate as i32, false)];
    let mut sent = 0;
    while sent < total {
        let n = chunk_bytes.min(total - sent);
        sent += n;
        requests.push(audio_request(vec![0u8; n], sent >= total));
    }
    expect_status(
        &ctx,
        &format!(
            "{} s of audio (max_stream_seconds {seconds})",
            total / (rate as usize * 2)
        ),
        requests,
        Code::OutOfRange,
    )
    .await?;
    pass()
}
