//! Cutting incoming text into sentences as it arrives, so synthesis of the
//! first sentence starts before the client has sent the rest.

/// Characters that end a sentence.
const TERMINATORS: &[char] = &['.', '!', '?', '…', '。', '！', '？'];
/// Characters a long run-on sentence may be cut at.
const CLAUSE_BREAKS: &[char] = &[',', ';', ':', '—'];
/// A sentence longer than this is cut at a clause break (or a space), so one
/// long run-on sentence does not delay the first audio.
const MAX_UNIT_CHARS: usize = 200;

/// Accumulates text and hands out complete sentences.
#[derive(Debug, Default)]
pub struct SentenceSplitter {
    buffer: String,
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
            push_trimmed(&mut out, &sentence);
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
        let mut last_space = None;
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
            } else if c.is_whitespace() {
                last_space = Some(end);
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

    #[test]
    fn nothing_is_lost() {
        let text = "One. Two! Three? Four";
        let joined: String = split_all(&["On", "e. Tw", "o! Three? Fo", "ur"]).join(" ");
        assert_eq!(joined, text);
    }
}
