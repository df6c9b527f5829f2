//! The frames of one `Synthesize` stream: how to classify one, how to validate
//! a whole stream as it arrives, and how a worker produces valid ones.
//!
//! A stream has two legal endings (docs/protocol.md, "Endings"):
//! data frames whose last one has `is_final` set (a *final data frame*), or
//! data frames followed by an empty frame with `is_final` set (an *end marker*).
//! An empty frame without `is_final` is never legal.

use crate::audio::{FrameFormat, SAMPLE_BYTES};
use crate::rules::{Rule, Violation};
use crate::tts::{AudioFrame, TextChunk};

/// What a single frame is, judged on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Audio, more to come.
    Data,
    /// Audio, and the last frame of the stream.
    FinalData,
    /// No audio; the stream is over.
    EndMarker,
}

impl FrameKind {
    pub const fn is_final(self) -> bool {
        matches!(self, FrameKind::FinalData | FrameKind::EndMarker)
    }

    /// Whether the frame has audio to play. An end marker has none and is
    /// never played or forwarded as audio.
    pub const fn has_audio(self) -> bool {
        matches!(self, FrameKind::Data | FrameKind::FinalData)
    }
}

/// Classifies one frame by the rules that need no context:
/// TTS-FRAME-EMPTY-NONFINAL, TTS-FORMAT-INVALID and TTS-FRAME-SIZE.
pub fn classify(frame: &AudioFrame) -> Result<FrameKind, Violation> {
    classify_with_format(frame).map(|(kind, _)| kind)
}

/// Like [`classify`], also returning a data frame's format.
fn classify_with_format(frame: &AudioFrame) -> Result<(FrameKind, Option<FrameFormat>), Violation> {
    if frame.audio_data.is_empty() {
        if frame.is_final {
            // The end marker's format fields are not looked at: some workers
            // leave them zero.
            return Ok((FrameKind::EndMarker, None));
        }
        return Err(Violation::new(
            Rule::TtsFrameEmptyNonfinal,
            format!(
                "frame {} has no audio and is_final is false",
                frame.sequence_number
            ),
        ));
    }
    let format = FrameFormat::new(frame.sample_rate, frame.frame_duration_ms)?;
    check_size(frame, format)?;
    let kind = if frame.is_final {
        FrameKind::FinalData
    } else {
        FrameKind::Data
    };
    Ok((kind, Some(format)))
}

fn check_size(frame: &AudioFrame, format: FrameFormat) -> Result<(), Violation> {
    let len = frame.audio_data.len();
    let full = format.frame_bytes();
    let ok = if frame.is_final {
        len.is_multiple_of(SAMPLE_BYTES) && len <= full
    } else {
        len == full
    };
    if ok {
        return Ok(());
    }
    let expected = if frame.is_final {
        format!("an even count up to {full}")
    } else {
        format!("exactly {full}")
    };
    Err(Violation::new(
        Rule::TtsFrameSize,
        format!(
            "frame {} holds {len} bytes; {} Hz x {} ms wants {expected}",
            frame.sequence_number,
            format.sample_rate(),
            format.frame_ms()
        ),
    ))
}

/// Validates one `Synthesize` stream frame by frame: feed every frame to
/// [`observe`](Self::observe), then call [`finish`](Self::finish) when the
/// stream ends with OK. The first violation is returned; a caller stops there.
#[derive(Debug, Clone)]
pub struct TtsStreamValidator {
    session_id: String,
    next_sequence: i64,
    format: Option<FrameFormat>,
    final_seen: bool,
}

impl TtsStreamValidator {
    /// A validator for a call made on `session_id`.
    pub fn new(session_id: impl Into<String>) -> Self {
        TtsStreamValidator {
            session_id: session_id.into(),
            next_sequence: 1,
            format: None,
            final_seen: false,
        }
    }

    /// The format of the stream's data frames, once one has been seen.
    pub fn format(&self) -> Option<FrameFormat> {
        self.format
    }

    /// Whether the final frame has been seen: a reader stops reading here.
    pub fn is_finished(&self) -> bool {
        self.final_seen
    }

    /// Frames accepted so far.
    pub fn frames_seen(&self) -> i64 {
        self.next_sequence - 1
    }

    pub fn observe(&mut self, frame: &AudioFrame) -> Result<FrameKind, Violation> {
        if self.final_seen {
            let (rule, what) = if frame.is_final {
                (Rule::TtsFinalDuplicate, "a second final frame")
            } else {
                (Rule::TtsFrameAfterFinal, "a frame")
            };
            return Err(Violation::new(
                rule,
                format!(
                    "{what} (sequence {}) after the final one",
                    frame.sequence_number
                ),
            ));
        }
        if frame.session_id != self.session_id {
            return Err(Violation::new(
                Rule::TtsSessionEcho,
                format!(
                    "frame {} carries session {:?}, the call is for {:?}",
                    frame.sequence_number, frame.session_id, self.session_id
                ),
            ));
        }
        if frame.sequence_number != self.next_sequence {
            let rule = if self.next_sequence == 1 {
                Rule::TtsSeqStart
            } else {
                Rule::TtsSeqGap
            };
            return Err(Violation::new(
                rule,
                format!(
                    "sequence_number {} where {} was due",
                    frame.sequence_number, self.next_sequence
                ),
            ));
        }
        if !frame.audio_data.is_empty() {
            // Checked before the size rule: a new rate changes the size a
            // frame should have, and the change is the real fault.
            let format = FrameFormat::new(frame.sample_rate, frame.frame_duration_ms)?;
            if let Some(established) = self.format {
                if established != format {
                    return Err(Violation::new(
                        Rule::TtsFormatChange,
                        format!(
                            "frame {} is {} Hz / {} ms, the stream is {} Hz / {} ms",
                            frame.sequence_number,
                            format.sample_rate(),
                            format.frame_ms(),
                            established.sample_rate(),
                            established.frame_ms()
                        ),
                    ));
                }
            }
        }
        let (kind, format) = classify_with_format(frame)?;
        if let Some(format) = format {
            self.format = Some(format);
        }
        self.next_sequence += 1;
        self.final_seen = kind.is_final();
        Ok(kind)
    }

    /// The stream ended with OK: it must have had its final frame.
    pub fn finish(&self) -> Result<(), Violation> {
        if self.final_seen {
            Ok(())
        } else {
            Err(Violation::new(
                Rule::TtsFinalMissing,
                format!(
                    "the stream ended after {} frames with no is_final",
                    self.frames_seen()
                ),
            ))
        }
    }
}

/// The whole answer to a Synthesize call that sent no chunk at all: one end
/// marker, so the stream still has its one final frame (TTS-FINAL-MISSING).
/// No chunk named a session, so the frame echoes none. A worker and a relay
/// answer such a call alike.
pub fn empty_call_reply() -> AudioFrame {
    Framer::new("", FrameFormat::DEFAULT).finish()
}

/// Cuts a worker's PCM into valid frames: full frames as soon as they are
/// complete, and a final frame (the last audio, or an end marker when there is
/// none left) at [`finish`](Self::finish). It holds back at most one frame's
/// worth of samples, so the last audio can carry `is_final` (the final data
/// frame ending) without a separate marker.
#[derive(Debug)]
pub struct Framer {
    session_id: String,
    format: FrameFormat,
    pending: Vec<u8>,
    next_sequence: i64,
}

impl Framer {
    pub fn new(session_id: impl Into<String>, format: FrameFormat) -> Self {
        Framer {
            session_id: session_id.into(),
            format,
            pending: Vec::with_capacity(format.frame_bytes() * 2),
            next_sequence: 1,
        }
    }

    pub fn format(&self) -> FrameFormat {
        self.format
    }

    /// Adds samples; returns the frames they completed. The last complete
    /// frame is held back until more samples or [`finish`](Self::finish) come.
    pub fn push(&mut self, samples: &[i16]) -> Vec<AudioFrame> {
        crate::audio::encode_pcm16(samples, &mut self.pending);
        let frame_bytes = self.format.frame_bytes();
        let ready = if self.pending.len() > frame_bytes {
            (self.pending.len() - 1) / frame_bytes
        } else {
            0
        };
        let mut frames = Vec::with_capacity(ready);
        if ready > 0 {
            let rest = self.pending.split_off(ready * frame_bytes);
            let done = std::mem::replace(&mut self.pending, rest);
            for chunk in done.chunks_exact(frame_bytes) {
                frames.push(self.frame(chunk.to_vec(), false));
            }
        }
        frames
    }

    /// Ends the stream: the held-back audio as a final data frame, or an end
    /// marker when there is none.
    pub fn finish(mut self) -> AudioFrame {
        let last = std::mem::take(&mut self.pending);
        self.frame(last, true)
    }

    fn frame(&mut self, audio: Vec<u8>, is_final: bool) -> AudioFrame {
        let sequence_number = self.next_sequence;
        self.next_sequence += 1;
        AudioFrame {
            session_id: self.session_id.clone(),
            audio_data: audio.into(),
            sample_rate: self.format.sample_rate_field(),
            frame_duration_ms: self.format.frame_ms_field(),
            sequence_number,
            is_final,
        }
    }
}

/// TTS-CHUNK-SESSION: every chunk of a call names the call's session. The
/// first chunk fixes it (`expected` is `None` until then).
pub fn check_chunk_session(expected: Option<&str>, chunk: &TextChunk) -> Result<(), Violation> {
    match expected {
        Some(session) if session != chunk.session_id => Err(Violation::new(
            Rule::TtsChunkSession,
            format!(
                "chunk {} names session {:?}, the call is for {:?}",
                chunk.sequence_number, chunk.session_id, session
            ),
        )),
        _ => Ok(()),
    }
}

/// TTS-TEXT-LIMIT: a call's text, counted in characters, within `max_chars`.
pub fn check_text_limit(chars_so_far: usize, max_chars: usize) -> Result<(), Violation> {
    if chars_so_far > max_chars {
        Err(Violation::new(
            Rule::TtsTextLimit,
            format!("text of {chars_so_far}+ characters exceeds the limit of {max_chars}"),
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_empty_call_reply_is_a_whole_valid_stream() {
        // No chunk named a session, so the call's session is "".
        let mut validator = TtsStreamValidator::new("");
        let reply = empty_call_reply();
        assert!(reply.is_final && reply.audio_data.is_empty());
        assert_eq!(validator.observe(&reply), Ok(FrameKind::EndMarker));
        assert_eq!(validator.finish(), Ok(()));
    }

    fn run(frames: &[AudioFrame]) -> Result<Vec<FrameKind>, Violation> {
        let mut validator = TtsStreamValidator::new("s");
        let kinds = frames
            .iter()
            .map(|f| validator.observe(f))
            .collect::<Result<Vec<_>, _>>()?;
        validator.finish()?;
        Ok(kinds)
    }

    #[test]
    fn framer_output_is_valid_for_any_split() {
        for total in [0usize, 1, 959, 960, 961, 1920, 5000] {
            for piece in [1usize, 7, 960, 2000] {
                let samples: Vec<i16> = (0..total).map(|i| (i % 200) as i16).collect();
                let mut framer = Framer::new("s", FrameFormat::DEFAULT);
                let mut frames = Vec::new();
                for chunk in samples.chunks(piece) {
                    frames.extend(framer.push(chunk));
                }
                frames.push(framer.finish());
                let kinds = run(&frames).expect("framer output must validate");
                let bytes: usize = frames.iter().map(|f| f.audio_data.len()).sum();
                assert_eq!(bytes, total * 2, "no sample is lost");
                let expect_marker = total == 0;
                assert_eq!(kinds.last() == Some(&FrameKind::EndMarker), expect_marker);
            }
        }
    }

    #[test]
    fn lone_end_marker_is_a_legal_stream() {
        let marker = AudioFrame {
            session_id: "s".into(),
            sequence_number: 1,
            is_final: true,
            ..Default::default()
        };
        assert_eq!(run(&[marker]), Ok(vec![FrameKind::EndMarker]));
    }

    #[test]
    fn zero_frames_is_missing_final() {
        assert_eq!(run(&[]).unwrap_err().rule, Rule::TtsFinalMissing);
    }

    #[test]
    fn chunk_session_must_match() {
        let chunk = TextChunk {
            session_id: "b".into(),
            ..Default::default()
        };
        assert!(check_chunk_session(None, &chunk).is_ok());
        assert!(check_chunk_session(Some("b"), &chunk).is_ok());
        assert_eq!(
            check_chunk_session(Some("a"), &chunk).unwrap_err().rule,
            Rule::TtsChunkSession
        );
    }
}
