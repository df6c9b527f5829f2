//! The inputs cases draw from: proptest strategies for texts and their
//! chunkings (TTS) and for audio and its chunkings (STT). Each input's Debug
//! form is what a failure report prints, so it is short and exact.

use std::f32::consts::TAU;
use std::fmt;

use proptest::prelude::*;
use proptest::sample::Index;
use voxwire_proto::stt::{recognize_request, AudioChunk, RecognitionConfig, RecognizeRequest};
use voxwire_proto::tts::TextChunk;

/// Texts of one Synthesize call: ASCII sentences, unicode, punctuation only,
/// white space only, empty, and long ones up to `max_chars`.
pub fn text(max_chars: usize) -> BoxedStrategy<String> {
    let sentence = "[A-Z][a-z]{1,8}( [a-z]{1,8}){0,8}[.!?]";
    let ascii = prop::collection::vec(sentence, 1..4).prop_map(|s| s.join(" "));
    let unicode = prop_oneof![
        Just("Grüße aus Köln. Ça va très bien! Привет, мир. 你好，世界。".to_string()),
        Just("Emoji 🎉 and accents: naïve café. ¿Qué tal?".to_string()),
        "\\PC{1,40}",
    ];
    let long_min = (max_chars / 2).max(1);
    let long = (sentence, long_min..=max_chars.max(long_min)).prop_map(|(s, n)| {
        let mut out = String::with_capacity(n + s.len());
        while out.chars().count() < n {
            out.push_str(&s);
            out.push(' ');
        }
        out.chars().take(n).collect()
    });
    prop_oneof![
        4 => ascii,
        2 => unicode,
        1 => "[.,!?;:…-]{1,8}",
        1 => "[ \t\n]{1,6}",
        1 => Just(String::new()),
        1 => long,
    ]
    .boxed()
}

/// One Synthesize call's input: its text cut into chunks.
#[derive(Clone, PartialEq, Eq)]
pub struct TextInput {
    pub chunks: Vec<String>,
    /// Whether the last chunk carries is_final; otherwise the client ends its
    /// input by half-closing only.
    pub final_flag: bool,
    /// Pause between chunks, as a live source would leave.
    pub delay_ms: u64,
}

impl TextInput {
    pub fn text(&self) -> String {
        self.chunks.concat()
    }

    pub fn to_chunks(&self, session: &str) -> Vec<TextChunk> {
        let last = self.chunks.len().saturating_sub(1);
        self.chunks
            .iter()
            .enumerate()
            .map(|(i, text)| TextChunk {
                session_id: session.to_string(),
                text: text.clone(),
                is_final: self.final_flag && i == last,
                sequence_number: i as i64 + 1,
            })
            .collect()
    }
}

fn short(text: &str) -> String {
    const SHOWN: usize = 60;
    let n = text.chars().count();
    if n <= SHOWN {
        format!("{text:?}")
    } else {
        let head: String = text.chars().take(SHOWN).collect();
        format!("{head:?}… ({n} chars)")
    }
}

impl fmt::Debug for TextInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let chunks: Vec<String> = self.chunks.iter().map(|c| short(c)).collect();
        write!(
            f,
            "{} chunk(s) [{}], is_final on last: {}, {} ms between chunks",
            self.chunks.len(),
            chunks.join(", "),
            self.final_flag,
            self.delay_ms
        )
    }
}

/// A text and a way to cut it: one chunk to many, with and without
/// TextChunk.is_final, with small delays between chunks.
pub fn text_input(max_chars: usize) -> BoxedStrategy<TextInput> {
    (
        text(max_chars),
        prop::collection::vec(any::<Index>(), 0..6),
        any::<bool>(),
        prop_oneof![3 => Just(0u64), 1 => 1u64..15],
    )
        .prop_map(|(text, cuts, final_flag, delay_ms)| {
            let chars: Vec<char> = text.chars().collect();
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(chars.len() + 1)).collect();
            at.push(0);
            at.push(chars.len());
            at.sort_unstable();
            at.dedup();
            let mut chunks: Vec<String> = at
                .windows(2)
                .map(|w| chars[w[0]..w[1]].iter().collect())
                .collect();
            if chunks.is_empty() {
                chunks.push(String::new());
            }
            TextInput {
                chunks,
                final_flag,
                delay_ms,
            }
        })
        .boxed()
}

/// A piece of generated audio.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    Silence { ms: u32 },
    Tone { hz: u32, ms: u32 },
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Segment::Silence { ms } => write!(f, "silence {ms} ms"),
            Segment::Tone { hz, ms } => write!(f, "tone {hz} Hz {ms} ms"),
        }
    }
}

/// How the client ends its audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioEnd {
    /// The last audio chunk carries is_final.
    FinalChunk,
    /// An empty chunk with is_final follows the audio.
    EmptyFinalChunk,
    /// No is_final: the client half-closes.
    HalfClose,
}

/// One Recognize call's input.
#[derive(Clone, PartialEq, Eq)]
pub struct AudioInput {
    pub sample_rate: u32,
    pub segments: Vec<Segment>,
    /// One sample more: an odd sample count (still whole samples).
    pub odd_tail: bool,
    pub chunk_ms: u32,
    pub end: AudioEnd,
    pub partials: bool,
    /// Pause between chunks.
    pub pace_ms: u64,
}

impl fmt::Debug for AudioInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} Hz, {:?}{}, {} ms chunks, end {:?}, partial_results {}, {} ms between chunks",
            self.sample_rate,
            self.segments,
            if self.odd_tail { " + 1 sample" } else { "" },
            self.chunk_ms,
            self.end,
            self.partials,
            self.pace_ms
        )
    }
}

impl AudioInput {
    pub fn pcm(&self) -> Vec<i16> {
        let rate = self.sample_rate as usize;
        let mut out = Vec::new();
        for segment in &self.segments {
            match *segment {
                Segment::Silence { ms } => {
                    out.extend(std::iter::repeat_n(0i16, rate * ms as usize / 1000));
                }
                Segment::Tone { hz, ms } => {
                    let n = rate * ms as usize / 1000;
                    out.extend((0..n).map(|i| {
                        let t = i as f32 / rate as f32;
                        ((TAU * hz as f32 * t).sin() * 8000.0) as i16
                    }));
                }
            }
        }
        if self.odd_tail {
            out.push(0);
        }
        out
    }

    /// The requests of the call, config first; chunks never exceed `max_chunk_bytes`.
    pub fn requests(&self, session: &str, max_chunk_bytes: usize) -> Vec<RecognizeRequest> {
        let mut bytes = Vec::new();
        voxwire_proto::audio::encode_pcm16(&self.pcm(), &mut bytes);
        let per_chunk = (self.sample_rate as usize * self.chunk_ms as usize / 1000 * 2)
            .min(max_chunk_bytes)
            .max(2)
            & !1;
        let mut out = vec![config_request(
            session,
            self.sample_rate as i32,
            self.partials,
        )];
        let chunks: Vec<&[u8]> = bytes.chunks(per_chunk).collect();
        let last = chunks.len().saturating_sub(1);
        for (i, chunk) in chunks.iter().enumerate() {
            out.push(audio_request(
                chunk.to_vec(),
                self.end == AudioEnd::FinalChunk && i == last,
            ));
        }
        if self.end == AudioEnd::EmptyFinalChunk
            || (self.end == AudioEnd::FinalChunk && chunks.is_empty())
        {
            out.push(audio_request(Vec::new(), true));
        }
        out
    }
}

pub fn config_request(session: &str, sample_rate: i32, partials: bool) -> RecognizeRequest {
    RecognizeRequest {
        request: Some(recognize_request::Request::Config(RecognitionConfig {
            session_id: session.to_string(),
            sample_rate,
            partial_results: partials,
            ..Default::default()
        })),
    }
}

/// A 16 kHz config naming a model and a language (empty: the defaults).
pub fn chosen_config_request(session: &str, model_id: &str, language: &str) -> RecognizeRequest {
    RecognizeRequest {
        request: Some(recognize_request::Request::Config(RecognitionConfig {
            session_id: session.to_string(),
            sample_rate: 16_000,
            model_id: model_id.to_string(),
            language: language.to_string(),
            ..Default::default()
        })),
    }
}

pub fn audio_request(audio: Vec<u8>, is_final: bool) -> RecognizeRequest {
    RecognizeRequest {
        request: Some(recognize_request::Request::Audio(AudioChunk {
            audio_data: audio.into(),
            is_final,
        })),
    }
}

/// Audio for a Recognize call: silences and tones (at least one tone, so
/// there is something an engine may call speech), odd lengths, the worker's
/// sample rates, every way of ending. `partials` forces partial_results.
pub fn audio_input(rates: Vec<u32>, partials: Option<bool>) -> BoxedStrategy<AudioInput> {
    let segment = prop_oneof![
        (50u32..1000).prop_map(|ms| Segment::Silence { ms }),
        (120u32..2000, 100u32..1500).prop_map(|(hz, ms)| Segment::Tone { hz, ms }),
    ];
    let partials = match partials {
        Some(p) => Just(p).boxed(),
        None => any::<bool>().boxed(),
    };
    (
        prop::sample::select(rates),
        prop::collection::vec(segment, 1..5),
        any::<bool>(),
        10u32..500,
        prop_oneof![
            Just(AudioEnd::FinalChunk),
            Just(AudioEnd::EmptyFinalChunk),
            Just(AudioEnd::HalfClose)
        ],
        partials,
        prop_oneof![3 => Just(0u64), 1 => 1u64..10],
    )
        .prop_map(
            |(sample_rate, mut segments, odd_tail, chunk_ms, end, partials, pace_ms)| {
                if !segments.iter().any(|s| matches!(s, Segment::Tone { .. })) {
                    segments.push(Segment::Tone { hz: 440, ms: 400 });
                }
                AudioInput {
                    sample_rate,
                    segments,
                    odd_tail,
                    chunk_ms,
                    end,
                    partials,
                    pace_ms,
                }
            },
        )
        .boxed()
}

/// Session ids SESSION-ID-INVALID rejects: empty, blank, with a control
/// character, longer than 256 bytes.
pub fn invalid_session_id() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        "[ \t]{1,4}",
        "[a-z]{0,5}[\\x00-\\x1f][a-z]{0,5}",
        "[a-z]{257,300}",
    ]
    .prop_filter("the proto crate must reject it", |id| {
        voxwire_proto::session::validate_session_id(id).is_err()
    })
    .boxed()
}

/// Sample rates STT-CONFIG-RATE rejects.
pub fn bad_sample_rate() -> BoxedStrategy<i32> {
    prop_oneof![
        Just(0),
        Just(7_999),
        Just(48_001),
        Just(96_000),
        i32::MIN..8_000,
        48_001..=i32::MAX,
    ]
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::test_runner::TestRunner;

    #[test]
    fn chunkings_keep_the_text_and_requests_keep_the_audio() {
        let mut runner = TestRunner::deterministic();
        runner
            .run(&(text(300), text_input(300)), |(t, input)| {
                prop_assert!(t.chars().count() <= 300);
                prop_assert!(!input.chunks.is_empty());
                let chunks = input.to_chunks("s");
                prop_assert_eq!(
                    chunks.iter().filter(|c| c.is_final).count(),
                    usize::from(input.final_flag)
                );
                Ok(())
            })
            .expect("property");
        runner
            .run(&audio_input(vec![8_000, 16_000], None), |input| {
                let requests = input.requests("s", 1000);
                let total: usize = requests
                    .iter()
                    .filter_map(|r| match &r.request {
                        Some(recognize_request::Request::Audio(a)) => {
                            assert!(a.audio_data.len() <= 1000 && a.audio_data.len() % 2 == 0);
                            Some(a.audio_data.len())
                        }
                        _ => None,
                    })
                    .sum();
                prop_assert_eq!(total, input.pcm().len() * 2);
                Ok(())
            })
            .expect("property");
    }
}
