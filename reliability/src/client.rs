//! Clients of the orchestrator as an application would be: a session on
//! the relayed `tts.TTSService` (StartSession, Synthesize per message,
//! EndSession) or `voxwire.v1.Voxwire/Speak`. Every frame is validated
//! (session echo, sequence numbers, one final), so a lost or reordered frame
//! fails the turn; audio is kept to compare with a reference.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::Streaming;
use voxwire_proto::tts::tts_service_client::TtsServiceClient;
use voxwire_proto::tts::{AudioFrame, EndSessionRequest, StartSessionRequest, TextChunk};
use voxwire_proto::tts_stream::TtsStreamValidator;
use voxwire_proto::voxwire::v1::voxwire_client::VoxwireClient;
use voxwire_proto::voxwire::v1::SpeakRequest;

use crate::Result;

/// One completed turn as the client saw it.
#[derive(Debug, Clone)]
pub struct Turn {
    pub frames: usize,
    /// The data frames' PCM, concatenated.
    pub audio: Vec<u8>,
    pub first_frame: Option<Duration>,
    pub elapsed: Duration,
}

/// A client session on the orchestrator's relayed `tts.TTSService`.
pub struct TtsSession {
    client: TtsServiceClient<Channel>,
    pub id: String,
    /// StartSession's message (the orchestrator names the worker chosen).
    pub started: String,
}

impl TtsSession {
    pub async fn open(channel: Channel, id: &str) -> Result<TtsSession> {
        let mut client = TtsServiceClient::new(channel);
        let started = client
            .start_session(StartSessionRequest {
                session_id: id.to_string(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .message;
        Ok(TtsSession {
            client,
            id: id.to_string(),
            started,
        })
    }

    /// Starts one Synthesize of `text` and returns its frame stream
    /// unread (a test that drops it is a client going away mid-turn).
    pub async fn start(&mut self, text: &str) -> Result<Streaming<AudioFrame>> {
        let chunk = TextChunk {
            session_id: self.id.clone(),
            text: text.to_string(),
            is_final: true,
            sequence_number: 1,
        };
        Ok(self
            .client
            .synthesize(tokio_stream::iter(vec![chunk]))
            .await?
            .into_inner())
    }

    /// One message: the whole turn, validated.
    pub async fn synthesize(&mut self, text: &str) -> Result<Turn> {
        self.synthesize_observed(text, None).await
    }

    /// Like [`TtsSession::synthesize`], publishing the number of frames
    /// received so far on `progress` (tests inject a fault mid-stream).
    pub async fn synthesize_observed(
        &mut self,
        text: &str,
        progress: Option<&watch::Sender<usize>>,
    ) -> Result<Turn> {
        let started = Instant::now();
        let frames = self.start(text).await?;
        collect(frames, &self.id, started, progress).await
    }

    pub async fn close(mut self) -> Result<()> {
        self.client
            .end_session(EndSessionRequest {
                session_id: self.id.clone(),
            })
            .await?;
        Ok(())
    }
}

/// One `voxwire.v1.Voxwire/Speak` turn.
pub async fn speak(channel: Channel, session_id: &str, text: &str) -> Result<Turn> {
    let started = Instant::now();
    let frames = VoxwireClient::new(channel)
        .speak(SpeakRequest {
            session_id: session_id.to_string(),
            text: text.to_string(),
            ..Default::default()
        })
        .await?
        .into_inner();
    collect(frames, session_id, started, None).await
}

async fn collect(
    mut frames: Streaming<AudioFrame>,
    session_id: &str,
    started: Instant,
    progress: Option<&watch::Sender<usize>>,
) -> Result<Turn> {
    let mut validator = TtsStreamValidator::new(session_id);
    let mut turn = Turn {
        frames: 0,
        audio: Vec::new(),
        first_frame: None,
        elapsed: Duration::ZERO,
    };
    while let Some(frame) = frames.message().await? {
        let kind = validator.observe(&frame)?;
        turn.frames += 1;
        turn.first_frame.get_or_insert_with(|| started.elapsed());
        if let Some(progress) = progress {
            progress.send_replace(turn.frames);
        }
        if kind.has_audio() {
            turn.audio.extend_from_slice(&frame.audio_data);
        }
        if kind.is_final() {
            break;
        }
    }
    validator.finish()?;
    turn.elapsed = started.elapsed();
    Ok(turn)
}

/// The audio the tone engine makes for `text`, asked straight from the
/// worker at `addr`: what every turn through the orchestrator must equal.
pub async fn reference(addr: &str, text: &str) -> Result<Vec<u8>> {
    Ok(voxctl::speak::via_worker(addr, text, "").await?.pcm)
}

/// A session id unique in this process.
pub fn session_id(tag: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "rel-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
