//! Text to Piper input ids, the way Piper's espeak phonemizer does it: one
//! espeak-ng pass per clause, the clause's punctuation appended as a phoneme,
//! a new sentence after `.`, `?` and `!`.
//!
//! Debian's espeak-ng 1.51 lacks `espeak_TextToPhonemesWithTerminator`, which
//! Piper uses to learn each clause's punctuation, so clauses are found here:
//! a clause ends at punctuation followed by whitespace or the end of the text,
//! which is also espeak-ng's own rule for these marks.

use unicode_normalization::UnicodeNormalization;

use crate::config::VoiceConfig;
use crate::{espeak, PiperError, Sentence};

const BOS: char = '^';
const EOS: char = '$';
const PAD: char = '_';

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Terminator {
    Period,
    Question,
    Exclamation,
    Comma,
    Colon,
    Semicolon,
    /// End of text without punctuation: nothing is appended.
    None,
}

impl Terminator {
    fn from_char(c: char) -> Option<Self> {
        Some(match c {
            '.' | '…' | '。' => Self::Period,
            '?' | '？' | '؟' => Self::Question,
            '!' | '！' => Self::Exclamation,
            ',' | '，' | '、' | '،' => Self::Comma,
            ':' | '：' => Self::Colon,
            ';' | '；' => Self::Semicolon,
            _ => return None,
        })
    }

    /// What Piper appends after the clause's phonemes.
    fn phonemes(self) -> &'static str {
        match self {
            Self::Period => ".",
            Self::Question => "?",
            Self::Exclamation => "!",
            Self::Comma => ", ",
            Self::Colon => ": ",
            Self::Semicolon => "; ",
            Self::None => "",
        }
    }

    fn ends_sentence(self) -> bool {
        matches!(
            self,
            Self::Period | Self::Question | Self::Exclamation | Self::None
        )
    }
}

fn is_closing(c: char) -> bool {
    matches!(c, '"' | '\'' | ')' | ']' | '}' | '»' | '”' | '’')
}

struct Clause<'a> {
    text: &'a str,
    terminator: Terminator,
}

/// Splits text into clauses at punctuation followed by whitespace (or the
/// end). A run of marks ("?!", "...") counts as one, decided by its last
/// mark. A period followed by a lower-case word does not end a clause, as in
/// espeak-ng ("e.g. this").
fn clauses(text: &str) -> Vec<Clause<'_>> {
    let mut out = Vec::new();
    let mut start = 0;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (_, c) = chars[i];
        if Terminator::from_char(c).is_none() {
            i += 1;
            continue;
        }
        let mut j = i;
        while j + 1 < chars.len() && Terminator::from_char(chars[j + 1].1).is_some() {
            j += 1;
        }
        // Closing quotes and brackets belong to the clause they close.
        while j + 1 < chars.len() && is_closing(chars[j + 1].1) {
            j += 1;
        }
        let next = chars.get(j + 1).map(|&(_, c)| c);
        // Full-width (CJK) marks end a clause even without a following
        // space, as in espeak-ng.
        let full_width = chars[i..=j].iter().any(|&(_, c)| {
            ('\u{3000}'..='\u{303f}').contains(&c) || ('\u{ff00}'..='\u{ffef}').contains(&c)
        });
        let at_boundary = full_width || next.is_none_or(char::is_whitespace);
        let last_mark = chars[i..=j]
            .iter()
            .rev()
            .find_map(|&(_, c)| Terminator::from_char(c));
        let terminator = last_mark.unwrap_or(Terminator::None);
        if terminator == Terminator::Period {
            let following = chars[j + 1..]
                .iter()
                .map(|&(_, c)| c)
                .find(|c| !c.is_whitespace());
            if following.is_some_and(char::is_lowercase) {
                i = j + 1;
                continue;
            }
        }
        if at_boundary {
            let end = chars.get(j + 1).map_or(text.len(), |&(b, _)| b);
            let clause = &text[start..end];
            if !clause.trim().is_empty() {
                out.push(Clause {
                    text: clause,
                    terminator,
                });
            }
            start = end;
        }
        i = j + 1;
    }
    if !text[start..].trim().is_empty() {
        out.push(Clause {
            text: &text[start..],
            terminator: Terminator::None,
        });
    }
    out
}

/// Removes espeak-ng's language-switch markers such as `(en)` / `(fr)`,
/// which Piper filters out too.
fn strip_language_flags(phonemes: &str) -> String {
    let mut out = String::with_capacity(phonemes.len());
    let mut depth = 0usize;
    for c in phonemes.chars() {
        match c {
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// `^ _ p1 _ p2 _ ... pn _ $`; phonemes missing from the map are skipped, as
/// Piper does.
pub fn phonemes_to_ids(config: &VoiceConfig, phonemes: &str) -> Vec<i64> {
    let map = &config.phoneme_id_map;
    let mut ids = Vec::with_capacity(phonemes.chars().count() * 2 + 3);
    let pad = map.get(&PAD).cloned().unwrap_or_default();
    ids.extend(map.get(&BOS).into_iter().flatten());
    ids.extend(&pad);
    for c in phonemes.chars() {
        let mapped: Vec<char> = match config.phoneme_map.get(&c) {
            Some(to) => to.clone(),
            None => vec![c],
        };
        for m in mapped {
            if let Some(id) = map.get(&m) {
                ids.extend(id);
                ids.extend(&pad);
            }
        }
    }
    ids.extend(map.get(&EOS).into_iter().flatten());
    ids
}

pub fn phonemize(config: &VoiceConfig, text: &str) -> Result<Vec<Sentence>, PiperError> {
    if config.phoneme_type != "espeak" {
        return Err(PiperError::Unsupported(format!(
            "phoneme_type {:?}",
            config.phoneme_type
        )));
    }
    let mut sentences = Vec::new();
    let mut sentence_text = String::new();
    let mut sentence_phonemes = String::new();
    for clause in clauses(text) {
        let raw = espeak::text_to_phonemes(&config.espeak_voice, clause.text)?;
        let cleaned = strip_language_flags(raw.trim());
        // Piper decomposes the phonemes (NFD) before looking up ids.
        sentence_phonemes.extend(cleaned.nfd());
        sentence_phonemes.push_str(clause.terminator.phonemes());
        sentence_text.push_str(clause.text);
        if clause.terminator.ends_sentence() {
            push_sentence(
                config,
                &mut sentences,
                &mut sentence_text,
                &mut sentence_phonemes,
            );
        }
    }
    push_sentence(
        config,
        &mut sentences,
        &mut sentence_text,
        &mut sentence_phonemes,
    );
    Ok(sentences)
}

fn push_sentence(
    config: &VoiceConfig,
    sentences: &mut Vec<Sentence>,
    text: &mut String,
    phonemes: &mut String,
) {
    // Text that phonemizes to nothing (only punctuation, say) would give a
    // sentence of bare markers; drop it.
    if phonemes.trim().is_empty() {
        text.clear();
        phonemes.clear();
        return;
    }
    let p = std::mem::take(phonemes);
    sentences.push(Sentence {
        text: std::mem::take(text).trim().to_string(),
        ids: phonemes_to_ids(config, &p),
        phonemes: p,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str) -> Vec<(&str, Terminator)> {
        clauses(text)
            .into_iter()
            .map(|c| (c.text.trim(), c.terminator))
            .collect()
    }

    #[test]
    fn clause_splitting() {
        assert_eq!(
            split("Hello, world! How are you today?"),
            vec![
                ("Hello,", Terminator::Comma),
                ("world!", Terminator::Exclamation),
                ("How are you today?", Terminator::Question),
            ]
        );
        assert_eq!(
            split("It costs $3.50 on 12/25, at 7 o'clock."),
            vec![
                ("It costs $3.50 on 12/25,", Terminator::Comma),
                ("at 7 o'clock.", Terminator::Period),
            ]
        );
        assert_eq!(split("no end"), vec![("no end", Terminator::None)]);
        assert_eq!(
            split("你好，世界。再见"),
            vec![
                ("你好，", Terminator::Comma),
                ("世界。", Terminator::Period),
                ("再见", Terminator::None),
            ]
        );
        assert_eq!(
            split("Wait?! Yes; fine"),
            vec![
                ("Wait?!", Terminator::Exclamation),
                ("Yes;", Terminator::Semicolon),
                ("fine", Terminator::None)
            ]
        );
        assert_eq!(
            split("e.g. this."),
            vec![("e.g. this.", Terminator::Period)]
        );
        assert_eq!(
            split("\"Quoted,\" she said (twice.) Then"),
            vec![
                ("\"Quoted,\"", Terminator::Comma),
                ("she said (twice.)", Terminator::Period),
                ("Then", Terminator::None),
            ]
        );
    }

    #[test]
    fn language_flags_removed() {
        assert_eq!(strip_language_flags("(en)hˈɛloʊ(fr)"), "hˈɛloʊ");
    }
}
