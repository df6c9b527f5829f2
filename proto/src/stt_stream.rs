//! One `Recognize` stream: the client's requests ([`SttRequestValidator`], used
//! by whoever serves the stream) and the server's transcript events
//! ([`SttStreamValidator`], used by whoever reads them).

use crate::audio::{SAMPLE_BYTES, STT_SAMPLE_RATES};
use crate::rules::{Rule, Violation};
use crate::session::validate_session_id;
use crate::stt::{recognize_request, RecognitionConfig, RecognizeRequest, TranscriptEvent};

/// What a worker accepts on one stream. Advertised in GetCapabilities metrics
/// (`max_chunk_bytes`, `max_stream_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SttLimits {
    pub max_chunk_bytes: usize,
    pub max_stream_seconds: u32,
}

impl Default for SttLimits {
    fn default() -> Self {
        SttLimits {
            // One second of 48 kHz audio.
            max_chunk_bytes: 96_000,
            max_stream_seconds: 600,
        }
    }
}

/// A request that passed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SttInput<'a> {
    Config(&'a RecognitionConfig),
    Audio {
        pcm: &'a [u8],
        /// The client's end of audio: nothing follows.
        end_of_audio: bool,
    },
}

/// Checks the client side of a Recognize stream, request by request:
/// STT-CONFIG-FIRST, SESSION-ID-INVALID, STT-CONFIG-RATE, STT-AUDIO-ODD-BYTES,
/// STT-AUDIO-AFTER-END, STT-CHUNK-LIMIT and STT-DURATION-LIMIT.
#[derive(Debug, Clone)]
pub struct SttRequestValidator {
    limits: SttLimits,
    sample_rate: Option<u32>,
    ended: bool,
    audio_bytes: u64,
}

impl SttRequestValidator {
    pub fn new(limits: SttLimits) -> Self {
        SttRequestValidator {
            limits,
            sample_rate: None,
            ended: false,
            audio_bytes: 0,
        }
    }

    /// Whether the client has ended its audio.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Seconds of audio received so far.
    pub fn audio_seconds(&self) -> f64 {
        match self.sample_rate {
            Some(rate) => self.audio_bytes as f64 / (f64::from(rate) * SAMPLE_BYTES as f64),
            None => 0.0,
        }
    }

    pub fn accept<'a>(&mut self, request: &'a RecognizeRequest) -> Result<SttInput<'a>, Violation> {
        if self.ended {
            return Err(Violation::new(
                Rule::SttAudioAfterEnd,
                "a request arrived after the audio chunk with is_final",
            ));
        }
        match (&request.request, self.sample_rate) {
            (Some(recognize_request::Request::Config(config)), None) => {
                validate_session_id(&config.session_id)?;
                let rate = u32::try_from(config.sample_rate)
                    .ok()
                    .filter(|rate| STT_SAMPLE_RATES.contains(rate))
                    .ok_or_else(|| {
                        Violation::new(
                            Rule::SttConfigRate,
                            format!(
                                "sample_rate {} Hz is outside {}..={} Hz",
                                config.sample_rate,
                                STT_SAMPLE_RATES.start(),
                                STT_SAMPLE_RATES.end()
                            ),
                        )
                    })?;
                self.sample_rate = Some(rate);
                Ok(SttInput::Config(config))
            }
            (Some(recognize_request::Request::Config(_)), Some(_)) => Err(Violation::new(
                Rule::SttConfigFirst,
                "a second config arrived; config comes once, first",
            )),
            (Some(recognize_request::Request::Audio(_)), None) | (None, None) => Err(
                Violation::new(Rule::SttConfigFirst, "the first request must carry config"),
            ),
            (None, Some(_)) => Err(Violation::new(
                Rule::SttConfigFirst,
                "a request carried neither config nor audio",
            )),
            (Some(recognize_request::Request::Audio(chunk)), Some(rate)) => {
                let len = chunk.audio_data.len();
                if !len.is_multiple_of(SAMPLE_BYTES) {
                    return Err(Violation::new(
                        Rule::SttAudioOddBytes,
                        format!("an audio chunk of {len} bytes splits a 16-bit sample"),
                    ));
                }
                if len > self.limits.max_chunk_bytes {
                    return Err(Violation::new(
                        Rule::SttChunkLimit,
                        format!(
                            "an audio chunk of {len} bytes exceeds the limit of {}",
                            self.limits.max_chunk_bytes
                        ),
                    ));
                }
                self.audio_bytes += len as u64;
                let max_bytes = u64::from(self.limits.max_stream_seconds)
                    * u64::from(rate)
                    * SAMPLE_BYTES as u64;
                if self.audio_bytes > max_bytes {
                    return Err(Violation::new(
                        Rule::SttDurationLimit,
                        format!(
                            "the stream's audio exceeds the limit of {} s",
                            self.limits.max_stream_seconds
                        ),
                    ));
                }
                self.ended = chunk.is_final;
                Ok(SttInput::Audio {
                    pcm: &chunk.audio_data,
                    end_of_audio: chunk.is_final,
                })
            }
        }
    }

    /// The stream's first request, which must be its config: the config,
    /// typed, so a caller has no "audio first" case left to handle.
    pub fn accept_config<'a>(
        &mut self,
        request: &'a RecognizeRequest,
    ) -> Result<&'a RecognitionConfig, Violation> {
        match self.accept(request)? {
            SttInput::Config(config) => Ok(config),
            // Only once a config was accepted can audio pass accept().
            SttInput::Audio { .. } => Err(Violation::new(
                Rule::SttConfigFirst,
                "accept_config called after the config",
            )),
        }
    }

    /// A request after the config: its audio and whether it ends the audio.
    pub fn accept_audio<'a>(
        &mut self,
        request: &'a RecognizeRequest,
    ) -> Result<(&'a [u8], bool), Violation> {
        match self.accept(request)? {
            SttInput::Audio { pcm, end_of_audio } => Ok((pcm, end_of_audio)),
            // Only before any config can a config pass accept().
            SttInput::Config(_) => Err(Violation::new(
                Rule::SttConfigFirst,
                "accept_audio called before the config",
            )),
        }
    }

    /// The client half-closed: that ends its audio too. A stream closed before
    /// any config breaks STT-CONFIG-FIRST.
    pub fn half_closed(&mut self) -> Result<(), Violation> {
        self.ended = true;
        if self.sample_rate.is_none() {
            return Err(Violation::new(
                Rule::SttConfigFirst,
                "the stream closed before any config",
            ));
        }
        Ok(())
    }
}

/// What a worker offers a config to choose from: the models and languages
/// its GetCapabilities lists (`resident_models`, `capabilities.languages`).
#[derive(Debug, Clone, Copy)]
pub struct SttOffer<'a> {
    pub models: &'a [String],
    pub languages: &'a [String],
}

/// STT-MODEL-UNKNOWN and STT-LANGUAGE-UNSUPPORTED: whether a worker making
/// `offer` can serve `config`. Empty fields ask for the worker's defaults.
pub fn check_choice(config: &RecognitionConfig, offer: SttOffer<'_>) -> Result<(), Violation> {
    if !config.model_id.is_empty() && !offer.models.contains(&config.model_id) {
        return Err(Violation::new(
            Rule::SttModelUnknown,
            format!(
                "no model {:?}; this worker has {:?} (empty model_id: its default)",
                config.model_id, offer.models
            ),
        ));
    }
    if config.language.is_empty() {
        return Ok(());
    }
    let Some(primary) = primary_language(&config.language) else {
        return Err(Violation::new(
            Rule::SttLanguageUnsupported,
            format!(
                "language {:?} is not a BCP-47 tag (e.g. \"en\" or \"en-US\")",
                config.language
            ),
        ));
    };
    let offered = offer
        .languages
        .iter()
        .any(|l| primary_language(l).is_some_and(|p| p.eq_ignore_ascii_case(primary)));
    if !offered {
        return Err(Violation::new(
            Rule::SttLanguageUnsupported,
            format!(
                "language {:?} is not offered; this worker recognizes {:?}",
                config.language, offer.languages
            ),
        ));
    }
    Ok(())
}

/// The primary language subtag of a well-formed BCP-47 tag (`en` of
/// `en-US`), or `None` when `tag` is not one: subtags of 1 to 8 letters and
/// digits joined by `-`, the first 2-3 or 5-8 letters. Extensions and
/// private use are let through as subtags; only the primary one is compared.
pub fn primary_language(tag: &str) -> Option<&str> {
    let mut subtags = tag.split('-');
    let primary = subtags.next()?;
    let primary_ok =
        matches!(primary.len(), 2 | 3 | 5..=8) && primary.bytes().all(|b| b.is_ascii_alphabetic());
    let rest_ok =
        subtags.all(|s| (1..=8).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric()));
    (primary_ok && rest_ok).then_some(primary)
}

/// What a transcript event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Partial,
    Final,
}

/// Validates the events of one Recognize stream as they arrive. Call
/// [`end_of_audio`](Self::end_of_audio) when the client ends its audio, and
/// [`finish`](Self::finish) when the stream ends with OK.
#[derive(Debug, Clone)]
pub struct SttStreamValidator {
    session_id: String,
    partials_requested: bool,
    next_sequence: i64,
    open_utterance: Option<u64>,
    highest_utterance: u64,
    /// Finals seen since the client's end of audio; `None` before it.
    finals_since_end: Option<u64>,
}

impl SttStreamValidator {
    pub fn new(session_id: impl Into<String>, partials_requested: bool) -> Self {
        SttStreamValidator {
            session_id: session_id.into(),
            partials_requested,
            next_sequence: 1,
            open_utterance: None,
            highest_utterance: 0,
            finals_since_end: None,
        }
    }

    /// The utterance that has events but no final yet.
    pub fn open_utterance(&self) -> Option<u64> {
        self.open_utterance
    }

    /// The client's end of audio happened (sent, or seen by the server).
    pub fn end_of_audio(&mut self) {
        self.finals_since_end.get_or_insert(0);
    }

    pub fn observe(&mut self, event: &TranscriptEvent) -> Result<EventKind, Violation> {
        let seq = event.sequence_number;
        if event.session_id != self.session_id {
            return Err(Violation::new(
                Rule::SttSessionEcho,
                format!(
                    "event {seq} carries session {:?}, the stream is for {:?}",
                    event.session_id, self.session_id
                ),
            ));
        }
        if seq != self.next_sequence {
            let rule = if self.next_sequence == 1 {
                Rule::SttSeqStart
            } else {
                Rule::SttSeqGap
            };
            return Err(Violation::new(
                rule,
                format!("sequence_number {seq} where {} was due", self.next_sequence),
            ));
        }
        if event.start_ms < 0 || event.start_ms > event.end_ms {
            return Err(Violation::new(
                Rule::SttOffsets,
                format!(
                    "event {seq} spans {} ms to {} ms",
                    event.start_ms, event.end_ms
                ),
            ));
        }
        let kind = if event.is_final {
            EventKind::Final
        } else {
            EventKind::Partial
        };
        if kind == EventKind::Partial && event.text.trim().is_empty() {
            return Err(Violation::new(
                Rule::SttPartialEmpty,
                format!("partial event {seq} has blank text"),
            ));
        }
        let id = event.utterance_id;
        if id == 0 {
            return Err(Violation::new(
                Rule::SttUtteranceId,
                format!("event {seq} has utterance id 0"),
            ));
        }
        match self.open_utterance {
            Some(open) if open == id => {}
            Some(open) if id > self.highest_utterance => {
                return Err(Violation::new(
                    Rule::SttUtteranceOverlap,
                    format!("event {seq} starts utterance {id} while {open} has no final"),
                ));
            }
            _ if id <= self.highest_utterance => {
                return Err(Violation::new(
                    Rule::SttUtteranceClosed,
                    format!("event {seq} is for utterance {id}, which already had its final"),
                ));
            }
            _ => {}
        }
        if kind == EventKind::Partial && !self.partials_requested {
            return Err(Violation::new(
                Rule::SttPartialUnrequested,
                format!("partial event {seq} sent to a client that did not ask for partials"),
            ));
        }
        self.next_sequence += 1;
        self.highest_utterance = self.highest_utterance.max(id);
        match kind {
            EventKind::Partial => self.open_utterance = Some(id),
            EventKind::Final => {
                self.open_utterance = None;
                if let Some(finals) = self.finals_since_end.as_mut() {
                    *finals += 1;
                }
            }
        }
        Ok(kind)
    }

    /// The stream ended with OK.
    pub fn finish(&self) -> Result<(), Violation> {
        if let Some(open) = self.open_utterance {
            return Err(Violation::new(
                Rule::SttFinalMissing,
                format!("the stream ended with utterance {open} open"),
            ));
        }
        if self.finals_since_end == Some(0) {
            return Err(Violation::new(
                Rule::SttEndFinal,
                "the stream ended with no final after the client's end of audio",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer<'a>(models: &'a [String], languages: &'a [String]) -> SttOffer<'a> {
        SttOffer { models, languages }
    }

    fn chosen(model_id: &str, language: &str) -> RecognitionConfig {
        RecognitionConfig {
            session_id: "s".into(),
            sample_rate: 16_000,
            model_id: model_id.into(),
            language: language.into(),
            partial_results: false,
        }
    }

    #[test]
    fn the_typed_accepts_say_config_first_then_audio() {
        let (first_audio, last_audio, first) = (audio(4, false), audio(4, true), config(16_000));
        let mut v = SttRequestValidator::new(SttLimits::default());
        let audio_first = v.accept_config(&first_audio).expect_err("audio first");
        assert_eq!(audio_first.rule, Rule::SttConfigFirst);
        let mut v = SttRequestValidator::new(SttLimits::default());
        assert_eq!(v.accept_config(&first).expect("config").sample_rate, 16_000);
        assert_eq!(v.accept_audio(&last_audio), Ok((&[0u8; 4][..], true)));
        let mut v = SttRequestValidator::new(SttLimits::default());
        v.accept_config(&first).expect("config");
        let second = v.accept_audio(&first).expect_err("second config");
        assert_eq!(second.rule, Rule::SttConfigFirst);
    }

    #[test]
    fn a_config_chooses_among_what_the_worker_offers() {
        let models = ["whisper".to_string()];
        let languages = ["en".to_string()];
        let offered = offer(&models, &languages);
        for ok in [("", ""), ("whisper", "en"), ("", "en-US"), ("", "EN-gb")] {
            assert_eq!(check_choice(&chosen(ok.0, ok.1), offered), Ok(()), "{ok:?}");
        }
        let unknown = check_choice(&chosen("large-v3", ""), offered).expect_err("model");
        assert_eq!(unknown.rule, Rule::SttModelUnknown);
        for language in [
            "fr",
            "de-DE",
            "en_US",
            "english!",
            "e",
            "en--US",
            "en-toolongsubtag",
        ] {
            let refused = check_choice(&chosen("", language), offered).expect_err(language);
            assert_eq!(refused.rule, Rule::SttLanguageUnsupported, "{language}");
        }
    }

    #[test]
    fn primary_language_accepts_bcp47_shapes_only() {
        assert_eq!(primary_language("en"), Some("en"));
        assert_eq!(primary_language("yue-Hant-HK"), Some("yue"));
        assert_eq!(primary_language("sr-Latn-RS-x-private1"), Some("sr"));
        for junk in ["", "-", "e", "en-", "1en", "en US", "\u{e9}n", "en-US-"] {
            assert_eq!(primary_language(junk), None, "{junk:?}");
        }
    }
    use crate::stt::AudioChunk;

    fn config(rate: i32) -> RecognizeRequest {
        RecognizeRequest {
            request: Some(recognize_request::Request::Config(RecognitionConfig {
                session_id: "s".into(),
                sample_rate: rate,
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

    fn rule_of(result: Result<SttInput<'_>, Violation>) -> Rule {
        result.unwrap_err().rule
    }

    #[test]
    fn requests_in_order_are_accepted() {
        let mut v = SttRequestValidator::new(SttLimits::default());
        assert!(matches!(v.accept(&config(16_000)), Ok(SttInput::Config(_))));
        assert!(v.accept(&audio(640, false)).is_ok());
        assert!(matches!(
            v.accept(&audio(0, true)),
            Ok(SttInput::Audio {
                end_of_audio: true,
                ..
            })
        ));
        assert!(v.ended());
    }

    #[test]
    fn each_request_rule_rejects_its_fault() {
        let limits = SttLimits {
            max_chunk_bytes: 1000,
            max_stream_seconds: 1,
        };
        let mut v = SttRequestValidator::new(limits);
        assert_eq!(rule_of(v.accept(&audio(2, false))), Rule::SttConfigFirst);
        assert_eq!(rule_of(v.accept(&config(4_000))), Rule::SttConfigRate);
        assert!(v.accept(&config(8_000)).is_ok());
        assert_eq!(rule_of(v.accept(&config(8_000))), Rule::SttConfigFirst);
        assert_eq!(rule_of(v.accept(&audio(3, false))), Rule::SttAudioOddBytes);
        assert_eq!(rule_of(v.accept(&audio(1002, false))), Rule::SttChunkLimit);
        for _ in 0..16 {
            assert!(v.accept(&audio(1000, false)).is_ok());
        }
        assert_eq!(
            rule_of(v.accept(&audio(1000, false))),
            Rule::SttDurationLimit
        );
        let mut v = SttRequestValidator::new(limits);
        assert!(v.accept(&config(8_000)).is_ok());
        assert!(v.accept(&audio(2, true)).is_ok());
        assert_eq!(rule_of(v.accept(&audio(2, false))), Rule::SttAudioAfterEnd);
        let mut v = SttRequestValidator::new(limits);
        assert_eq!(v.half_closed().unwrap_err().rule, Rule::SttConfigFirst);
    }

    #[test]
    fn silence_then_end_needs_one_empty_final() {
        let mut v = SttStreamValidator::new("s", false);
        v.end_of_audio();
        assert_eq!(v.finish().unwrap_err().rule, Rule::SttEndFinal);
        let event = TranscriptEvent {
            session_id: "s".into(),
            utterance_id: 1,
            is_final: true,
            sequence_number: 1,
            ..Default::default()
        };
        assert_eq!(v.observe(&event), Ok(EventKind::Final));
        assert_eq!(v.finish(), Ok(()));
    }
}
