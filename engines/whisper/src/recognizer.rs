use std::collections::VecDeque;
use std::time::Instant;

use crate::error::WhisperError;
use crate::model::{quietest_point, Effort, Transcription, WhisperModel};
use crate::vad::{EnergyVad, VadSettings, FRAME_SAMPLES};
use crate::SAMPLE_RATE;

/// How a [`Recognizer`] finds utterances in a stream. Levels are in dB
/// relative to full scale (a full-scale square wave is 0 dBFS).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EndpointConfig {
    /// A 20 ms frame this far above the noise floor starts an utterance.
    pub onset_db: f32,
    /// Inside an utterance, a frame this far above the floor still counts as
    /// speech; lower than `onset_db` so soft endings are kept.
    pub continue_db: f32,
    /// The noise floor is never taken lower than this, so digital silence does
    /// not turn faint clicks into speech.
    pub noise_floor_min_db: f32,
    /// Frames quieter than this are never speech, whatever the floor.
    pub min_speech_level_db: f32,
    /// The floor is the quietest frame of this much recent audio.
    pub noise_window_ms: u32,
    /// Non-speech that ends an utterance: longer than a pause mid-sentence.
    /// The final is decoded while this runs (see `post_roll_ms`), so it is
    /// ready when the endpoint is.
    pub min_silence_ms: u32,
    /// Utterances with less speech than this are dropped as noise (unless a
    /// partial already announced them, in which case they get a final).
    pub min_speech_ms: u32,
    /// An utterance this long is ended at its quietest recent point, and the
    /// rest of the speech continues as the next utterance. Kept under 30 s so
    /// an utterance fits one Whisper window.
    pub max_utterance_ms: u32,
    /// Speech before an utterance's first partial result.
    pub first_partial_ms: u32,
    /// Audio of an open utterance between two partial results, at least;
    /// the recognizer stretches it to twice the last partial's compute time
    /// so partials never make it fall behind real time.
    pub partial_interval_ms: u32,
    /// Audio kept before the first speech frame, so onsets are not clipped.
    pub pre_roll_ms: u32,
    /// Audio kept after the last speech frame. The final is decoded as soon
    /// as this much silence has followed the speech, before the endpoint is
    /// sure, so that it is ready when the endpoint is.
    pub post_roll_ms: u32,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            onset_db: 12.0,
            continue_db: 8.0,
            noise_floor_min_db: -65.0,
            min_speech_level_db: -50.0,
            noise_window_ms: 3_000,
            // The Piper voice pauses 280-300 ms at a comma (espeak-ng about
            // 160 ms); 400 ms rides over both with room for noise.
            min_silence_ms: 400,
            min_speech_ms: 150,
            max_utterance_ms: 28_000,
            first_partial_ms: 300,
            partial_interval_ms: 1_000,
            pre_roll_ms: 200,
            post_roll_ms: 100,
        }
    }
}

/// A transcript event of one stream, in the order the rules require: per
/// utterance zero or more partials (never blank) then exactly one final.
#[derive(Debug, Clone, PartialEq)]
pub struct RecognizerEvent {
    /// 1, 2, 3, ... in stream order; utterances never interleave.
    pub utterance_id: u64,
    pub text: String,
    pub is_final: bool,
    /// Where the utterance's audio starts and (so far) ends, in ms of the
    /// stream's audio.
    pub start_ms: i64,
    pub end_ms: i64,
    /// 0..1; see [`crate::Transcription::confidence`].
    pub confidence: f32,
}

/// Recognises one audio stream: cuts it into utterances by voice activity and
/// transcribes each as it ends. One per stream; not shared between threads.
#[derive(Debug)]
pub struct Recognizer {
    model: WhisperModel,
    partials: bool,
    vad: EnergyVad,
    /// Settings in samples.
    min_silence: usize,
    min_speech: usize,
    first_partial: usize,
    max_utterance: usize,
    partial_interval: usize,
    pre_roll: usize,
    post_roll: usize,
    /// Samples short of a whole frame, waiting for the next push.
    pending: Vec<f32>,
    /// Stream position (samples) of the first sample of `pending`.
    position: u64,
    /// Recent audio outside any utterance: the pre-roll of the next one.
    history: VecDeque<f32>,
    open: Option<Utterance>,
    next_id: u64,
    /// Stream position where the last final's audio ended.
    last_end: u64,
    /// Compute time of the last partial decode, in samples of audio. Partials
    /// are spaced at least twice that far apart, so that on a slow or busy
    /// machine they cannot make the recognizer fall behind real time, which
    /// would delay every final after them.
    partial_cost: usize,
    finished: bool,
}

#[derive(Debug)]
struct Utterance {
    start: u64,
    audio: Vec<f32>,
    voiced: usize,
    silence_run: usize,
    /// Length of `audio` up to the end of the last speech frame.
    voiced_end: usize,
    /// Assigned with the first event, so dropped noise uses up no id.
    id: Option<u64>,
    /// Length of `audio` at the last partial; `None` before the first.
    partial_at: Option<usize>,
    /// The final, decoded ahead in the silence after the speech: valid
    /// while no speech follows.
    speculated: Option<Speculated>,
}

/// A transcript of the first `audio_len` samples of an utterance.
#[derive(Debug)]
struct Speculated {
    audio_len: usize,
    transcription: Transcription,
}

fn ms_to_samples(ms: u32) -> usize {
    (u64::from(ms) * u64::from(SAMPLE_RATE) / 1000) as usize
}

fn samples_to_ms(samples: u64) -> i64 {
    (samples * 1000 / u64::from(SAMPLE_RATE)) as i64
}

impl Recognizer {
    /// `partials`: whether to emit partial results while an utterance is open
    /// (each costs one decode, every `partial_interval_ms` of audio).
    pub fn new(model: WhisperModel, config: EndpointConfig, partials: bool) -> Recognizer {
        let frame_ms = (FRAME_SAMPLES as u32 * 1000) / SAMPLE_RATE;
        let vad = EnergyVad::new(VadSettings {
            onset_db: config.onset_db,
            continue_db: config.continue_db,
            floor_min_db: config.noise_floor_min_db,
            min_speech_db: config.min_speech_level_db,
            floor_window_frames: (config.noise_window_ms / frame_ms).max(1) as usize,
        });
        // A window is 30 s; more would be cut inside transcribe anyway, but a
        // stream's utterances are kept within one.
        let max_utterance = ms_to_samples(config.max_utterance_ms.clamp(2_000, 29_000));
        Recognizer {
            model,
            partials,
            vad,
            min_silence: ms_to_samples(config.min_silence_ms).max(FRAME_SAMPLES),
            min_speech: ms_to_samples(config.min_speech_ms),
            first_partial: ms_to_samples(config.first_partial_ms),
            max_utterance,
            partial_interval: ms_to_samples(config.partial_interval_ms).max(FRAME_SAMPLES * 5),
            pre_roll: ms_to_samples(config.pre_roll_ms),
            post_roll: ms_to_samples(config.post_roll_ms),
            pending: Vec::with_capacity(FRAME_SAMPLES),
            position: 0,
            history: VecDeque::new(),
            open: None,
            next_id: 1,
            last_end: 0,
            partial_cost: 0,
            finished: false,
        }
    }

    /// Feeds 16 kHz mono audio. Returns the events it caused: partials at the
    /// configured cadence (never blank) and finals of utterances that ended.
    /// Blocks while it transcribes.
    pub fn push(&mut self, pcm_16k: &[f32]) -> Result<Vec<RecognizerEvent>, WhisperError> {
        if self.finished {
            return Err(WhisperError::Finished);
        }
        if let Some(index) = pcm_16k.iter().position(|s| !s.is_finite()) {
            return Err(WhisperError::NonFiniteAudio { index });
        }
        let mut events = Vec::new();
        let mut rest = pcm_16k;
        while !rest.is_empty() {
            let take = (FRAME_SAMPLES - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == FRAME_SAMPLES {
                let frame = std::mem::take(&mut self.pending);
                self.frame(&frame, &mut events)?;
                self.position += frame.len() as u64;
                self.pending = frame;
                self.pending.clear();
            }
        }
        Ok(events)
    }

    /// Ends the stream: the final of the open utterance, or, when none is
    /// open, one final with empty text covering the trailing audio. Always
    /// returns exactly one final. Later calls to `push` or `finish` fail with
    /// [`WhisperError::Finished`].
    pub fn finish(&mut self) -> Result<Vec<RecognizerEvent>, WhisperError> {
        if self.finished {
            return Err(WhisperError::Finished);
        }
        self.finished = true;
        let tail = std::mem::take(&mut self.pending);
        self.position += tail.len() as u64;
        match self.open.take() {
            Some(mut utterance) => {
                utterance.audio.extend_from_slice(&tail);
                let keep = self.final_len(&utterance);
                utterance.audio.truncate(keep);
                // Too little speech to transcribe: a final is still owed.
                let transcribe = utterance.voiced >= self.min_speech;
                Ok(vec![self.final_event(utterance, transcribe)?])
            }
            None => {
                let id = self.take_id();
                Ok(vec![RecognizerEvent {
                    utterance_id: id,
                    text: String::new(),
                    is_final: true,
                    start_ms: samples_to_ms(self.last_end),
                    end_ms: samples_to_ms(self.position.max(self.last_end)),
                    confidence: 0.0,
                }])
            }
        }
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn frame(
        &mut self,
        frame: &[f32],
        events: &mut Vec<RecognizerEvent>,
    ) -> Result<(), WhisperError> {
        let Some(mut utterance) = self.open.take() else {
            if self.vad.is_speech(frame, false) {
                let mut audio: Vec<f32> = self.history.drain(..).collect();
                let start = self.position - audio.len() as u64;
                audio.extend_from_slice(frame);
                self.open = Some(Utterance {
                    start,
                    voiced_end: audio.len(),
                    audio,
                    voiced: frame.len(),
                    silence_run: 0,
                    id: None,
                    partial_at: None,
                    speculated: None,
                });
            } else {
                self.history.extend(frame.iter().copied());
                let excess = self.history.len().saturating_sub(self.pre_roll);
                self.history.drain(..excess);
            }
            return Ok(());
        };

        utterance.audio.extend_from_slice(frame);
        if self.vad.is_speech(frame, true) {
            utterance.voiced += frame.len();
            utterance.silence_run = 0;
            utterance.voiced_end = utterance.audio.len();
            // Speech again: whatever was decoded ahead is no longer the end.
            utterance.speculated = None;
        } else {
            utterance.silence_run += frame.len();
            if utterance.silence_run >= self.post_roll
                && utterance.speculated.is_none()
                && utterance.voiced >= self.min_speech
            {
                // The audio the final would have, if the silence holds: decode
                // it now rather than after the endpoint. Depends on the audio
                // alone, so paced and unpaced streams end utterances alike.
                let audio_len = self.final_len(&utterance);
                let transcription = self.model.transcribe(&utterance.audio[..audio_len])?;
                utterance.speculated = Some(Speculated {
                    audio_len,
                    transcription,
                });
            }
        }

        if utterance.silence_run >= self.min_silence {
            self.close(utterance, events)?;
        } else if utterance.audio.len() >= self.max_utterance {
            self.split(utterance, events)?;
        } else {
            // Only on a speech frame: in a pause the utterance may be about to
            // end, and a partial then would only delay its final.
            let due = match utterance.partial_at {
                None => utterance.voiced >= self.first_partial,
                Some(at) => {
                    utterance.audio.len() - at >= self.partial_interval.max(2 * self.partial_cost)
                }
            };
            if self.partials
                && utterance.silence_run == 0
                && utterance.voiced >= self.min_speech
                && due
            {
                utterance.partial_at = Some(utterance.audio.len());
                if let Some(event) = self.partial_event(&mut utterance)? {
                    events.push(event);
                }
            }
            self.open = Some(utterance);
        }
        Ok(())
    }

    /// How much of an utterance's audio its final covers: the speech and the
    /// post-roll after it.
    fn final_len(&self, utterance: &Utterance) -> usize {
        (utterance.voiced_end + self.post_roll).min(utterance.audio.len())
    }

    /// The utterance ended in silence: its final, unless it was noise nobody
    /// heard about.
    fn close(
        &mut self,
        mut utterance: Utterance,
        events: &mut Vec<RecognizerEvent>,
    ) -> Result<(), WhisperError> {
        let keep = self.final_len(&utterance);
        // The silence after the kept audio is the next utterance's pre-roll.
        let trailing = &utterance.audio[keep..];
        let from = trailing.len().saturating_sub(self.pre_roll);
        self.history = trailing[from..].iter().copied().collect();
        utterance.audio.truncate(keep);
        if utterance.voiced < self.min_speech && utterance.id.is_none() {
            return Ok(());
        }
        events.push(self.final_event(utterance, true)?);
        Ok(())
    }

    /// The utterance reached the length limit while still speaking: end it at
    /// the quietest point of its last seconds and carry the rest over.
    fn split(
        &mut self,
        mut utterance: Utterance,
        events: &mut Vec<RecognizerEvent>,
    ) -> Result<(), WhisperError> {
        let len = utterance.audio.len();
        let search = ms_to_samples(3_000).min(len / 2);
        let cut = quietest_point(&utterance.audio, len - search, len);
        let rest = utterance.audio.split_off(cut);
        let next = Utterance {
            start: utterance.start + cut as u64,
            voiced: rest.len(),
            silence_run: utterance.silence_run.min(rest.len()),
            voiced_end: rest.len(),
            audio: rest,
            id: None,
            partial_at: None,
            speculated: None,
        };
        utterance.voiced_end = utterance.voiced_end.min(cut);
        events.push(self.final_event(utterance, true)?);
        self.open = Some(next);
        Ok(())
    }

    fn partial_event(
        &mut self,
        utterance: &mut Utterance,
    ) -> Result<Option<RecognizerEvent>, WhisperError> {
        let started = Instant::now();
        let result = self
            .model
            .transcribe_with(&utterance.audio, Effort::Greedy)?;
        self.partial_cost =
            (started.elapsed().as_secs_f64() * f64::from(SAMPLE_RATE)).round() as usize;
        if result.text.trim().is_empty() {
            return Ok(None);
        }
        let id = match utterance.id {
            Some(id) => id,
            None => {
                let id = self.take_id();
                utterance.id = Some(id);
                id
            }
        };
        Ok(Some(RecognizerEvent {
            utterance_id: id,
            text: result.text,
            is_final: false,
            start_ms: samples_to_ms(utterance.start),
            end_ms: samples_to_ms(utterance.start + utterance.audio.len() as u64),
            confidence: result.confidence,
        }))
    }

    fn final_event(
        &mut self,
        utterance: Utterance,
        transcribe: bool,
    ) -> Result<RecognizerEvent, WhisperError> {
        let (text, confidence) = if transcribe {
            let result = match utterance.speculated {
                // Decoded ahead on exactly this audio.
                Some(s) if s.audio_len == utterance.audio.len() => s.transcription,
                _ => self.model.transcribe(&utterance.audio)?,
            };
            (result.text, result.confidence)
        } else {
            (String::new(), 0.0)
        };
        let id = match utterance.id {
            Some(id) => id,
            None => self.take_id(),
        };
        let end = utterance.start + utterance.audio.len() as u64;
        self.last_end = end;
        Ok(RecognizerEvent {
            utterance_id: id,
            text,
            is_final: true,
            start_ms: samples_to_ms(utterance.start),
            end_ms: samples_to_ms(end),
            confidence,
        })
    }
}
