//! Whisper tiny.en on real (synthetic) speech: transcripts scored by word error
//! rate, and the streaming recognizer's events checked against the protocol.
//!
//! WER bounds: espeak-ng's voice is robotic and tiny.en is the smallest
//! Whisper, so a few words per paragraph come out wrong ("bridge" as "ridge",
//! "scholars" as "colors"); measured here the scripts below score 0.00-0.12.
//! The bounds (0.25) leave room for that and for numeric differences between
//! machines, yet fail on what they guard against: a lost sentence or a
//! collapsed decode scores 0.3 or worse.
mod common;

use voxwire_testkit::wer::word_error_rate;
use voxwire_whisper::{EndpointConfig, Recognizer, RecognizerEvent, SAMPLE_RATE};

const WER_BOUND: f64 = 0.25;

const FEW_SENTENCES: &str = "Please send the report to the office before noon on Friday. \
    The train to the city leaves every hour from the main station. \
    He opened the window and listened to the birds singing outside.";

const FIRST: &str = "We need more coffee, milk, and sugar for the meeting tomorrow.";
const SECOND: &str = "He opened the window and listened to the birds singing outside.";

const LONG_PARAGRAPH: &str = "The history of the city begins with a small village on the river, \
    where farmers traded grain and wool with travellers from the north. \
    Over the centuries the village grew into a market town, and the market town into a busy \
    port with ships from many countries. Today the old harbour is a quiet park, and visitors \
    walk along the water to see the boats and the museum of maritime life. In the evening the \
    streets fill with music, and families gather in the squares to eat, talk, and watch the sun \
    go down behind the hills. The library near the cathedral keeps letters and maps from every \
    period, and scholars come from far away to read them.";

const CHUNK: usize = (SAMPLE_RATE / 50) as usize;

#[test]
fn transcribes_a_few_sentences() {
    let Some(model) = common::model() else { return };
    let Some(pcm) = common::speak(FEW_SENTENCES) else {
        return;
    };
    let result = model.transcribe(&pcm).expect("transcribe");
    let wer = word_error_rate(FEW_SENTENCES, &result.text);
    eprintln!("WER {wer:.3}: {:?}", result.text);
    assert!(wer <= WER_BOUND, "WER {wer:.3} for {:?}", result.text);
    assert!((0.0..=1.0).contains(&result.confidence));
    assert!(result.confidence > 0.3, "{result:?}");
    assert_eq!(result.windows, 1);
}

#[test]
fn transcribes_over_thirty_seconds_without_losing_the_seam() {
    let Some(model) = common::model() else { return };
    let Some(pcm) = common::speak(LONG_PARAGRAPH) else {
        return;
    };
    let seconds = pcm.len() as f64 / f64::from(SAMPLE_RATE);
    assert!(
        seconds > 32.0,
        "the paragraph must need two windows: {seconds:.1} s"
    );
    let result = model.transcribe(&pcm).expect("transcribe");
    let wer = word_error_rate(LONG_PARAGRAPH, &result.text);
    eprintln!("{seconds:.1} s, WER {wer:.3}: {:?}", result.text);
    assert_eq!(result.windows, 2);
    assert!(wer <= WER_BOUND, "WER {wer:.3} for {:?}", result.text);
    // The seam falls in the fourth sentence; its neighbours must both be
    // there. (tiny.en hears espeak's "cathedral" in the last sentence now and
    // then as something else, so that sentence is checked by its other words.)
    let text = result.text.to_lowercase();
    assert!(text.contains("maritime"), "{text}");
    assert!(
        text.contains("library") && text.contains("period"),
        "{text}"
    );
}

fn stream(
    recognizer: &mut Recognizer,
    pcm: &[f32],
) -> (Vec<RecognizerEvent>, Vec<RecognizerEvent>) {
    let mut streamed = Vec::new();
    for chunk in pcm.chunks(CHUNK) {
        streamed.extend(recognizer.push(chunk).expect("push"));
    }
    let after_end = recognizer.finish().expect("finish");
    (streamed, after_end)
}

#[test]
fn recognizer_ends_two_utterances_at_the_pause() {
    let Some(model) = common::model() else { return };
    let Some(first) = common::speak(FIRST) else {
        return;
    };
    let Some(second) = common::speak(SECOND) else {
        return;
    };
    let mut pcm = first.clone();
    pcm.extend(common::silence(1_500));
    let second_start_ms = (pcm.len() as u64 * 1000 / u64::from(SAMPLE_RATE)) as i64;
    pcm.extend(&second);

    let mut recognizer = Recognizer::new(model, EndpointConfig::default(), true);
    let (streamed, after_end) = stream(&mut recognizer, &pcm);
    for event in streamed.iter().chain(&after_end) {
        eprintln!("{event:?}");
    }
    common::validate(&streamed, &after_end, true);

    let all: Vec<&RecognizerEvent> = streamed.iter().chain(&after_end).collect();
    assert!(all
        .iter()
        .filter(|e| !e.is_final)
        .all(|e| !e.text.trim().is_empty()));
    assert!(
        all.iter().any(|e| !e.is_final),
        "partials were requested and each sentence lasts over a second"
    );
    let spoken: Vec<&&RecognizerEvent> = all
        .iter()
        .filter(|e| e.is_final && !e.text.is_empty())
        .collect();
    assert_eq!(spoken.len(), 2, "two utterances: {spoken:?}");
    for (event, script) in spoken.iter().zip([FIRST, SECOND]) {
        let wer = word_error_rate(script, &event.text);
        assert!(wer <= WER_BOUND, "WER {wer:.3} for {:?}", event.text);
    }
    assert_eq!((spoken[0].utterance_id, spoken[1].utterance_id), (1, 2));
    // The boundary lies in the pause, give or take the pre-roll.
    assert!(spoken[0].end_ms <= second_start_ms, "{:?}", spoken[0]);
    assert!(
        spoken[1].start_ms >= second_start_ms - 300,
        "{:?}",
        spoken[1]
    );
    assert!(spoken[1].start_ms > spoken[0].end_ms);
}

#[test]
fn silence_alone_finishes_with_one_empty_final() {
    let Some(model) = common::model() else { return };
    let pcm = common::silence(3_000);
    let mut recognizer = Recognizer::new(model, EndpointConfig::default(), false);
    let (streamed, after_end) = stream(&mut recognizer, &pcm);
    assert!(streamed.is_empty(), "{streamed:?}");
    assert_eq!(after_end.len(), 1, "{after_end:?}");
    let last = &after_end[0];
    assert!(last.is_final);
    assert_eq!(last.text, "");
    assert_eq!(last.utterance_id, 1);
    assert_eq!((last.start_ms, last.end_ms), (0, 3_000));
    common::validate(&streamed, &after_end, false);
    assert!(recognizer.push(&pcm).is_err(), "the stream has ended");
}

#[test]
fn silence_transcribes_to_nothing() {
    let Some(model) = common::model() else { return };
    let result = model
        .transcribe(&common::silence(2_000))
        .expect("transcribe");
    assert_eq!(result.text, "");
    assert_eq!(result.confidence, 0.0);
    let result = model.transcribe(&[]).expect("transcribe");
    assert_eq!(result.text, "");
}

#[test]
fn non_finite_audio_is_an_error() {
    let Some(model) = common::model() else { return };
    let mut pcm = common::silence(100);
    pcm[10] = f32::NAN;
    assert!(model.transcribe(&pcm).is_err());
}

#[test]
fn long_speech_is_split_at_the_utterance_limit() {
    let Some(model) = common::model() else { return };
    let Some(pcm) = common::speak(FEW_SENTENCES) else {
        return;
    };
    // espeak-ng's pauses between these sentences are shorter than the 400 ms
    // that ends an utterance, so only the length limit can split them.
    let config = EndpointConfig {
        max_utterance_ms: 5_000,
        ..EndpointConfig::default()
    };
    let mut recognizer = Recognizer::new(model, config, false);
    let (streamed, after_end) = stream(&mut recognizer, &pcm);
    common::validate(&streamed, &after_end, false);
    let finals: Vec<&RecognizerEvent> = streamed
        .iter()
        .chain(&after_end)
        .filter(|e| e.is_final && !e.text.is_empty())
        .collect();
    assert!(finals.len() >= 2, "{finals:?}");
    for event in &finals {
        assert!(event.end_ms - event.start_ms <= 5_000, "{event:?}");
    }
    let text = finals
        .iter()
        .map(|e| e.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let wer = word_error_rate(FEW_SENTENCES, &text);
    eprintln!("split WER {wer:.3}: {text:?}");
    assert!(wer <= WER_BOUND, "WER {wer:.3} for {text:?}");
}

/// A minute of continuous speech sent straight to the worker came back as
/// about 3 of its 22 sentences: an utterance longer than one Whisper window
/// was decoded as one window and the rest silently dropped. Streamed (as the
/// worker streams a file sent faster than real time), over 30 s of speech with
/// no pause long enough to end an utterance must come back whole.
#[test]
fn long_continuous_speech_streamed_is_not_truncated() {
    let Some(model) = common::model() else { return };
    let Some(pcm) = common::speak(LONG_PARAGRAPH) else {
        return;
    };
    let mut recognizer = Recognizer::new(model, EndpointConfig::default(), false);
    let (streamed, after_end) = stream(&mut recognizer, &pcm);
    common::validate(&streamed, &after_end, false);
    let text = streamed
        .iter()
        .chain(&after_end)
        .filter(|e| e.is_final && !e.text.is_empty())
        .map(|e| e.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let wer = word_error_rate(LONG_PARAGRAPH, &text);
    eprintln!("streamed WER {wer:.3}: {text:?}");
    assert!(wer <= WER_BOUND, "WER {wer:.3} for {text:?}");
    let lowered = text.to_lowercase();
    // The first sentence, one in the middle and the last one.
    for word in ["village", "maritime", "period"] {
        assert!(lowered.contains(word), "{word:?} missing: {text}");
    }
}

#[test]
fn the_model_and_recognizer_can_move_between_threads() {
    fn shared<T: Send + Sync + Clone>() {}
    fn movable<T: Send>() {}
    shared::<voxwire_whisper::WhisperModel>();
    movable::<Recognizer>();
}

/// The energy VAD against steady background noise: white noise 20 dB below
/// the speech (RMS), from a fixed seed. The noise floor settles on the noise
/// within a frame, so the pause still ends the first utterance and the noise
/// alone opens none.
#[test]
fn endpointing_holds_in_steady_noise() {
    let Some(model) = common::model() else { return };
    let Some(first) = common::speak(FIRST) else {
        return;
    };
    let Some(second) = common::speak(SECOND) else {
        return;
    };
    let mut pcm = common::silence(1_000);
    pcm.extend(&first);
    pcm.extend(common::silence(1_500));
    pcm.extend(&second);
    pcm.extend(common::silence(1_000));
    let speech_rms = {
        let voiced: Vec<f32> = first.iter().chain(&second).copied().collect();
        (voiced.iter().map(|s| s * s).sum::<f32>() / voiced.len() as f32).sqrt()
    };
    let noise_rms = speech_rms / 10.0;
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for sample in &mut pcm {
        // xorshift64: uniform in -1..1 has RMS 1/sqrt(3).
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let uniform = (state >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0;
        *sample += uniform * noise_rms * 3f32.sqrt();
    }

    let mut recognizer = Recognizer::new(model, EndpointConfig::default(), false);
    let (streamed, after_end) = stream(&mut recognizer, &pcm);
    common::validate(&streamed, &after_end, false);
    let spoken: Vec<&RecognizerEvent> = streamed
        .iter()
        .chain(&after_end)
        .filter(|e| e.is_final && !e.text.is_empty())
        .collect();
    assert_eq!(spoken.len(), 2, "{spoken:?}");
    for (event, script) in spoken.iter().zip([FIRST, SECOND]) {
        let wer = word_error_rate(script, &event.text);
        eprintln!("in noise, WER {wer:.3}: {:?}", event.text);
        assert!(wer <= WER_BOUND, "WER {wer:.3} for {:?}", event.text);
    }
    // The leading second of noise is not part of the first utterance.
    assert!(spoken[0].start_ms >= 700, "{:?}", spoken[0]);
}

/// Sentences each said once, by the project's own voice, each with a word
/// no other holds: on Piper speech the decoder used to loop, returning
/// "Please turn off the kitchen lights before you leave." two to four times
/// (issue 17).
const PIPER_SENTENCES: &[(&str, &str)] = &[
    (
        "Please turn off the kitchen lights before you leave.",
        "kitchen",
    ),
    (
        "The meeting has been moved to three o'clock on Thursday.",
        "thursday",
    ),
    (
        "Can you remind me to call my mother tomorrow morning?",
        "mother",
    ),
    (
        "We need more coffee, milk, and sugar for the party.",
        "coffee",
    ),
];

/// How often `word` appears in `text`.
fn times_said(word: &str, text: &str) -> usize {
    voxwire_testkit::wer::normalize(text)
        .iter()
        .filter(|w| *w == word)
        .count()
}

#[test]
fn piper_speech_is_not_transcribed_as_a_repeated_sentence() {
    let Some(model) = common::model() else { return };
    let mut all = Vec::new();
    for &(sentence, word) in PIPER_SENTENCES {
        let Some(pcm) = common::speak_piper(sentence) else {
            return;
        };
        // The whole-file path: one sentence at a time, then all of them in
        // one clip with pauses, then streamed through the recognizer.
        let text = model.transcribe(&pcm).expect("transcribe").text;
        eprintln!("{sentence:?} -> {text:?}");
        assert_eq!(times_said(word, &text), 1, "{sentence:?} -> {text:?}");
        let wer = word_error_rate(sentence, &text);
        assert!(wer <= WER_BOUND, "WER {wer:.3} for {text:?}");
        all.extend(pcm);
        all.extend(common::silence(700));
    }
    let script = PIPER_SENTENCES
        .iter()
        .map(|(sentence, _)| *sentence)
        .collect::<Vec<_>>()
        .join(" ");
    let whole = model.transcribe(&all).expect("transcribe").text;
    eprintln!("whole clip -> {whole:?}");
    let mut recognizer = Recognizer::new(model, EndpointConfig::default(), true);
    let (streamed, after_end) = stream(&mut recognizer, &all);
    common::validate(&streamed, &after_end, true);
    let spoken: Vec<&str> = streamed
        .iter()
        .chain(&after_end)
        .filter(|e| e.is_final && !e.text.is_empty())
        .map(|e| e.text.as_str())
        .collect();
    // One utterance per sentence: the pauses at the commas do not end one,
    // although the sentence-end endpoint is short.
    assert_eq!(spoken.len(), PIPER_SENTENCES.len(), "{spoken:?}");
    let finals = spoken.join(" ");
    eprintln!("streamed finals -> {finals:?}");
    for text in [&whole, &finals] {
        for (sentence, word) in PIPER_SENTENCES {
            assert_eq!(times_said(word, text), 1, "{sentence:?} in {text:?}");
        }
        let wer = word_error_rate(&script, text);
        assert!(wer <= WER_BOUND, "WER {wer:.3} for {text:?}");
    }
}

/// Regression: a one-word answer, transcribed with the trimmed encoder
/// context, came back as "No. No. No. No. No. No." and "Yes." as "S. The S.
/// The S. The"; both in whole-clip transcription and as a stream's final.
#[test]
fn a_one_word_answer_is_not_transcribed_as_a_repeated_sentence() {
    let Some(model) = common::model() else { return };
    for word in ["No.", "Yes."] {
        let Some(pcm) = common::speak(word) else {
            return;
        };
        let text = model.transcribe(&pcm).expect("transcribe").text;
        eprintln!("{word:?} -> {text:?}");
        let said = voxwire_testkit::wer::normalize(word).join(" ");
        assert_eq!(times_said(&said, &text), 1, "{word:?} -> {text:?}");
        assert_eq!(voxwire_testkit::wer::normalize(&text).len(), 1, "{text:?}");

        let mut stream_audio = common::silence(300);
        stream_audio.extend(&pcm);
        stream_audio.extend(common::silence(800));
        let mut recognizer = Recognizer::new(model.clone(), EndpointConfig::default(), false);
        let (streamed, after_end) = stream(&mut recognizer, &stream_audio);
        common::validate(&streamed, &after_end, false);
        let finals: Vec<&str> = streamed
            .iter()
            .chain(&after_end)
            .filter(|e| e.is_final && !e.text.is_empty())
            .map(|e| e.text.as_str())
            .collect();
        assert_eq!(finals.len(), 1, "{finals:?}");
        assert_eq!(times_said(&said, finals[0]), 1, "{finals:?}");
    }
}
