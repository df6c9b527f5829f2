//! Whisper's timestamp tokens: the constraints that keep a decode's
//! timestamps well formed, and the segments they mark.
//!
//! Decoding with timestamps is what the model was trained to do on long
//! audio: it writes `<|t0|> words <|t1|>` per phrase, and a decode that is
//! made to say where each phrase ends cannot quietly run on past the audio.
//! Two constraints of our own sit beside the model's usual ones: no timestamp
//! past the end of the real audio in the window (there is nothing to describe
//! there, only the silence a trimmed context pads with), and a decode must
//! start within the first second.

/// Seconds per timestamp step: `<|0.02|>` is one step after `<|0.00|>`.
pub(crate) const SECONDS_PER_STEP: f64 = 0.02;
/// The first timestamp must come within this much of the window's start.
const MAX_INITIAL_SECONDS: f64 = 1.0;

/// The timestamp range of a vocabulary and the end-of-text token.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimestampTokens {
    /// `<|0.00|>`; every id from here to the vocabulary's end is a timestamp.
    pub(crate) begin: u32,
    pub(crate) eot: u32,
}

/// One phrase the model delimited, in seconds from the window's start.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Segment {
    pub(crate) start: f64,
    pub(crate) end: f64,
    pub(crate) tokens: Vec<u32>,
}

/// What a decode's tokens say about its window.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Segmented {
    /// Phrases closed by a timestamp.
    pub(crate) complete: Vec<Segment>,
    /// Text after the last closing timestamp (the decode ended mid-phrase):
    /// it runs from its opening timestamp to an unknown end.
    pub(crate) open: Option<Segment>,
}

impl TimestampTokens {
    pub(crate) fn is_timestamp(&self, token: u32) -> bool {
        token >= self.begin
    }

    pub(crate) fn seconds(&self, token: u32) -> f64 {
        f64::from(token.saturating_sub(self.begin)) * SECONDS_PER_STEP
    }

    /// The timestamp token of `seconds`, rounded up.
    fn token_at(&self, seconds: f64) -> usize {
        // The epsilon keeps 2.0 / 0.02 from rounding up to 101 steps.
        let steps = (seconds / SECONDS_PER_STEP - 1e-6).ceil().max(0.0);
        self.begin as usize + steps as usize
    }

    /// Masks `logits` for the token after `sampled` (the decode so far, prompt
    /// excluded) so that the decode stays well formed:
    /// - it opens with a timestamp within the first second;
    /// - timestamps come in pairs around text: after an opening timestamp,
    ///   text; after text, text, a closing timestamp or end-of-text; after a
    ///   closing timestamp, the next opening one or end-of-text;
    /// - timestamps never go back, and a phrase never has zero length;
    /// - no timestamp lies past `audio_seconds`, the real audio of the window;
    /// - where the timestamps together are more likely than any single text
    ///   token, a timestamp it is (the model is saying the phrase is over).
    pub(crate) fn constrain(&self, sampled: &[u32], audio_seconds: f64, logits: &mut [f32]) {
        let begin = (self.begin as usize).min(logits.len());
        let eot = (self.eot as usize).min(begin);
        let mask = |logits: &mut [f32], range: std::ops::Range<usize>| {
            let end = range.end.min(logits.len());
            let start = range.start.min(end);
            logits[start..end].fill(f32::NEG_INFINITY);
        };
        let last_allowed = self.token_at(audio_seconds).max(begin);
        mask(logits, last_allowed + 1..logits.len());

        let Some(&last) = sampled.last() else {
            // The opening timestamp: nothing else, and early.
            mask(logits, 0..begin);
            mask(logits, self.token_at(MAX_INITIAL_SECONDS) + 1..logits.len());
            return;
        };
        let last_was_timestamp = self.is_timestamp(last);
        let penultimate_was_timestamp =
            sampled.len() < 2 || self.is_timestamp(sampled[sampled.len() - 2]);
        if last_was_timestamp {
            if penultimate_was_timestamp {
                // A phrase was just opened: its words come next.
                mask(logits, begin..logits.len());
            } else {
                // A phrase was just closed: open the next or stop.
                mask(logits, 0..eot);
            }
        }
        if let Some(&latest) = sampled.iter().rev().find(|&&t| self.is_timestamp(t)) {
            // The next phrase may open where the last one closed; within a
            // phrase, the closing timestamp must be later than the opening.
            let floor = if last_was_timestamp && !penultimate_was_timestamp {
                latest as usize
            } else {
                latest as usize + 1
            };
            mask(logits, begin..floor);
        }

        // Whisper compares log-probabilities; both sides share the softmax's
        // normaliser, so the logits compare the same.
        let timestamp_mass = crate::model::log_sum_exp(&logits[begin..]);
        let best_text = logits[..begin]
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        if timestamp_mass > f64::from(best_text) {
            mask(logits, 0..begin);
        }
    }

    /// Splits a decode's tokens into the phrases its timestamps delimit.
    /// Text that comes before any timestamp (not produced under
    /// [`TimestampTokens::constrain`], but possible in a hand-made sequence)
    /// is taken to start at 0.
    pub(crate) fn segments(&self, tokens: &[u32]) -> Segmented {
        let mut complete = Vec::new();
        let mut opened: Option<f64> = None;
        let mut text: Vec<u32> = Vec::new();
        for &token in tokens {
            if token == self.eot {
                break;
            }
            if !self.is_timestamp(token) {
                text.push(token);
                continue;
            }
            let at = self.seconds(token);
            if text.is_empty() {
                // An opening timestamp (or a repeated one before any words).
                opened = Some(at);
            } else {
                complete.push(Segment {
                    start: opened.unwrap_or(0.0),
                    end: at,
                    tokens: std::mem::take(&mut text),
                });
                opened = None;
            }
        }
        let open = (!text.is_empty()).then(|| {
            let start = opened.unwrap_or_else(|| complete.last().map_or(0.0, |s: &Segment| s.end));
            Segment {
                start,
                end: f64::INFINITY,
                tokens: text,
            }
        });
        Segmented { complete, open }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A toy vocabulary: text 0..10, end-of-text 10, specials 11, timestamps
    // 12.. (0.00 s, 0.02 s, ...), 3 s worth.
    const EOT: u32 = 10;
    const BEGIN: u32 = 12;
    const VOCAB: usize = BEGIN as usize + 151;

    fn tokens() -> TimestampTokens {
        TimestampTokens {
            begin: BEGIN,
            eot: EOT,
        }
    }

    fn ts(seconds: f64) -> u32 {
        BEGIN + (seconds / SECONDS_PER_STEP).round() as u32
    }

    fn allowed(sampled: &[u32], audio_seconds: f64) -> Vec<usize> {
        let mut logits = vec![0.0f32; VOCAB];
        // Each text token more likely than all 151 timestamps together
        // (ln 151 < 6), so the "timestamps together" rule does not hide the
        // others.
        logits[..BEGIN as usize].fill(6.0);
        tokens().constrain(sampled, audio_seconds, &mut logits);
        (0..VOCAB).filter(|&i| logits[i].is_finite()).collect()
    }

    #[test]
    fn a_decode_opens_with_an_early_timestamp() {
        let first = allowed(&[], 3.0);
        assert_eq!(first.first(), Some(&(BEGIN as usize)));
        assert_eq!(first.last(), Some(&(ts(1.0) as usize)));
    }

    #[test]
    fn words_follow_an_opening_and_a_close_or_the_end_follows_words() {
        let after_open = allowed(&[ts(0.0)], 3.0);
        assert!(after_open.iter().all(|&t| t < BEGIN as usize));
        let after_words = allowed(&[ts(0.0), 3], 3.0);
        assert!(after_words.contains(&3) && after_words.contains(&(EOT as usize)));
        assert!(
            !after_words.contains(&(ts(0.0) as usize)),
            "zero-length phrase"
        );
        assert!(after_words.contains(&(ts(0.02) as usize)));
        let after_close = allowed(&[ts(0.0), 3, ts(1.2)], 3.0);
        assert!(!after_close.contains(&3), "words need an opening timestamp");
        assert!(after_close.contains(&(EOT as usize)));
        assert!(
            after_close.contains(&(ts(1.2) as usize)),
            "may open where it closed"
        );
        assert!(!after_close.contains(&(ts(1.18) as usize)), "never back");
    }

    #[test]
    fn no_timestamp_lies_past_the_audio() {
        let after_words = allowed(&[ts(0.0), 3], 2.0);
        assert!(after_words.contains(&(ts(2.0) as usize)));
        assert!(!after_words.contains(&(ts(2.02) as usize)));
    }

    #[test]
    fn likely_timestamps_together_win_over_text() {
        let mut logits = vec![0.0f32; VOCAB];
        logits[3] = 2.0; // one text token, but 150 timestamps at 0 outweigh it
        tokens().constrain(&[ts(0.0), 3], 3.0, &mut logits);
        assert!(logits[..BEGIN as usize].iter().all(|l| !l.is_finite()));
        assert!(logits[ts(1.0) as usize].is_finite());
    }

    #[test]
    fn segments_are_read_off_the_pairs() {
        let decoded = [ts(0.0), 1, 2, ts(1.0), ts(1.0), 3, ts(2.0), ts(2.4), 4, 5];
        let segmented = tokens().segments(&decoded);
        assert_eq!(
            segmented.complete,
            vec![
                Segment {
                    start: 0.0,
                    end: 1.0,
                    tokens: vec![1, 2]
                },
                Segment {
                    start: 1.0,
                    end: 2.0,
                    tokens: vec![3]
                },
            ]
        );
        let open = segmented.open.expect("an unfinished phrase");
        assert_eq!((open.start, open.tokens), (2.4, vec![4, 5]));
        assert!(tokens()
            .segments(&[ts(0.0), 1, ts(0.5), EOT])
            .open
            .is_none());
    }
}
