//! Telling a decoder that loops from a speaker who repeats a word.
//!
//! Whisper, given a short clip, sometimes writes the sentence it heard and
//! then writes it again, and again, until its token budget runs out. Its own
//! guard, the compression ratio, needs several repetitions to trip, so two or
//! three copies of a sentence pass it. What the loops have in common is a
//! long run of text said twice in a row, which people rarely do: "very, very"
//! or "thank you, thank you" are short; a loop repeats a phrase. Text is
//! compared by its letters and digits only, so a copy that differs in
//! punctuation, case or a split token ("o'clock" and "o' clock") is still a
//! copy.

/// A run of text this long (letters and digits), said twice in a row, is a
/// loop: about three words. "Thank you, thank you" (8) is not.
pub(crate) const MIN_LOOP_CHARS: usize = 12;

/// The letters and digits of `text`, lowercased: what copies are compared by.
pub(crate) fn letters(text: &str) -> String {
    text.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Follows a decode token by token and says when its end repeats what came
/// just before it.
#[derive(Debug, Default)]
pub(crate) struct LoopDetector {
    letters: Vec<u8>,
    /// `ends[i]`: how many letters the first `i + 1` pushed tokens hold.
    ends: Vec<usize>,
}

impl LoopDetector {
    /// Adds one token's text. Returns `Some(n)` when the text now ends in a
    /// run of at least [`MIN_LOOP_CHARS`] that repeats the run right before
    /// it; `n` is how many of the pushed tokens to keep to drop the copy.
    pub(crate) fn push(&mut self, token_text: &str) -> Option<usize> {
        let before = self.letters.len();
        self.letters.extend(letters(token_text).bytes());
        self.ends.push(self.letters.len());
        // Only a token that added letters can complete a copy.
        if self.letters.len() == before {
            return None;
        }
        let n = self.letters.len();
        let copy = (MIN_LOOP_CHARS..=n / 2)
            .find(|&len| self.letters[n - 2 * len..n - len] == self.letters[n - len..])?;
        let copy_starts = n - copy;
        // Keep the tokens that end at or before the copy starts; a token that
        // straddles the boundary goes with the copy.
        Some(
            self.ends
                .iter()
                .take_while(|&&end| end <= copy_starts)
                .count(),
        )
    }
}

/// Faster than anyone speaks: about twice a quick speaker's rate.
const MAX_LETTERS_PER_SECOND: f64 = 40.0;

/// Whether a phrase of `letters` that the timestamps put in `seconds` of
/// audio, right after a phrase of `previous` letters, is the decoder's
/// invention rather than speech: a copy of (part of) the phrase before it, or
/// more words than the time holds (what a loop squeezed in before the end of
/// the audio looks like).
pub(crate) fn is_invented(letters: &str, seconds: f64, previous: &str) -> bool {
    if letters.is_empty() {
        return true;
    }
    let copies_previous =
        letters == previous || (letters.len() >= MIN_LOOP_CHARS && previous.contains(letters));
    let too_fast = letters.len() >= MIN_LOOP_CHARS
        && letters.len() as f64 > MAX_LETTERS_PER_SECOND * seconds.max(0.0);
    copies_previous || too_fast
}

/// Whether `text` says one sentence twice in a row ("No. No.", "The S. The
/// S."): sentences end at ".", "?" or "!", and are compared by their letters.
/// A speaker rarely does this; a decoder stuck in a loop always does.
pub(crate) fn repeats_a_sentence(text: &str) -> bool {
    let sentences: Vec<String> = text
        .split_inclusive(['.', '?', '!'])
        .map(letters)
        .filter(|s| !s.is_empty())
        .collect();
    sentences.windows(2).any(|pair| pair[0] == pair[1])
}

/// Follows a decode token by token and says when a sentence just ended is
/// the sentence before it again (what [`repeats_a_sentence`] looks for in
/// finished text).
#[derive(Debug, Default)]
pub(crate) struct SentenceRepeats {
    /// The letters of the last sentence that ended.
    previous: Option<String>,
    /// The letters of the sentence being written, and where it started.
    current: String,
    current_start: Option<usize>,
}

impl SentenceRepeats {
    /// Adds the text of the token at `position`. Returns the position where
    /// the sentence this token ends began, when it repeats the one before.
    pub(crate) fn push(&mut self, position: usize, token_text: &str) -> Option<usize> {
        let added = letters(token_text);
        if !added.is_empty() && self.current_start.is_none() {
            self.current_start = Some(position);
        }
        self.current.push_str(&added);
        if !token_text.trim_end().ends_with(['.', '?', '!']) || self.current.is_empty() {
            return None;
        }
        let ended = std::mem::take(&mut self.current);
        let started = self.current_start.take();
        if self.previous.as_deref() == Some(ended.as_str()) {
            return started;
        }
        self.previous = Some(ended);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(tokens: &[&str]) -> Option<usize> {
        let mut detector = LoopDetector::default();
        tokens.iter().find_map(|t| detector.push(t))
    }

    #[test]
    fn a_sentence_said_again_is_a_loop_even_spelt_differently() {
        let tokens = [
            " The", " meeting", " is", " at", " 3", " o", "'clock", ".", " The", " meeting", " is",
            " at", " 3", " o", "'", " clock",
        ];
        // Caught when the copy completes; the first eight tokens stay.
        assert_eq!(run(&tokens), Some(8));
    }

    #[test]
    fn people_repeating_a_word_or_two_is_speech() {
        let tokens = [
            " Thank", " you", ",", " thank", " you", ".", " Very", ",", " very", " good", ".",
            " No", " no", " no", " no", ".",
        ];
        assert_eq!(run(&tokens), None);
    }

    #[test]
    fn copies_and_impossibly_fast_phrases_are_invented() {
        let sentence = letters("The meeting has been moved to three o'clock.");
        assert!(is_invented(&sentence, 2.5, &sentence));
        assert!(is_invented(
            &letters("The meeting has been"),
            1.0,
            &sentence
        ));
        assert!(is_invented(&sentence, 0.3, ""));
        assert!(is_invented("", 1.0, ""));
        assert!(!is_invented(&sentence, 2.5, &letters("Hello there.")));
        assert!(
            !is_invented("yes", 0.05, "no"),
            "short words are not rate-checked"
        );
    }

    #[test]
    fn a_sentence_said_twice_in_a_row_is_a_repeat() {
        assert!(repeats_a_sentence("No. No. No. No."));
        assert!(repeats_a_sentence("S. The S. The S. The"));
        assert!(repeats_a_sentence("Turn left. Turn left!"));
        assert!(!repeats_a_sentence("No."));
        assert!(!repeats_a_sentence("No, no, no."));
        assert!(!repeats_a_sentence("Turn left. Then turn left again."));
        assert!(!repeats_a_sentence(""));
    }

    #[test]
    fn a_short_sentence_written_again_is_caught_where_the_copy_starts() {
        let mut repeats = SentenceRepeats::default();
        let tokens = [" No", ".", " No", "."];
        let found: Vec<Option<usize>> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| repeats.push(i, t))
            .collect();
        assert_eq!(found, [None, None, None, Some(2)]);

        let mut repeats = SentenceRepeats::default();
        let speech = [" No", ",", " no", ".", " Go", " away", "."];
        assert!(speech
            .iter()
            .enumerate()
            .all(|(i, t)| repeats.push(i, t).is_none()));
    }

    #[test]
    fn letters_ignore_case_spaces_and_punctuation() {
        assert_eq!(letters(" O'Clock, 3!"), "oclock3");
    }
}
