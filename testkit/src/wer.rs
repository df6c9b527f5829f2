//! Word error rate, for tests and benchmarks that score a transcript against
//! the script it was spoken from.

/// Splits `text` into the words WER compares.
///
/// Normalisation, and nothing more: the text is lowercased; every character
/// that is neither alphanumeric nor an apostrophe counts as a word separator
/// (so punctuation and hyphens split or vanish); apostrophes are then removed
/// from inside words, so "don't" and "dont" match. Numbers, contractions and
/// spellings are not expanded or unified: "10" and "ten" differ.
pub fn normalize(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '\u{2019}'))
        .map(|word| {
            word.chars()
                .filter(|c| *c != '\'' && *c != '\u{2019}')
                .collect::<String>()
        })
        .filter(|word| !word.is_empty())
        .collect()
}

/// Word-level Levenshtein distance between the normalised texts (substitutions,
/// deletions and insertions each cost 1), divided by the number of reference
/// words. An empty reference scores 0 against an empty hypothesis and 1
/// against anything else, so the result stays finite.
pub fn word_error_rate(reference: &str, hypothesis: &str) -> f64 {
    let reference = normalize(reference);
    let hypothesis = normalize(hypothesis);
    if reference.is_empty() {
        return if hypothesis.is_empty() { 0.0 } else { 1.0 };
    }
    // One row of the edit-distance table at a time: the table is only ever
    // read one row back.
    let mut previous: Vec<usize> = (0..=hypothesis.len()).collect();
    let mut current = vec![0usize; hypothesis.len() + 1];
    for (i, ref_word) in reference.iter().enumerate() {
        current[0] = i + 1;
        for (j, hyp_word) in hypothesis.iter().enumerate() {
            let substitution = previous[j] + usize::from(ref_word != hyp_word);
            let deletion = previous[j + 1] + 1;
            let insertion = current[j] + 1;
            current[j + 1] = substitution.min(deletion).min(insertion);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[hypothesis.len()] as f64 / reference.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_lowercases_and_strips_punctuation() {
        assert_eq!(
            normalize("Hello, World! It's a well-known fact."),
            vec!["hello", "world", "its", "a", "well", "known", "fact"]
        );
        assert_eq!(normalize("  ...  "), Vec::<String>::new());
        assert_eq!(normalize("Don\u{2019}t stop"), vec!["dont", "stop"]);
        assert_eq!(normalize("10 ten"), vec!["10", "ten"]);
    }

    #[test]
    fn identical_texts_score_zero() {
        assert_eq!(word_error_rate("The cat sat.", "the cat sat"), 0.0);
    }

    #[test]
    fn each_edit_costs_one_reference_word() {
        // One substitution in four words.
        assert_eq!(word_error_rate("a b c d", "a x c d"), 0.25);
        // One deletion.
        assert_eq!(word_error_rate("a b c d", "a b d"), 0.25);
        // Two insertions.
        assert_eq!(word_error_rate("a b c d", "a b y c d z"), 0.5);
        // Everything missing.
        assert_eq!(word_error_rate("a b c d", ""), 1.0);
        // More insertions than reference words exceed 1.
        assert_eq!(word_error_rate("a", "x y z"), 3.0);
    }

    #[test]
    fn empty_reference_is_finite() {
        assert_eq!(word_error_rate("", ""), 0.0);
        assert_eq!(word_error_rate("", "noise"), 1.0);
    }
}
