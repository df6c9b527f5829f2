//! Decoding a sentence in windows of latent frames, so its first audio is
//! ready after a small window instead of after the whole sentence.
//!
//! The text encoder (attention over the whole sentence) and the duration
//! predictor run once for the sentence. The flow and the HiFi-GAN decoder are
//! convolutional, so they run window by window: the flow over the frames the
//! next window needs, widened by its receptive field; the decoder over the
//! window widened by a context of latent frames on each side, cut back to the
//! window's own frames. The contexts are [`crate::PiperVoice::flow_context`]
//! and [`crate::PiperVoice::decode_context`], three quarters of each
//! receptive field by default, and the joined audio equals the
//! whole-sentence decode within a few 1e-5 per sample.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use crate::model::{Context, Latent, StageTimes, Vits};
use crate::PiperError;

/// How a sentence's latent frames (one per `hop_length` samples, about
/// 11.6 ms for 22,050 Hz voices) are cut into decoder windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeWindows {
    /// The whole sentence in one decode: first audio waits for all of it.
    Whole,
    /// `first` frames, then each window twice the last, up to `max`. Small
    /// first windows give early audio; large later ones spend less of the
    /// time on context.
    Chunked { first: usize, max: usize },
}

impl DecodeWindows {
    /// What the worker uses unless told otherwise: 8 frames (about 93 ms of
    /// audio) first, up to 512 frames (about 6 s) per window. Doubling keeps
    /// each window's work inside the audio already out at real-time factors
    /// up to about 0.4 (the second window, 16 frames with its context and
    /// the flow's next stretch, took about 40 ms on 2 cores). 8 instead of
    /// 16 frames cut the first window's flow and decoder from about 49 to
    /// 35 ms there.
    pub const DEFAULT: DecodeWindows = DecodeWindows::Chunked { first: 8, max: 512 };

    /// The windows for a sentence of `frames` latent frames, in order,
    /// covering `0..frames` without gaps or overlaps.
    pub fn plan(self, frames: usize) -> Vec<Range<usize>> {
        let (first, max) = match self {
            // One window as long as the sentence.
            DecodeWindows::Whole => (frames.max(1), frames.max(1)),
            DecodeWindows::Chunked { first, max } => (first.max(1), max.max(first).max(1)),
        };
        let mut windows = Vec::new();
        let (mut start, mut size) = (0, first);
        while start < frames {
            let mut end = (start + size).min(frames);
            // A short remainder would pay the full context on both sides for
            // little audio; this window takes it instead.
            if frames - end < size / 2 {
                end = frames;
            }
            windows.push(start..end);
            start = end;
            size = (size * 2).min(max);
        }
        windows
    }
}

impl Default for DecodeWindows {
    fn default() -> Self {
        DecodeWindows::DEFAULT
    }
}

impl fmt::Display for DecodeWindows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeWindows::Whole => f.write_str("whole"),
            DecodeWindows::Chunked { first, max } => write!(f, "{first},{max}"),
        }
    }
}

/// A decode-window setting that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid decode window {input:?}: {reason}; expected FIRST,MAX in latent frames (e.g. 8,512) or \"whole\"")]
pub struct DecodeWindowsError {
    input: String,
    reason: &'static str,
}

impl FromStr for DecodeWindows {
    type Err = DecodeWindowsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| DecodeWindowsError {
            input: s.to_string(),
            reason,
        };
        let trimmed = s.trim();
        if trimmed.eq_ignore_ascii_case("whole") {
            return Ok(DecodeWindows::Whole);
        }
        let (first, max) = trimmed.split_once(',').ok_or_else(|| err("no comma"))?;
        let first: usize = first
            .trim()
            .parse()
            .map_err(|_| err("FIRST is not a whole number"))?;
        let max: usize = max
            .trim()
            .parse()
            .map_err(|_| err("MAX is not a whole number"))?;
        if first == 0 {
            return Err(err("FIRST must be at least 1"));
        }
        if max < first {
            return Err(err("MAX must be at least FIRST"));
        }
        Ok(DecodeWindows::Chunked { first, max })
    }
}

/// One sentence being decoded window by window: each item is the audio of
/// the next window (mono f32 at the voice's rate), computed when asked for,
/// so a consumer that stops early saves the rest of the work.
pub struct ChunkedSynthesis<'a> {
    model: &'a Vits,
    latent: Latent,
    windows: std::vec::IntoIter<Range<usize>>,
    context: Context,
}

impl fmt::Debug for ChunkedSynthesis<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkedSynthesis")
            .field("frames", &self.latent.frames())
            .field("windows_left", &self.windows.len())
            .field("context", &self.context)
            .finish()
    }
}

impl<'a> ChunkedSynthesis<'a> {
    pub(crate) fn new(
        model: &'a Vits,
        latent: Latent,
        windows: DecodeWindows,
        context: Context,
    ) -> Self {
        let plan = windows.plan(latent.frames());
        ChunkedSynthesis {
            model,
            latent,
            windows: plan.into_iter(),
            context,
        }
    }

    /// Latent frames in the sentence.
    pub fn frames(&self) -> usize {
        self.latent.frames()
    }

    /// Windows not yet decoded.
    pub fn windows_left(&self) -> usize {
        self.windows.len()
    }

    /// Where the time went so far: the encoder and durations (spent when
    /// this was made), the flow and decoder over the windows taken.
    pub fn times(&self) -> StageTimes {
        self.latent.times()
    }
}

impl Iterator for ChunkedSynthesis<'_> {
    type Item = Result<Vec<f32>, PiperError>;

    fn next(&mut self) -> Option<Self::Item> {
        let window = self.windows.next()?;
        Some(
            self.model
                .decode_frames(&mut self.latent, window, self.context),
        )
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.windows.size_hint()
    }
}

impl ExactSizeIterator for ChunkedSynthesis<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn covers(plan: &[Range<usize>], frames: usize) -> bool {
        let mut at = 0;
        for w in plan {
            if w.start != at || w.end <= w.start {
                return false;
            }
            at = w.end;
        }
        at == frames
    }

    #[test]
    fn windows_double_up_to_the_max_and_cover_the_sentence() {
        let plan = DecodeWindows::Chunked { first: 16, max: 64 }.plan(300);
        let sizes: Vec<usize> = plan.iter().map(|w| w.len()).collect();
        assert_eq!(sizes, vec![16, 32, 64, 64, 64, 60]);
        assert!(covers(&plan, 300));
        for frames in 0..700 {
            for windows in [
                DecodeWindows::DEFAULT,
                DecodeWindows::Whole,
                DecodeWindows::Chunked { first: 1, max: 1 },
                DecodeWindows::Chunked { first: 7, max: 100 },
            ] {
                assert!(covers(&windows.plan(frames), frames), "{windows} {frames}");
            }
        }
    }

    #[test]
    fn a_short_remainder_joins_the_window_before_it() {
        let plan = DecodeWindows::Chunked { first: 16, max: 64 }.plan(20);
        assert_eq!(plan, vec![0..20]);
        let plan = DecodeWindows::Chunked { first: 16, max: 64 }.plan(16 + 32 + 64 + 10);
        assert_eq!(plan, vec![0..16, 16..48, 48..122]);
    }

    #[test]
    fn settings_parse_and_print_back() {
        for text in ["whole", "16,512", "1,1"] {
            let parsed: DecodeWindows = text.parse().expect("parses");
            assert_eq!(parsed.to_string(), text);
        }
        assert_eq!(
            " 8 , 32 ".parse::<DecodeWindows>(),
            Ok(DecodeWindows::Chunked { first: 8, max: 32 })
        );
        for bad in ["", "16", "0,16", "32,16", "a,b", "16,256,3"] {
            let err = bad.parse::<DecodeWindows>().expect_err(bad);
            assert!(err.to_string().contains("FIRST,MAX"), "{err}");
        }
    }
}
