//! Case-id globs for `--run` / `--skip`: `*` matches any run of characters
//! (slashes included, so `tts/*` selects a whole family), `?` one character,
//! and a comma separates alternatives. Hand-written because case ids are
//! plain ASCII paths and a dependency for this would be all weight.

/// A set of alternative patterns; a case id matches when any one does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    spec: String,
    patterns: Vec<Vec<char>>,
}

impl Glob {
    pub fn new(spec: &str) -> Glob {
        Glob {
            spec: spec.to_string(),
            patterns: spec
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| p.chars().collect())
                .collect(),
        }
    }

    /// The spec as given on the command line.
    pub fn as_str(&self) -> &str {
        &self.spec
    }

    pub fn is_match(&self, id: &str) -> bool {
        let text: Vec<char> = id.chars().collect();
        self.patterns.iter().any(|p| matches(p, &text))
    }
}

/// Iterative wildcard matching with single-star backtracking: linear enough
/// for ids of a few dozen characters.
fn matches(pattern: &[char], text: &[char]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_questions_and_alternatives() {
        let g = Glob::new("tts/frame/*");
        assert!(g.is_match("tts/frame/seq-gap"));
        assert!(!g.is_match("tts/health/check"));
        assert!(Glob::new("*").is_match("stt/event/offsets"));
        assert!(Glob::new("tts/*/check").is_match("tts/health/check"));
        assert!(Glob::new("*gap").is_match("tts/frame/seq-gap"));
        assert!(!Glob::new("*gap").is_match("tts/frame/seq-gaps"));
        assert!(Glob::new("stt/?vent/*").is_match("stt/event/x"));
        let alt = Glob::new("tts/health/*, stt/final/*");
        assert!(alt.is_match("stt/final/after-end-of-audio"));
        assert!(alt.is_match("tts/health/watch"));
        assert!(!alt.is_match("tts/session/duplicate"));
        assert!(Glob::new("tts/session/duplicate").is_match("tts/session/duplicate"));
        assert!(!Glob::new("tts/session/dup").is_match("tts/session/duplicate"));
    }
}
