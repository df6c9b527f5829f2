//! A frozen worker (SIGSTOP as seen from the network: connections open,
//! nothing answers) costs no turn: it is out of service within about a
//! second without any traffic, a turn that reaches it first moves to
//! another worker within its attempt deadline, and it rejoins by itself once
//! it runs again. In-process workers behind a [`FreezableProxy`]; the real
//! processes are SIGSTOPped in reliability/tests/it/frozen.rs.

use std::time::{Duration, Instant};

use crate::common::*;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use voxwire_orchestrator::config::Args;
use voxwire_orchestrator::endpoint::EndpointState;
use voxwire_proto::stt::stt_service_client::SttServiceClient;
use voxwire_proto::stt::{recognize_request, AudioChunk, RecognitionConfig, RecognizeRequest};
use voxwire_proto::tts::tts_service_client::TtsServiceClient;
use voxwire_proto::tts::{EndSessionRequest, StartSessionRequest, TextChunk};
use voxwire_proto::tts_stream::TtsStreamValidator;
use voxwire_tts_worker::server::Args as WorkerArgs;

/// Out of service this soon after the freeze, with no traffic at all
/// (keepalive 500 + 500 ms, load-poll deadline 1 s in `Args::for_tests`).
const DETECT: Duration = Duration::from_millis(1_500);
/// The goal for a whole turn while one of two workers is frozen.
const TURN_BOUND: Duration = Duration::from_millis(1_500);
/// Back in service this soon after the thaw.
const REJOIN: Duration = Duration::from_secs(3);
/// Concurrent turns per round: enough that some land on the frozen worker.
const ROUND: usize = 8;

fn is_serving(all: &[voxwire_orchestrator::endpoint::EndpointSnapshot], addr: &str) -> bool {
    state_of(all, addr) == Some(EndpointState::Serving)
}

/// One client session on the relayed tts.TTSService: StartSession, one
/// Synthesize, EndSession; the whole turn's time.
async fn relay_turn(channel: Channel, id: String) -> Result<Duration, String> {
    let started = Instant::now();
    let mut client = TtsServiceClient::new(channel);
    client
        .start_session(StartSessionRequest {
            session_id: id.clone(),
            ..Default::default()
        })
        .await
        .map_err(|s| format!("StartSession: {s:?}"))?;
    let chunk = TextChunk {
        session_id: id.clone(),
        text: "Hi there.".into(),
        is_final: true,
        sequence_number: 1,
    };
    let mut frames = client
        .synthesize(tokio_stream::iter(vec![chunk]))
        .await
        .map_err(|s| format!("Synthesize: {s:?}"))?
        .into_inner();
    let mut validator = TtsStreamValidator::new(id.clone());
    while let Some(frame) = frames.next().await {
        let frame = frame.map_err(|s| format!("frame: {s:?}"))?;
        if validator
            .observe(&frame)
            .map_err(|v| v.to_string())?
            .is_final()
        {
            break;
        }
    }
    let elapsed = started.elapsed();
    client
        .end_session(EndSessionRequest { session_id: id })
        .await
        .map_err(|s| format!("EndSession: {s:?}"))?;
    Ok(elapsed)
}

async fn speak_turn(channel: Channel, id: String) -> Result<Duration, String> {
    let started = Instant::now();
    let mut client = voxwire_proto::voxwire::v1::voxwire_client::VoxwireClient::new(channel);
    let spoken = speak(&mut client, &id, "Hi there.").await;
    match spoken.error {
        None => Ok(started.elapsed()),
        Some(status) => Err(format!("Speak: {status:?}")),
    }
}

/// One Transcribe call of 200 ms of audio; the time to its final event.
async fn transcribe_turn(channel: Channel, id: String) -> Result<Duration, String> {
    let started = Instant::now();
    let requests = vec![
        RecognizeRequest {
            request: Some(recognize_request::Request::Config(RecognitionConfig {
                session_id: id,
                sample_rate: 16_000,
                ..Default::default()
            })),
        },
        RecognizeRequest {
            request: Some(recognize_request::Request::Audio(AudioChunk {
                audio_data: vec![0u8; 6_400].into(),
                is_final: true,
            })),
        },
    ];
    let mut events = voxwire_proto::voxwire::v1::voxwire_client::VoxwireClient::new(channel)
        .transcribe(tokio_stream::iter(requests))
        .await
        .map_err(|s| format!("Transcribe: {s:?}"))?
        .into_inner();
    let mut finals = 0;
    while let Some(event) = events.next().await {
        if event.map_err(|s| format!("event: {s:?}"))?.is_final {
            finals += 1;
        }
    }
    if finals == 0 {
        return Err("no final event".into());
    }
    Ok(started.elapsed())
}

#[derive(Clone, Copy, Debug)]
enum Path {
    Relay,
    Speak,
    Transcribe,
}

/// `ROUND` turns of `path` at once; every one must succeed within
/// [`TURN_BOUND`]. Returns the slowest.
async fn round(channel: &Channel, path: Path, tag: &str) -> Duration {
    let mut tasks = Vec::new();
    for i in 0..ROUND {
        let channel = channel.clone();
        let id = format!("{tag}-{i}");
        tasks.push(tokio::spawn(async move {
            match path {
                Path::Relay => relay_turn(channel, id).await,
                Path::Speak => speak_turn(channel, id).await,
                Path::Transcribe => transcribe_turn(channel, id).await,
            }
        }));
    }
    let mut slowest = Duration::ZERO;
    for task in tasks {
        let took = task
            .await
            .expect("join")
            .unwrap_or_else(|e| panic!("{path:?} turn failed with a frozen worker: {e}"));
        assert!(
            took <= TURN_BOUND,
            "{path:?} turn took {took:?} with a frozen worker (bound {TURN_BOUND:?})"
        );
        slowest = slowest.max(took);
    }
    eprintln!("{tag}: {ROUND} {path:?} turns, slowest {slowest:?}");
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_idle_worker_is_out_of_service_within_a_second_and_rejoins_after_the_thaw() {
    let _gate = crate::GATE.enter(module_path!());
    let worker = tone_worker(WorkerArgs::tone_for_tests()).await;
    let proxy = FreezableProxy::start(worker.running.addr).await;
    let addr = proxy.address();
    let orch = orchestrator(tts_args(std::slice::from_ref(&addr))).await;
    orch.wait_tts("SERVING", |all| is_serving(all, &addr)).await;
    let mut client = orch.voxwire();
    speak_ok(&mut client, "idle-1", "Before the freeze.").await;

    proxy.freeze();
    let frozen = Instant::now();
    orch.wait_tts("out of service", |all| !is_serving(all, &addr))
        .await;
    let detected = frozen.elapsed();
    eprintln!(
        "frozen idle worker out of service after {detected:?}: {:?}",
        state_of(&orch.tts_pool().snapshot(), &addr)
    );
    assert!(
        detected < DETECT,
        "a frozen worker stayed SERVING for {detected:?} (bound {DETECT:?})"
    );

    proxy.thaw();
    let thawed = Instant::now();
    orch.wait_tts("SERVING again", |all| is_serving(all, &addr))
        .await;
    let back = thawed.elapsed();
    eprintln!("SERVING again {back:?} after the thaw");
    assert!(back < REJOIN, "rejoined only after {back:?}");
    speak_ok(&mut client, "idle-2", "After the thaw.").await;
}

/// A load poll that goes unanswered marks the worker UNRESPONSIVE within
/// `--load-poll-ms` + `--load-poll-timeout-ms`, even while its connection
/// and health stay fine. (It used to be ignored: tonic reports its own
/// client-side timeout as CANCELLED.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_load_poll_marks_the_worker_unresponsive() {
    let _gate = crate::GATE.enter(module_path!());
    let server = fake_tts(FakeTts::new(Mode::CapabilitiesHang), true).await;
    let addr = server.address();
    let orch = orchestrator(tts_args(std::slice::from_ref(&addr))).await;
    let started = Instant::now();
    orch.wait_tts("UNRESPONSIVE", |all| {
        state_of(all, &addr) == Some(EndpointState::Unresponsive)
    })
    .await;
    let took = started.elapsed();
    eprintln!("UNRESPONSIVE after {took:?}");
    assert!(took < DETECT + Duration::from_millis(500), "took {took:?}");
}

/// Both TTS client paths, while one of two workers is frozen: right after
/// the freeze (not detected yet: turns reach it and must move), and once it
/// is known to be out of service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tts_turn_succeeds_in_bound_with_one_of_two_workers_frozen() {
    let _gate = crate::GATE.enter(module_path!());
    let healthy = tone_worker(WorkerArgs::tone_for_tests()).await;
    let victim = tone_worker(WorkerArgs::tone_for_tests()).await;
    let proxy = FreezableProxy::start(victim.running.addr).await;
    let frozen_addr = proxy.address();
    let orch = orchestrator(tts_args(&[healthy.address(), proxy.address()])).await;
    orch.wait_tts("both SERVING", |all| serving_count(all) == 2)
        .await;
    // Both workers get measured first-frame latencies.
    for i in 0..4 {
        round(&orch.channel, Path::Speak, &format!("warm{i}")).await;
    }
    assert!(
        dispatched(&orch.tts_pool().snapshot(), &frozen_addr) > 0,
        "the victim took part in the warm-up"
    );

    for path in [Path::Relay, Path::Speak] {
        proxy.freeze();
        round(&orch.channel, path, &format!("{path:?}-at-freeze")).await;
        orch.wait_tts("the frozen one out of service", |all| {
            !is_serving(all, &frozen_addr)
        })
        .await;
        round(&orch.channel, path, &format!("{path:?}-frozen")).await;
        proxy.thaw();
        orch.wait_tts("SERVING again", |all| is_serving(all, &frozen_addr))
            .await;
    }
    let before = dispatched(&orch.tts_pool().snapshot(), &frozen_addr);
    for i in 0..3 {
        round(&orch.channel, Path::Speak, &format!("after{i}")).await;
    }
    assert!(
        dispatched(&orch.tts_pool().snapshot(), &frozen_addr) > before,
        "the thawed worker takes turns again"
    );
}

/// A worker wedged in StartSession alone (its health and load polls still
/// answer, so nothing else gives it away): each session it is offered moves
/// to the other worker at the attempt deadline, not the call timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_never_answers_start_session_costs_one_attempt_deadline() {
    let _gate = crate::GATE.enter(module_path!());
    let healthy = tone_worker(WorkerArgs::tone_for_tests()).await;
    let wedged = FakeTts::new(Mode::StartHangs);
    let server = fake_tts(wedged.clone(), true).await;
    let orch = orchestrator(tts_args(&[healthy.address(), server.address()])).await;
    orch.wait_tts("both SERVING", |all| serving_count(all) == 2)
        .await;
    // The pool's first-frame latencies (the healthy worker's) set the
    // deadline of the wedged one, which never gets far enough to have its own.
    // Until then a turn offered to it waits the whole call timeout (and
    // may fail): the warm-up is neither timed nor required to succeed.
    for i in 0..4 {
        let _ = speak_turn(orch.channel.clone(), format!("warm-{i}")).await;
    }
    for path in [Path::Relay, Path::Speak] {
        for i in 0..2 {
            round(&orch.channel, path, &format!("{path:?}-wedged-{i}")).await;
        }
    }
    assert!(
        wedged.start_calls() > 0,
        "the wedged worker was offered sessions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transcribe_succeeds_in_bound_with_one_of_two_stt_workers_frozen() {
    let _gate = crate::GATE.enter(module_path!());
    let healthy = fake_stt(FakeStt::default()).await;
    let victim = fake_stt(FakeStt::default()).await;
    let proxy = FreezableProxy::start(victim.addr).await;
    let frozen_addr = proxy.address();
    let orch = orchestrator(Args {
        stt: format!("{},{}", healthy.address(), proxy.address()),
        ..Args::for_tests()
    })
    .await;
    wait_pool(orch.stt_pool(), "both SERVING", |all| {
        serving_count(all) == 2
    })
    .await;
    for i in 0..3 {
        round(&orch.channel, Path::Transcribe, &format!("warm{i}")).await;
    }
    proxy.freeze();
    round(&orch.channel, Path::Transcribe, "stt-at-freeze").await;
    wait_pool(orch.stt_pool(), "the frozen one out of service", |all| {
        !is_serving(all, &frozen_addr)
    })
    .await;
    round(&orch.channel, Path::Transcribe, "stt-frozen").await;
    // The relayed stt.STTService takes the same path.
    let requests = vec![
        RecognizeRequest {
            request: Some(recognize_request::Request::Config(RecognitionConfig {
                session_id: "relayed".into(),
                sample_rate: 16_000,
                ..Default::default()
            })),
        },
        RecognizeRequest {
            request: Some(recognize_request::Request::Audio(AudioChunk {
                audio_data: vec![0u8; 640].into(),
                is_final: true,
            })),
        },
    ];
    let started = Instant::now();
    let mut events = SttServiceClient::new(orch.channel.clone())
        .recognize(tokio_stream::iter(requests))
        .await
        .expect("recognize")
        .into_inner();
    while let Some(event) = events.next().await {
        event.expect("relayed event");
    }
    assert!(started.elapsed() <= TURN_BOUND, "{:?}", started.elapsed());
    proxy.thaw();
    wait_pool(orch.stt_pool(), "SERVING again", |all| {
        is_serving(all, &frozen_addr)
    })
    .await;
}

/// Reads Converse events until one matches `pred`; a turn error fails.
async fn until(
    events: &mut tonic::Streaming<voxwire_proto::voxwire::v1::ConverseEvent>,
    what: &str,
    pred: fn(&voxwire_proto::voxwire::v1::converse_event::Event) -> bool,
) -> Result<(), String> {
    use voxwire_proto::voxwire::v1::converse_event::Event;
    loop {
        let event = tokio::time::timeout(WAIT, events.next())
            .await
            .map_err(|_| format!("no {what} in time"))?
            .ok_or_else(|| format!("stream ended before {what}"))?
            .map_err(|s| format!("{what}: {s:?}"))?;
        match &event.event {
            Some(Event::Error(error)) => return Err(format!("turn error: {error:?}")),
            Some(e) if pred(e) => return Ok(()),
            _ => {}
        }
    }
}

/// One Converse conversation: a `say` turn (to its final frame) and a
/// listening turn (audio, end of audio, to its final transcript); the time
/// of each.
async fn converse_turns(channel: Channel, id: String) -> Result<(Duration, Duration), String> {
    use voxwire_proto::voxwire::v1::{
        converse_event::Event, converse_request::Request as R, ConverseConfig, ConverseRequest,
        EndOfAudio,
    };
    let (requests, rx) = tokio::sync::mpsc::channel(8);
    let send = |request: R| ConverseRequest {
        request: Some(request),
    };
    requests
        .send(send(R::Config(ConverseConfig {
            session_id: id,
            input_sample_rate: 16_000,
            ..Default::default()
        })))
        .await
        .map_err(|e| e.to_string())?;
    let mut events = voxwire_proto::voxwire::v1::voxwire_client::VoxwireClient::new(channel)
        .converse(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("Converse: {s:?}"))?
        .into_inner();
    let started = Instant::now();
    requests
        .send(send(R::Say("Hi there.".into())))
        .await
        .map_err(|e| e.to_string())?;
    until(
        &mut events,
        "the final frame",
        |e| matches!(e, Event::Audio(f) if f.is_final),
    )
    .await?;
    let spoken = started.elapsed();
    let started = Instant::now();
    requests
        .send(send(R::Audio(vec![0u8; 3_200].into())))
        .await
        .map_err(|e| e.to_string())?;
    requests
        .send(send(R::EndOfAudio(EndOfAudio {})))
        .await
        .map_err(|e| e.to_string())?;
    until(
        &mut events,
        "the final transcript",
        |e| matches!(e, Event::Transcript(t) if t.is_final),
    )
    .await?;
    Ok((spoken, started.elapsed()))
}

/// Converse, with one of two TTS and one of two STT workers frozen at once:
/// its speaking and its listening turns each stay within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_converse_turn_succeeds_in_bound_with_one_of_two_workers_of_each_kind_frozen() {
    let _gate = crate::GATE.enter(module_path!());
    let tts_ok = tone_worker(WorkerArgs::tone_for_tests()).await;
    let tts_victim = tone_worker(WorkerArgs::tone_for_tests()).await;
    let tts_proxy = FreezableProxy::start(tts_victim.running.addr).await;
    let stt_ok = fake_stt(FakeStt::default()).await;
    let stt_victim = fake_stt(FakeStt::default()).await;
    let stt_proxy = FreezableProxy::start(stt_victim.addr).await;
    let orch = orchestrator(Args {
        tts: format!("{},{}", tts_ok.address(), tts_proxy.address()),
        stt: format!("{},{}", stt_ok.address(), stt_proxy.address()),
        ..Args::for_tests()
    })
    .await;
    orch.wait_tts("both SERVING", |all| serving_count(all) == 2)
        .await;
    wait_pool(orch.stt_pool(), "both SERVING", |all| {
        serving_count(all) == 2
    })
    .await;
    let conversations = |tag: &'static str| {
        let channel = orch.channel.clone();
        async move {
            let mut tasks = Vec::new();
            for i in 0..ROUND {
                tasks.push(tokio::spawn(converse_turns(
                    channel.clone(),
                    format!("{tag}-{i}"),
                )));
            }
            let mut slowest = (Duration::ZERO, Duration::ZERO);
            for task in tasks {
                let (say, listen) = task
                    .await
                    .expect("join")
                    .unwrap_or_else(|e| panic!("{tag}: a Converse turn failed: {e}"));
                assert!(say <= TURN_BOUND, "{tag}: a say turn took {say:?}");
                assert!(
                    listen <= TURN_BOUND,
                    "{tag}: a listening turn took {listen:?}"
                );
                slowest = (slowest.0.max(say), slowest.1.max(listen));
            }
            eprintln!(
                "{tag}: {ROUND} conversations, slowest say {:?}, listen {:?}",
                slowest.0, slowest.1
            );
        }
    };
    conversations("warm").await;
    tts_proxy.freeze();
    stt_proxy.freeze();
    conversations("at-freeze").await;
    conversations("frozen").await;
    tts_proxy.thaw();
    stt_proxy.thaw();
}
