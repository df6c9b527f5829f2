//! Property tests of the stream validators: every generated valid stream is
//! accepted, and every single mutation of one is rejected with the rule that
//! the mutation breaks.

use proptest::prelude::*;
use voxwire_proto::audio::FrameFormat;
use voxwire_proto::stt::TranscriptEvent;
use voxwire_proto::stt_stream::SttStreamValidator;
use voxwire_proto::tts::AudioFrame;
use voxwire_proto::tts_stream::{FrameKind, TtsStreamValidator};
use voxwire_proto::{Rule, Violation};

const SESSION: &str = "session-1";

fn tts_run(frames: &[AudioFrame]) -> Result<(), Violation> {
    let mut validator = TtsStreamValidator::new(SESSION);
    for frame in frames {
        validator.observe(frame)?;
    }
    validator.finish()
}

fn format_strategy() -> impl Strategy<Value = FrameFormat> {
    prop_oneof![
        Just((48_000, 20)),
        Just((16_000, 20)),
        Just((22_050, 20)),
        Just((24_000, 10)),
        Just((8_000, 40)),
    ]
    .prop_map(|(rate, ms)| FrameFormat::new(rate, ms).expect("listed formats are valid"))
}

#[derive(Debug, Clone)]
enum Ending {
    /// The last data frame carries is_final, holding this many samples.
    FinalData(usize),
    EndMarker,
}

/// A valid stream: `data` full frames, then an ending.
fn valid_tts_stream() -> impl Strategy<Value = Vec<AudioFrame>> {
    (format_strategy(), 0usize..12, any::<bool>(), any::<u16>()).prop_map(
        |(format, data, marker, tail)| {
            let samples = format.samples_per_frame();
            let ending = if marker {
                Ending::EndMarker
            } else {
                Ending::FinalData(1 + usize::from(tail) % samples)
            };
            let mut frames = Vec::new();
            for i in 0..data {
                frames.push(frame(format, i as i64 + 1, samples, false));
            }
            let seq = data as i64 + 1;
            frames.push(match ending {
                Ending::FinalData(n) => frame(format, seq, n, true),
                Ending::EndMarker => AudioFrame {
                    session_id: SESSION.into(),
                    sequence_number: seq,
                    is_final: true,
                    ..Default::default()
                },
            });
            frames
        },
    )
}

fn frame(format: FrameFormat, seq: i64, samples: usize, is_final: bool) -> AudioFrame {
    AudioFrame {
        session_id: SESSION.into(),
        audio_data: vec![0x11u8; samples * 2].into(),
        sample_rate: format.sample_rate_field(),
        frame_duration_ms: format.frame_ms_field(),
        sequence_number: seq,
        is_final,
    }
}

fn renumber(frames: &mut [AudioFrame]) {
    for (i, frame) in frames.iter_mut().enumerate() {
        frame.sequence_number = i as i64 + 1;
    }
}

/// One fault applied to a valid stream, and the rule it breaks.
#[derive(Debug, Clone, Copy)]
enum TtsMutation {
    DropFinal,
    DuplicateFinal,
    FrameAfterFinal,
    EmptyNonFinal,
    SequenceGap,
    SequenceStart,
    FormatChange,
    FormatInvalid,
    ShortNonFinal,
    OddFinal,
    WrongSession,
}

impl TtsMutation {
    const ALL: [TtsMutation; 11] = [
        TtsMutation::DropFinal,
        TtsMutation::DuplicateFinal,
        TtsMutation::FrameAfterFinal,
        TtsMutation::EmptyNonFinal,
        TtsMutation::SequenceGap,
        TtsMutation::SequenceStart,
        TtsMutation::FormatChange,
        TtsMutation::FormatInvalid,
        TtsMutation::ShortNonFinal,
        TtsMutation::OddFinal,
        TtsMutation::WrongSession,
    ];

    fn rule(self) -> Rule {
        match self {
            TtsMutation::DropFinal => Rule::TtsFinalMissing,
            TtsMutation::DuplicateFinal => Rule::TtsFinalDuplicate,
            TtsMutation::FrameAfterFinal => Rule::TtsFrameAfterFinal,
            TtsMutation::EmptyNonFinal => Rule::TtsFrameEmptyNonfinal,
            TtsMutation::SequenceGap => Rule::TtsSeqGap,
            TtsMutation::SequenceStart => Rule::TtsSeqStart,
            TtsMutation::FormatChange => Rule::TtsFormatChange,
            TtsMutation::FormatInvalid => Rule::TtsFormatInvalid,
            TtsMutation::ShortNonFinal | TtsMutation::OddFinal => Rule::TtsFrameSize,
            TtsMutation::WrongSession => Rule::TtsSessionEcho,
        }
    }

    /// Applies the fault at a position picked by `at`; `None` when this stream
    /// has no place for it (e.g. no non-final frame to shorten).
    fn apply(self, mut frames: Vec<AudioFrame>, at: usize) -> Option<Vec<AudioFrame>> {
        let last = frames.len() - 1;
        let data_frames: Vec<usize> = (0..frames.len())
            .filter(|&i| !frames[i].audio_data.is_empty())
            .collect();
        match self {
            TtsMutation::DropFinal => {
                frames.pop();
            }
            TtsMutation::DuplicateFinal => {
                let mut copy = frames[last].clone();
                copy.sequence_number += 1;
                frames.push(copy);
            }
            TtsMutation::FrameAfterFinal => {
                let mut extra = frames[0].clone();
                extra.is_final = false;
                extra.sequence_number = frames[last].sequence_number + 1;
                frames.push(extra);
            }
            TtsMutation::EmptyNonFinal => {
                let mut empty = frames[0].clone();
                empty.audio_data = Default::default();
                empty.is_final = false;
                frames.insert(at % frames.len(), empty);
                renumber(&mut frames);
            }
            TtsMutation::SequenceGap => {
                if frames.len() < 2 {
                    return None;
                }
                let from = 1 + at % last;
                let skip = 1 + (at % 3) as i64;
                for frame in &mut frames[from..] {
                    frame.sequence_number += skip;
                }
            }
            TtsMutation::SequenceStart => {
                let start = [0i64, 2, -1, 1_000_000][at % 4];
                for (i, frame) in frames.iter_mut().enumerate() {
                    frame.sequence_number = start + i as i64;
                }
            }
            TtsMutation::FormatChange => {
                if data_frames.len() < 2 {
                    return None;
                }
                let i = data_frames[1 + at % (data_frames.len() - 1)];
                // Another valid format, the same byte count for a full frame so
                // that only the change is wrong.
                let frame = &mut frames[i];
                if frame.sample_rate == 48_000 && frame.frame_duration_ms == 20 {
                    frame.sample_rate = 24_000;
                    frame.frame_duration_ms = 40;
                } else {
                    frame.sample_rate = 48_000;
                    frame.frame_duration_ms = 20;
                }
            }
            TtsMutation::FormatInvalid => {
                let i = *data_frames.first()?;
                match at % 3 {
                    0 => frames[i].sample_rate = 0,
                    1 => frames[i].frame_duration_ms = -20,
                    _ => frames[i].sample_rate = 1_000_000,
                }
            }
            TtsMutation::ShortNonFinal => {
                let non_final: Vec<usize> = data_frames
                    .iter()
                    .copied()
                    .filter(|&i| !frames[i].is_final)
                    .collect();
                if non_final.is_empty() {
                    return None;
                }
                let i = non_final[at % non_final.len()];
                let keep = frames[i].audio_data.len() - 2;
                let shortened = frames[i].audio_data.slice(..keep);
                frames[i].audio_data = shortened;
            }
            TtsMutation::OddFinal => {
                let frame = &mut frames[last];
                if frame.audio_data.is_empty() {
                    return None;
                }
                let keep = frame.audio_data.len() - 1;
                let shortened = frame.audio_data.slice(..keep);
                frame.audio_data = shortened;
            }
            TtsMutation::WrongSession => {
                let i = at % frames.len();
                frames[i].session_id = "someone-else".into();
            }
        }
        Some(frames)
    }
}

proptest! {
    #[test]
    fn every_valid_tts_stream_is_accepted(frames in valid_tts_stream()) {
        let mut validator = TtsStreamValidator::new(SESSION);
        for (i, frame) in frames.iter().enumerate() {
            let kind = validator.observe(frame);
            prop_assert!(kind.is_ok(), "frame {i}: {kind:?}");
            let kind = kind.expect("checked");
            prop_assert_eq!(kind.is_final(), i == frames.len() - 1);
            prop_assert_eq!(kind.has_audio(), kind != FrameKind::EndMarker);
        }
        prop_assert_eq!(validator.finish(), Ok(()));
    }

    #[test]
    fn every_tts_mutation_is_rejected_by_its_rule(
        frames in valid_tts_stream(),
        which in 0..TtsMutation::ALL.len(),
        at in any::<usize>(),
    ) {
        let mutation = TtsMutation::ALL[which];
        let mutated = mutation.apply(frames, at);
        prop_assume!(mutated.is_some());
        let result = tts_run(&mutated.expect("assumed"));
        prop_assert_eq!(result.map_err(|v| v.rule), Err(mutation.rule()), "{:?}", mutation);
    }
}

/// One utterance of a generated STT stream: its partials' texts and its final's.
#[derive(Debug, Clone)]
struct Utterance {
    partials: Vec<String>,
    final_text: String,
}

#[derive(Debug, Clone)]
struct SttCase {
    partials_requested: bool,
    utterances: Vec<Utterance>,
    /// Events sent before the client's end of audio; the rest come after.
    end_of_audio_after: usize,
}

impl SttCase {
    fn events(&self) -> Vec<TranscriptEvent> {
        let mut events = Vec::new();
        let mut clock = 0i64;
        for (i, utterance) in self.utterances.iter().enumerate() {
            let id = i as u64 + 1;
            let start = clock;
            let texts = utterance
                .partials
                .iter()
                .map(|t| (t.clone(), false))
                .chain(std::iter::once((utterance.final_text.clone(), true)));
            for (text, is_final) in texts {
                clock += 100;
                events.push(TranscriptEvent {
                    session_id: SESSION.into(),
                    utterance_id: id,
                    text,
                    is_final,
                    start_ms: start,
                    end_ms: clock,
                    sequence_number: events.len() as i64 + 1,
                    confidence: 0.5,
                });
            }
        }
        events
    }
}

fn valid_stt_case() -> impl Strategy<Value = SttCase> {
    let word = "[a-z]{1,8}( [a-z]{1,8}){0,3}";
    let utterance = (
        prop::collection::vec(word, 0..4),
        prop_oneof![Just(String::new()), word.prop_map(String::from)],
    );
    (any::<bool>(), prop::collection::vec(utterance, 1..5)).prop_flat_map(
        |(partials_requested, raw)| {
            let utterances: Vec<Utterance> = raw
                .into_iter()
                .map(|(partials, final_text)| Utterance {
                    partials: if partials_requested {
                        partials
                    } else {
                        Vec::new()
                    },
                    final_text,
                })
                .collect();
            // The end of audio comes before the last utterance's final.
            let total: usize = utterances.iter().map(|u| u.partials.len() + 1).sum();
            (0..total).prop_map(move |end_of_audio_after| SttCase {
                partials_requested,
                utterances: utterances.clone(),
                end_of_audio_after,
            })
        },
    )
}

fn stt_run(case: &SttCase, events: &[TranscriptEvent], end_after: usize) -> Result<(), Violation> {
    let mut validator = SttStreamValidator::new(SESSION, case.partials_requested);
    for (i, event) in events.iter().enumerate() {
        if i == end_after {
            validator.end_of_audio();
        }
        validator.observe(event)?;
    }
    if end_after >= events.len() {
        validator.end_of_audio();
    }
    validator.finish()
}

#[derive(Debug, Clone, Copy)]
enum SttMutation {
    EmptyPartial,
    UnrequestedPartial,
    DropLastFinal,
    DuplicateFinal,
    SequenceGap,
    SequenceStart,
    WrongSession,
    UtteranceZero,
    Overlap,
    BadOffsets,
    NoFinalAfterEnd,
}

impl SttMutation {
    const ALL: [SttMutation; 11] = [
        SttMutation::EmptyPartial,
        SttMutation::UnrequestedPartial,
        SttMutation::DropLastFinal,
        SttMutation::DuplicateFinal,
        SttMutation::SequenceGap,
        SttMutation::SequenceStart,
        SttMutation::WrongSession,
        SttMutation::UtteranceZero,
        SttMutation::Overlap,
        SttMutation::BadOffsets,
        SttMutation::NoFinalAfterEnd,
    ];

    fn rule(self) -> Rule {
        match self {
            SttMutation::EmptyPartial => Rule::SttPartialEmpty,
            SttMutation::UnrequestedPartial => Rule::SttPartialUnrequested,
            SttMutation::DropLastFinal => Rule::SttFinalMissing,
            SttMutation::DuplicateFinal => Rule::SttUtteranceClosed,
            SttMutation::SequenceGap => Rule::SttSeqGap,
            SttMutation::SequenceStart => Rule::SttSeqStart,
            SttMutation::WrongSession => Rule::SttSessionEcho,
            SttMutation::UtteranceZero => Rule::SttUtteranceId,
            SttMutation::Overlap => Rule::SttUtteranceOverlap,
            SttMutation::BadOffsets => Rule::SttOffsets,
            SttMutation::NoFinalAfterEnd => Rule::SttEndFinal,
        }
    }

    /// Returns the mutated events and where the end of audio now falls.
    fn apply(self, case: &SttCase, at: usize) -> Option<(Vec<TranscriptEvent>, usize)> {
        let mut events = case.events();
        let mut end_after = case.end_of_audio_after;
        let partial_positions: Vec<usize> =
            (0..events.len()).filter(|&i| !events[i].is_final).collect();
        match self {
            SttMutation::EmptyPartial => {
                let i = *partial_positions.get(at % partial_positions.len().max(1))?;
                events[i].text = [" ", ""][at % 2].into();
            }
            SttMutation::UnrequestedPartial => {
                if case.partials_requested {
                    return None;
                }
                let i = at % events.len();
                events[i].is_final = false;
                events[i].text = "hello".into();
                // Keep the stream otherwise well formed: a final for it follows.
                let mut closing = events[i].clone();
                closing.is_final = true;
                events.insert(i + 1, closing);
                if end_after > i {
                    end_after += 1;
                }
                for (n, e) in events.iter_mut().enumerate() {
                    e.sequence_number = n as i64 + 1;
                }
            }
            SttMutation::DropLastFinal => {
                // Drop the final of the last utterance that has partials.
                let i = (0..events.len())
                    .rev()
                    .find(|&i| events[i].is_final && i > 0 && !events[i - 1].is_final)?;
                if i != events.len() - 1 {
                    return None;
                }
                events.pop();
            }
            SttMutation::DuplicateFinal => {
                let finals: Vec<usize> =
                    (0..events.len()).filter(|&i| events[i].is_final).collect();
                let i = finals[at % finals.len()];
                let copy = events[i].clone();
                events.insert(i + 1, copy);
                for (n, e) in events.iter_mut().enumerate() {
                    e.sequence_number = n as i64 + 1;
                }
            }
            SttMutation::SequenceGap => {
                if events.len() < 2 {
                    return None;
                }
                let from = 1 + at % (events.len() - 1);
                for e in &mut events[from..] {
                    e.sequence_number += 1;
                }
            }
            SttMutation::SequenceStart => {
                for e in &mut events {
                    e.sequence_number += [1, -1][at % 2];
                }
            }
            SttMutation::WrongSession => {
                let i = at % events.len();
                events[i].session_id = "another".into();
            }
            SttMutation::UtteranceZero => {
                let i = at % events.len();
                let id = events[i].utterance_id;
                for e in &mut events {
                    if e.utterance_id == id {
                        e.utterance_id = 0;
                    }
                }
            }
            SttMutation::Overlap => {
                // A partial whose utterance is still open gets the next id.
                let i = *partial_positions.get(at % partial_positions.len().max(1))?;
                let open = events[i].utterance_id;
                let later = events.iter().position(|e| {
                    e.utterance_id == open && e.sequence_number > events[i].sequence_number
                })?;
                events[later].utterance_id = open + 100;
            }
            SttMutation::BadOffsets => {
                let i = at % events.len();
                if at.is_multiple_of(2) {
                    events[i].start_ms = -1;
                } else {
                    events[i].start_ms = events[i].end_ms + 1;
                }
            }
            SttMutation::NoFinalAfterEnd => {
                end_after = events.len();
            }
        }
        Some((events, end_after))
    }
}

proptest! {
    #[test]
    fn every_valid_stt_stream_is_accepted(case in valid_stt_case()) {
        let events = case.events();
        prop_assert_eq!(stt_run(&case, &events, case.end_of_audio_after), Ok(()));
    }

    #[test]
    fn every_stt_mutation_is_rejected_by_its_rule(
        case in valid_stt_case(),
        which in 0..SttMutation::ALL.len(),
        at in any::<usize>(),
    ) {
        let mutation = SttMutation::ALL[which];
        let mutated = mutation.apply(&case, at);
        prop_assume!(mutated.is_some());
        let (events, end_after) = mutated.expect("assumed");
        let result = stt_run(&case, &events, end_after);
        prop_assert_eq!(result.map_err(|v| v.rule), Err(mutation.rule()), "{:?}", mutation);
    }
}

/// Every stream rule has a mutation above that breaks it; a new rule without
/// one fails here.
#[test]
fn every_stream_rule_has_a_mutation() {
    let mut covered: Vec<Rule> = TtsMutation::ALL.iter().map(|m| m.rule()).collect();
    covered.extend(SttMutation::ALL.iter().map(|m| m.rule()));
    let stream_rules = Rule::ALL.iter().filter(|rule| {
        let id = rule.id();
        let tts_frame = id.starts_with("TTS-FRAME")
            || id.starts_with("TTS-FORMAT")
            || id.starts_with("TTS-SEQ")
            || id.starts_with("TTS-FINAL")
            || id == "TTS-SESSION-ECHO";
        let stt_event = rule.code() == tonic::Code::Internal && id.starts_with("STT-");
        tts_frame || stt_event
    });
    for rule in stream_rules {
        assert!(covered.contains(rule), "{rule} has no mutation test");
    }
}

/// Guards the property tests above against a mutation that never applies
/// (every case discarded by `prop_assume`): each must fire on real streams.
#[test]
fn every_mutation_applies_to_some_generated_stream() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let mut tts_applied = [false; TtsMutation::ALL.len()];
    let mut stt_applied = [false; SttMutation::ALL.len()];
    for at in 0..400usize {
        let frames = valid_tts_stream()
            .new_tree(&mut runner)
            .expect("strategy")
            .current();
        for (i, mutation) in TtsMutation::ALL.iter().enumerate() {
            if let Some(mutated) = mutation.apply(frames.clone(), at) {
                assert_eq!(tts_run(&mutated).map_err(|v| v.rule), Err(mutation.rule()));
                tts_applied[i] = true;
            }
        }
        let case = valid_stt_case()
            .new_tree(&mut runner)
            .expect("strategy")
            .current();
        for (i, mutation) in SttMutation::ALL.iter().enumerate() {
            if let Some((events, end_after)) = mutation.apply(&case, at) {
                assert_eq!(
                    stt_run(&case, &events, end_after).map_err(|v| v.rule),
                    Err(mutation.rule())
                );
                stt_applied[i] = true;
            }
        }
    }
    for (mutation, applied) in TtsMutation::ALL.iter().zip(tts_applied) {
        assert!(applied, "{mutation:?} never applied");
    }
    for (mutation, applied) in SttMutation::ALL.iter().zip(stt_applied) {
        assert!(applied, "{mutation:?} never applied");
    }
}
