//! One Synthesize call's pipeline: text read into sentences, each sentence
//! synthesized, its audio framed, validated, held while paused and paced.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

use voxwire_proto::audio::FrameFormat;
use voxwire_proto::tts::{AudioFrame, TextChunk};
use voxwire_proto::tts_stream::{
    check_chunk_session, check_text_limit, Framer, TtsStreamValidator,
};
use voxwire_service::InFlight;

use super::{Session, TtsWorker};
use crate::engine::EngineError;
use crate::text::SentenceSplitter;

/// Frames buffered between synthesis and the network per call: enough to
/// ride out scheduling hiccups, small enough that a STOP or cancel drops
/// little work.
pub(super) const FRAME_BUFFER: usize = 64;

/// Reads a call's text, hands out sentences as they complete, and stops at
/// the chunk with is_final or at half-close, whichever comes first.
pub(super) async fn read_text(
    mut input: Streaming<TextChunk>,
    first: TextChunk,
    max_chars: usize,
    sentences: mpsc::Sender<Result<String, Status>>,
) {
    let session_id = first.session_id.clone();
    let mut splitter = SentenceSplitter::new();
    let mut chars = 0usize;
    let mut next = Some(first);
    while let Some(chunk) = next.take() {
        let checked = check_chunk_session(Some(&session_id), &chunk).and_then(|()| {
            chars += chunk.text.chars().count();
            check_text_limit(chars, max_chars)
        });
        if let Err(violation) = checked {
            let _ = sentences.send(Err(violation.to_status())).await;
            return;
        }
        for sentence in splitter.push(&chunk.text) {
            if sentences.send(Ok(sentence)).await.is_err() {
                return;
            }
        }
        if chunk.is_final {
            break;
        }
        next = match input.message().await {
            Ok(chunk) => chunk,
            Err(status) => {
                // The client went away or broke the stream; nothing to answer.
                tracing::debug!(session = %session_id, %status, "text stream ended with an error");
                return;
            }
        };
    }
    if let Some(last) = splitter.finish() {
        let _ = sentences.send(Ok(last)).await;
    }
}

/// One Synthesize call: sentences in, validated frames out.
pub(super) struct Call {
    pub(super) worker: Arc<TtsWorker>,
    pub(super) stops: watch::Receiver<u64>,
    pub(super) session: Arc<Session>,
    pub(super) session_id: String,
    pub(super) out: mpsc::Sender<Result<AudioFrame, Status>>,
    pub(super) _in_flight: InFlight,
}

/// Why a call stopped early.
enum Halt {
    /// STOP or EndSession: end with the final frame.
    Stopped,
    /// The client is gone, or an error was sent: send nothing more.
    Gone,
}

impl Call {
    pub(super) async fn run(self, mut sentences: mpsc::Receiver<Result<String, Status>>) {
        self.session.calls.fetch_add(1, Ordering::AcqRel);
        let mut stops = self.stops.clone();
        let mut framer = Framer::new(self.session_id.clone(), FrameFormat::DEFAULT);
        let mut sender = FrameSender {
            out: self.out.clone(),
            validator: TtsStreamValidator::new(self.session_id.clone()),
            paused: self.session.paused.subscribe(),
            pace: self.worker.config.realtime.then(|| (Instant::now(), 0u32)),
        };
        let halt = self
            .speak(&mut sentences, &mut stops, &mut framer, &mut sender)
            .await;
        if !matches!(halt, Some(Halt::Gone)) {
            let last = framer.finish();
            if sender.send(last, &mut stops).await.is_ok() {
                if let Err(violation) = sender.validator.finish() {
                    tracing::error!(session = %self.session_id, %violation, "own stream invalid");
                }
            }
        }
        self.session.touch();
        self.session.calls.fetch_sub(1, Ordering::AcqRel);
    }

    /// Synthesizes sentence by sentence until the text ends (`None`) or the
    /// call halts.
    async fn speak(
        &self,
        sentences: &mut mpsc::Receiver<Result<String, Status>>,
        stops: &mut watch::Receiver<u64>,
        framer: &mut Framer,
        sender: &mut FrameSender,
    ) -> Option<Halt> {
        loop {
            let next = tokio::select! {
                biased;
                _ = stops.changed() => return Some(Halt::Stopped),
                () = self.out.closed() => return Some(Halt::Gone),
                next = sentences.recv() => next,
            };
            let sentence = match next {
                None => return None,
                Some(Ok(sentence)) => sentence,
                Some(Err(status)) => {
                    let _ = self.out.send(Err(status)).await;
                    return Some(Halt::Gone);
                }
            };
            let voice = self.session.voice();
            let audio = tokio::select! {
                biased;
                _ = stops.changed() => return Some(Halt::Stopped),
                () = self.out.closed() => return Some(Halt::Gone),
                audio = self.worker.synthesize_sentence(voice, sentence) => audio,
            };
            let mut audio = match audio {
                Ok(audio) => audio,
                Err(error) => return Some(self.synthesis_failed(error).await),
            };
            // Frames leave as each piece of the sentence is ready.
            loop {
                let piece = tokio::select! {
                    biased;
                    _ = stops.changed() => return Some(Halt::Stopped),
                    () = self.out.closed() => return Some(Halt::Gone),
                    piece = audio.recv() => piece,
                };
                let samples = match piece {
                    None => break,
                    Some(Ok(samples)) => samples,
                    Some(Err(error)) => return Some(self.synthesis_failed(error).await),
                };
                for frame in framer.push(&samples) {
                    if let Err(halt) = sender.send(frame, stops).await {
                        return Some(halt);
                    }
                }
            }
        }
    }

    async fn synthesis_failed(&self, error: EngineError) -> Halt {
        tracing::error!(session = %self.session_id, %error, "synthesis failed");
        let _ = self
            .out
            .send(Err(Status::internal(error.to_string())))
            .await;
        Halt::Gone
    }
}

/// Sends frames: validated, held while paused, paced when asked.
struct FrameSender {
    out: mpsc::Sender<Result<AudioFrame, Status>>,
    validator: TtsStreamValidator,
    paused: watch::Receiver<bool>,
    /// Start of pacing and frames sent, when pacing at real time.
    pace: Option<(Instant, u32)>,
}

impl FrameSender {
    /// Sends one frame. A STOP while paused still lets this frame out (its
    /// sequence number is taken) and then halts the call.
    async fn send(
        &mut self,
        frame: AudioFrame,
        stops: &mut watch::Receiver<u64>,
    ) -> Result<(), Halt> {
        let mut halt = None;
        if !frame.is_final && *self.paused.borrow() {
            tokio::select! {
                _ = self.paused.wait_for(|paused| !paused) => {}
                _ = stops.changed() => halt = Some(Halt::Stopped),
                () = self.out.closed() => return Err(Halt::Gone),
            }
        }
        if let Err(violation) = self.validator.observe(&frame) {
            // Our own bug: say so rather than send a frame that breaks the contract.
            tracing::error!(%violation, "refusing to send an invalid frame");
            let _ = self
                .out
                .send(Err(Status::internal(violation.to_string())))
                .await;
            return Err(Halt::Gone);
        }
        if let Some((start, sent)) = self.pace.as_mut() {
            let due = *start + Duration::from_millis(u64::from(*sent) * 20);
            tokio::time::sleep_until(due.into()).await;
            *sent += 1;
        }
        self.out.send(Ok(frame)).await.map_err(|_| Halt::Gone)?;
        halt.map_or(Ok(()), Err)
    }
}
