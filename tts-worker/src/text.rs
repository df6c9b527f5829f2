//! Cutting incoming text into sentences as it arrives, so synthesis of the
//! first sentence starts before the client has sent the rest.

/// Characters that end a sentence.
const TERMINATORS: &[char] = &['.', '!', '?', '…', '。', '！', '？'];
/// Characters a long run-on sentence may be cut at.
const CLAUSE_BREAKS: &[char] = &[',', ';', ':', '—'];
/// A sentence longer than this is cut at a clause break (or a space), so one
/// long run-on sentence does not delay the first audio.
const MAX_UNIT_CHARS: usize = 200;
/// The first unit of a text is cut sooner: a first sentence longer than
/// this starts at its first clause break (of at least
/// [`MIN_FIRST_CLAUSE_CHARS`]), because the voice runs its text encoder over
/// a whole unit before any audio, and that time grows with the unit (on 2
/// cores about 55 ms for 44 characters, 175 ms for 177). Later units are
/// synthesized while earlier audio plays, so they keep whole sentences (and
/// their prosody) up to [`MAX_UNIT_CHARS`].
const FIRST_UNIT_CHARS: usize = 80;
/// A first clause shorter than this is not worth its own unit.
const MIN_FIRST_CLAUSE_CHARS: usize = 24;

/// Accumulates text and hands out complete sentences.
#[derive(Debug, Default)]
pub struct SentenceSplitter {
    buffer: String,
    /// Units handed out so far.
    emitted: usize,
}

impl SentenceSplitter {
    pub fn new() -> Self {
        SentenceSplitter::default()
    }

    /// Adds text; returns the sentences it completed. A terminator at the
    /// very end of the text so far counts as a sentence end: clients send
    /// chunks at sentence boundaries, and waiting for the next chunk to see
    /// the following space would hold back audio.
    pub fn push(&mut self, text: &str) -> Vec<String> {
        self.buffer.push_str(text);
        let mut out = Vec::new();
        while let Some(end) = self.next_boundary() {
            let rest = self.buffer.split_off(end);
            let sentence = std::mem::replace(&mut self.buffer, rest);
            let before = out.len();
            push_trimmed(&mut out, &sentence);
            self.emitted += out.len() - before;
        }
        out
    }

    /// End of input: whatever is left is the last sentence.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buffer);
        let mut out = Vec::new();
        push_trimmed(&mut out, &rest);
        out.pop()
    }

    /// Byte index just past the first complete unit in the buffer.
    fn next_boundary(&self) -> Option<usize> {
        let mut chars = self.buffer.char_indices().peekable();
        let mut count = 0usize;
        let mut last_clause_break = None;
        let mut first_clause_break = None;
        let mut last_space = None;
        let first_unit = self.emitted == 0;
        while let Some((i, c)) = chars.next() {
            count += 1;
            let end = i + c.len_utf8();
            if TERMINATORS.contains(&c) || c == '\n' {
                // Swallow runs like "?!" or "..." and a closing quote.
                let mut end = end;
                while let Some(&(j, next)) = chars.peek() {
                    if TERMINATORS.contains(&next) || matches!(next, '"' | '\'' | ')' | '”' | '’')
                    {
                        end = j + next.len_utf8();
                        chars.next();
                    } else {
                        break;
                    }
                }
                match chars.peek() {
                    None => return Some(end),
                    Some(&(_, next)) if next.is_whitespace() => return Some(end),
                    _ => {}
                }
            } else if CLAUSE_BREAKS.contains(&c) {
                last_clause_break = Some(end);
                if first_clause_break.is_none() && count >= MIN_FIRST_CLAUSE_CHARS {
                    first_clause_break = Some(end);
                }
            } else if c.is_whitespace() {
                last_space = Some(end);
            }
            if first_unit && count >= FIRST_UNIT_CHARS {
                if let Some(cut) = first_clause_break {
                    return Some(cut);
                }
            }
            if count >= MAX_UNIT_CHARS {
                if let Some(cut) = last_clause_break.or(last_space) {
                    return Some(cut);
                }
            }
        }
        None
    }
}

fn push_trimmed(out: &mut Vec<String>, sentence: &str) {
    let trimmed = sentence.trim();
    // A unit with nothing speakable (only punctuation or space) makes no sound.
    if trimmed.chars().any(char::is_alphanumeric) {
        out.push(trimmed.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(chunks: &[&str]) -> Vec<String> {
        let mut splitter = SentenceSplitter::new();
        let mut out: Vec<String> = chunks.iter().flat_map(|c| splitter.push(c)).collect();
        out.extend(splitter.finish());
        out
    }

    #[test]
    fn sentences_come_out_as_soon_as_complete() {
        let mut splitter = SentenceSplitter::new();
        assert_eq!(splitter.push("Hello there. How"), vec!["Hello there."]);
        assert!(splitter.push(" are").is_empty());
        assert_eq!(splitter.push(" you?"), vec!["How are you?"]);
        assert_eq!(splitter.finish(), None);
    }

    #[test]
    fn decimals_are_not_sentence_ends() {
        assert_eq!(
            split_all(&["It costs 3.50 dollars. Fine"]),
            vec!["It costs 3.50 dollars.", "Fine"]
        );
    }

    #[test]
    fn punctuation_only_and_blank_make_nothing() {
        assert!(split_all(&["...", "  ", "?!"]).is_empty());
        assert!(split_all(&[]).is_empty());
    }

    #[test]
    fn long_run_on_text_is_cut_at_a_clause() {
        let long = "word, ".repeat(60);
        let units = split_all(&[&long]);
        assert!(units.len() > 1);
        assert!(units.iter().all(|u| u.chars().count() <= MAX_UNIT_CHARS));
    }

    const LONG_FIRST: &str = "When the morning train finally pulled into the crowded station, \
        the passengers who had waited for nearly an hour in the cold gathered their bags, their \
        coffee and their patience, and stepped aboard without a single word of complaint.";

    #[test]
    fn a_long_first_sentence_starts_at_its_first_clause() {
        let units = split_all(&[LONG_FIRST, " The doors closed behind them."]);
        assert_eq!(
            units[0],
            "When the morning train finally pulled into the crowded station,"
        );
        // The rest of the sentence is one unit again, then the next sentence.
        assert_eq!(units.len(), 3, "{units:?}");
        assert_eq!(format!("{} {}", units[0], units[1]), LONG_FIRST);
        assert_eq!(units[2], "The doors closed behind them.");
        // Text arriving in pieces is cut at the same place.
        let pieces: Vec<&str> = LONG_FIRST.split_inclusive(' ').collect();
        assert_eq!(split_all(&pieces)[0], units[0]);
    }

    #[test]
    fn short_first_sentences_and_later_sentences_keep_their_clauses() {
        let short = "Well, that is fine.";
        assert_eq!(split_all(&[short]), vec![short]);
        let later = "When the morning train finally pulled into the crowded station, the \
            passengers gathered their bags and stepped aboard without a word.";
        let units = split_all(&["Hello there. ", later]);
        assert_eq!(units, vec!["Hello there.", later]);
        // The same sentence first is cut at its clause.
        assert_eq!(split_all(&[later]).len(), 2);
        // A first clause too short for a unit of its own is not cut off.
        let early = "Yes, the passengers who had waited for nearly an hour in the cold gathered \
            their bags and stepped aboard without a single word of complaint.";
        assert_eq!(split_all(&[early]), vec![early]);
    }

    #[test]
    fn nothing_is_lost() {
        let text = "One. Two! Three? Four";
        let joined: String = split_all(&["On", "e. Tw", "o! Three? Fo", "ur"]).join(" ");
        assert_eq!(joined, text);
    }
}
