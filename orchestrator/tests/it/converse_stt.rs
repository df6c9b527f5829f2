//! The STT relay (against a scripted in-test STT server) and Converse:
//! transcripts, barge-in, state changes.

use std::time::Duration;

use crate::common::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::Code;
use voxwire_orchestrator::config::Args;
use voxwire_orchestrator::endpoint::EndpointState;
use voxwire_orchestrator::metrics;
use voxwire_proto::stt::stt_service_client::SttServiceClient;
use voxwire_proto::stt::{
    recognize_request, AudioChunk, RecognitionConfig, RecognizeRequest, TranscriptEvent,
};
use voxwire_proto::stt_stream::SttStreamValidator;
use voxwire_proto::voxwire::v1::{
    converse_event, converse_request, ConverseConfig, ConverseEvent, ConverseRequest, EndOfAudio,
    Interrupt, SessionState,
};
use voxwire_tts_worker::server::Args as WorkerArgs;

fn config(session: &str, partials: bool) -> RecognizeRequest {
    RecognizeRequest {
        request: Some(recognize_request::Request::Config(RecognitionConfig {
            session_id: session.into(),
            sample_rate: 16_000,
            partial_results: partials,
            ..Default::default()
        })),
    }
}

fn audio(bytes: usize, is_final: bool) -> RecognizeRequest {
    RecognizeRequest {
        request: Some(recognize_request::Request::Audio(AudioChunk {
            audio_data: vec![0u8; bytes].into(),
            is_final,
        })),
    }
}

async fn collect(
    mut stream: tonic::Streaming<TranscriptEvent>,
    session: &str,
    partials: bool,
) -> (Vec<TranscriptEvent>, Option<tonic::Status>) {
    let mut validator = SttStreamValidator::new(session, partials);
    validator.end_of_audio();
    let mut events = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                validator.observe(&event).expect("relayed events are valid");
                events.push(event);
            }
            Err(status) => return (events, Some(status)),
        }
    }
    validator.finish().expect("complete stream");
    (events, None)
}

#[tokio::test]
async fn transcribe_and_recognize_relay_events() {
    let _gate = crate::GATE.enter(module_path!());
    let stt = fake_stt(FakeStt::default()).await;
    let orch = orchestrator(Args {
        stt: stt.address(),
        ..Args::for_tests()
    })
    .await;
    orch.wait_ready().await;
    let requests = vec![config("t1", true), audio(3200, false), audio(3200, true)];
    let stream = orch
        .voxwire()
        .transcribe(tokio_stream::iter(requests.clone()))
        .await
        .expect("transcribe")
        .into_inner();
    let (events, error) = collect(stream, "t1", true).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(events.len(), 2);
    assert!(!events[0].is_final);
    assert_eq!(events[1].text, "heard 6400 bytes");

    // The same through stt.STTService, ending the audio by half-close.
    let requests = vec![config("t2", false), audio(640, false)];
    let stream = SttServiceClient::new(orch.channel.clone())
        .recognize(tokio_stream::iter(requests))
        .await
        .expect("recognize")
        .into_inner();
    let (events, error) = collect(stream, "t2", false).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].text, "heard 640 bytes");

    // A client breaking a request rule gets that rule's status.
    let requests = vec![config("t3", false), audio(3, false)];
    let mut stream = orch
        .voxwire()
        .transcribe(tokio_stream::iter(requests))
        .await
        .expect("transcribe")
        .into_inner();
    let mut error = None;
    while let Some(item) = stream.next().await {
        if let Err(status) = item {
            error = Some(status);
        }
    }
    let error = error.expect("odd byte count refused");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("STT-AUDIO-ODD-BYTES"), "{error:?}");
}

/// A worker that went silent after the end of audio held the client's stream
/// until the whole-call timeout (600 s); each event after the end of audio now
/// has `--first-frame-timeout-ms`.
#[tokio::test]
async fn stt_worker_silent_after_end_of_audio_fails_by_the_deadline() {
    let _gate = crate::GATE.enter(module_path!());
    let stt = fake_stt(FakeStt {
        wedged: true,
        ..FakeStt::default()
    })
    .await;
    let orch = orchestrator(Args {
        stt: stt.address(),
        first_frame_timeout_ms: 300,
        ..Args::for_tests()
    })
    .await;
    orch.wait_ready().await;
    let started = std::time::Instant::now();
    let stream = orch
        .voxwire()
        .transcribe(tokio_stream::iter(vec![
            config("w", false),
            audio(640, true),
        ]))
        .await
        .expect("transcribe")
        .into_inner();
    let (events, error) =
        tokio::time::timeout(Duration::from_secs(20), collect(stream, "w", false))
            .await
            .expect("the stream ends long before the call timeout");
    let elapsed = started.elapsed();
    assert!(events.is_empty(), "{events:?}");
    let error = error.expect("a silent worker ends the stream with a status");
    assert_eq!(error.code(), Code::DeadlineExceeded, "{error:?}");
    assert!(
        error.message().contains("after the end of audio"),
        "{error:?}"
    );
    // One deadline per attempt (retries included), nowhere near the call timeout.
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
}

/// A 61 s file sent faster than real time failed through the orchestrator
/// ("no transcript event within 10s after the end of audio") and got the STT
/// worker marked UNRESPONSIVE for everyone, although the worker was honestly
/// working through its backlog. The deadline after the end of audio now
/// grows with the audio the worker has not answered for yet.
#[tokio::test]
async fn long_audio_backlog_is_not_blamed_on_the_stt_worker() {
    let _gate = crate::GATE.enter(module_path!());
    let stt = fake_stt(FakeStt {
        catch_up_rtf: Some(0.5),
        ..FakeStt::default()
    })
    .await;
    let orch = orchestrator(Args {
        stt: stt.address(),
        // Each window takes 500 ms: longer than this deadline on its own.
        first_frame_timeout_ms: 300,
        ..Args::for_tests()
    })
    .await;
    orch.wait_ready().await;
    // Six seconds of audio in one burst, a second per chunk.
    let mut requests = vec![config("long", false)];
    requests.extend((1..=6).map(|second| audio(32_000, second == 6)));
    let stream = orch
        .voxwire()
        .transcribe(tokio_stream::iter(requests))
        .await
        .expect("transcribe")
        .into_inner();
    let (events, error) = collect(stream, "long", false).await;
    assert!(error.is_none(), "{error:?}");
    let texts: Vec<&str> = events.iter().map(|e| e.text.as_str()).collect();
    assert_eq!(
        texts,
        ["window 1", "window 2", "window 3", "window 4", "window 5", "window 6"]
    );
    let all = orch.stt_pool().snapshot();
    assert_eq!(
        state_of(&all, &stt.address()),
        Some(EndpointState::Serving),
        "{all:?}"
    );
}

#[tokio::test]
async fn invalid_transcript_events_end_the_stream_with_internal() {
    let _gate = crate::GATE.enter(module_path!());
    let stt = fake_stt(FakeStt {
        broken: true,
        ..FakeStt::default()
    })
    .await;
    let orch = orchestrator(Args {
        stt: stt.address(),
        ..Args::for_tests()
    })
    .await;
    orch.wait_ready().await;
    let stream = orch
        .voxwire()
        .transcribe(tokio_stream::iter(vec![
            config("b", true),
            audio(640, true),
        ]))
        .await
        .expect("transcribe")
        .into_inner();
    let (events, error) = collect(stream, "b", true).await;
    assert_eq!(events.len(), 1, "the valid partial went through");
    let error = error.expect("violation ends the stream");
    assert_eq!(error.code(), Code::Internal);
    assert!(error.message().contains("STT-SEQ-GAP"), "{error:?}");
    assert_eq!(
        orch.running
            .app
            .metrics
            .counter(metrics::VIOLATIONS, &[("rule", "STT-SEQ-GAP")]),
        1
    );
}

struct Conversation {
    requests: mpsc::Sender<ConverseRequest>,
    events: tonic::Streaming<ConverseEvent>,
}

impl Conversation {
    async fn send(&self, request: converse_request::Request) {
        self.requests
            .send(ConverseRequest {
                request: Some(request),
            })
            .await
            .expect("send");
    }

    async fn next(&mut self) -> ConverseEvent {
        tokio::time::timeout(WAIT, self.events.next())
            .await
            .expect("event in time")
            .expect("stream open")
            .expect("event ok")
    }

    /// Reads events until one matches, returning everything read.
    async fn until(&mut self, pred: impl Fn(&ConverseEvent) -> bool) -> Vec<ConverseEvent> {
        let mut seen = Vec::new();
        loop {
            let event = self.next().await;
            let done = pred(&event);
            seen.push(event);
            if done {
                return seen;
            }
        }
    }
}

fn is_state(event: &ConverseEvent, to: SessionState) -> bool {
    matches!(&event.event, Some(converse_event::Event::State(s)) if s.to == to as i32)
}

#[tokio::test]
async fn converse_barge_in_silences_output_and_reports_latency() {
    let _gate = crate::GATE.enter(module_path!());
    let tts = tone_worker(WorkerArgs {
        realtime: true,
        ..WorkerArgs::tone_for_tests()
    })
    .await;
    let stt = fake_stt(FakeStt::default()).await;
    let orch = orchestrator(Args {
        tts: tts.address(),
        stt: stt.address(),
        ..Args::for_tests()
    })
    .await;
    orch.wait_ready().await;
    let (requests, rx) = mpsc::channel(16);
    requests
        .send(ConverseRequest {
            request: Some(converse_request::Request::Config(ConverseConfig {
                session_id: "conv".into(),
                input_sample_rate: 16_000,
                echo: true,
                ..Default::default()
            })),
        })
        .await
        .expect("config");
    let events = orch
        .voxwire()
        .converse(ReceiverStream::new(rx))
        .await
        .expect("converse")
        .into_inner();
    let mut conv = Conversation { requests, events };
    let first = conv.next().await;
    assert!(is_state(&first, SessionState::Listening), "{first:?}");

    // A long turn, interrupted after its first audio.
    conv.send(converse_request::Request::Say(
        "A long story begins here. ".repeat(10),
    ))
    .await;
    let before = conv
        .until(|e| matches!(&e.event, Some(converse_event::Event::Audio(f)) if !f.audio_data.is_empty()))
        .await;
    assert!(before.iter().any(|e| is_state(e, SessionState::Speaking)));
    let spoken_turn = before.last().map(|e| e.turn_id).expect("audio");
    conv.send(converse_request::Request::Interrupt(Interrupt {}))
        .await;
    let around = conv
        .until(|e| matches!(e.event, Some(converse_event::Event::Interrupted(_))))
        .await;
    let Some(converse_event::Event::Interrupted(interrupted)) =
        &around.last().expect("event").event
    else {
        unreachable!("until returned on Interrupted");
    };
    assert!(interrupted.interrupt_to_silence_us > 0);
    assert!(
        interrupted.interrupt_to_silence_us < Duration::from_millis(500).as_micros() as i64,
        "{interrupted:?}"
    );
    assert!(around.iter().any(|e| is_state(e, SessionState::BargedIn)));
    let after = conv.until(|e| is_state(e, SessionState::Listening)).await;
    assert!(
        after
            .iter()
            .all(|e| !matches!(e.event, Some(converse_event::Event::Audio(_)))),
        "no audio after the interrupt: {after:?}"
    );
    assert_eq!(
        orch.running.app.metrics.histogram_count(metrics::INTERRUPT),
        1
    );

    // The session goes on: a short turn plays to its final frame.
    conv.send(converse_request::Request::Say("Short.".into()))
        .await;
    let turn = conv
        .until(|e| matches!(&e.event, Some(converse_event::Event::Audio(f)) if f.is_final))
        .await;
    assert!(turn.iter().all(|e| e.turn_id != spoken_turn), "{turn:?}");
    conv.until(|e| is_state(e, SessionState::Listening)).await;

    // Microphone audio: its final transcript comes back, and (echo) is spoken.
    conv.send(converse_request::Request::Audio(vec![0u8; 1600].into()))
        .await;
    conv.send(converse_request::Request::EndOfAudio(EndOfAudio {}))
        .await;
    let heard = conv
        .until(|e| matches!(&e.event, Some(converse_event::Event::Transcript(t)) if t.is_final))
        .await;
    let Some(converse_event::Event::Transcript(transcript)) = &heard.last().expect("event").event
    else {
        unreachable!("until returned on a transcript");
    };
    assert_eq!(transcript.text, "heard 1600 bytes");
    conv.until(|e| is_state(e, SessionState::Speaking)).await;
    conv.until(|e| is_state(e, SessionState::Listening)).await;

    // Closing the stream terminates the session.
    let Conversation {
        requests,
        mut events,
    } = conv;
    drop(requests);
    let mut terminated = Vec::new();
    while let Some(event) = tokio::time::timeout(WAIT, events.next())
        .await
        .expect("in time")
    {
        if let Some(converse_event::Event::State(change)) = event.expect("event").event {
            if change.to == SessionState::Terminated as i32 {
                terminated.push(change.from);
            }
        }
    }
    // Once, and from the state it was in: the last event once read
    // TERMINATED -> TERMINATED, the state read after the removal.
    assert_eq!(terminated, [SessionState::Listening as i32]);
    assert!(orch.running.app.sessions.is_empty());
}
