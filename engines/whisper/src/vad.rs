//! Energy-based voice activity: each 20 ms frame's level against a noise floor
//! that follows the quietest recent frames.

use std::collections::VecDeque;

/// Frame length: 20 ms at 16 kHz.
pub(crate) const FRAME_SAMPLES: usize = 320;

#[derive(Debug, Clone)]
pub(crate) struct EnergyVad {
    onset_db: f32,
    continue_db: f32,
    floor_min_db: f32,
    min_speech_db: f32,
    /// The levels of the last `window` frames: the floor is their minimum,
    /// the classic minimum-statistics estimate. Speech has short gaps between
    /// syllables, so the minimum over a few seconds sits on the noise, not on
    /// the voice, even while someone talks.
    recent: VecDeque<f32>,
    window: usize,
}

/// What the detector needs to know, in dB relative to full scale.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VadSettings {
    pub onset_db: f32,
    pub continue_db: f32,
    pub floor_min_db: f32,
    pub min_speech_db: f32,
    pub floor_window_frames: usize,
}

impl EnergyVad {
    pub(crate) fn new(settings: VadSettings) -> Self {
        EnergyVad {
            onset_db: settings.onset_db,
            continue_db: settings.continue_db,
            floor_min_db: settings.floor_min_db,
            min_speech_db: settings.min_speech_db,
            recent: VecDeque::with_capacity(settings.floor_window_frames + 1),
            window: settings.floor_window_frames.max(1),
        }
    }

    /// The noise floor in dBFS, never below the configured minimum, so that
    /// digital silence does not make every faint click count as speech.
    pub(crate) fn floor_db(&self) -> f32 {
        let quietest = self.recent.iter().copied().fold(f32::INFINITY, f32::min);
        if quietest.is_finite() {
            quietest.max(self.floor_min_db)
        } else {
            self.floor_min_db
        }
    }

    /// Classifies one frame. `in_speech` selects the lower threshold that
    /// keeps an utterance open (hysteresis), so trailing soft consonants are
    /// not cut off.
    pub(crate) fn is_speech(&mut self, frame: &[f32], in_speech: bool) -> bool {
        let level = level_db(frame);
        let floor = self.floor_db();
        let margin = if in_speech {
            self.continue_db
        } else {
            self.onset_db
        };
        let speech = level >= self.min_speech_db && level >= floor + margin;
        if self.recent.len() == self.window {
            self.recent.pop_front();
        }
        self.recent.push_back(level);
        speech
    }
}

/// Mean power of a frame in dB relative to a full-scale square wave.
pub(crate) fn level_db(frame: &[f32]) -> f32 {
    if frame.is_empty() {
        return -100.0;
    }
    let power: f64 = frame
        .iter()
        .map(|&s| f64::from(s) * f64::from(s))
        .sum::<f64>()
        / frame.len() as f64;
    (10.0 * (power + 1e-10).log10()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> VadSettings {
        VadSettings {
            onset_db: 12.0,
            continue_db: 8.0,
            floor_min_db: -65.0,
            min_speech_db: -50.0,
            floor_window_frames: 150,
        }
    }

    fn tone(amplitude: f32) -> Vec<f32> {
        (0..FRAME_SAMPLES)
            .map(|i| amplitude * (i as f32 * 0.2).sin())
            .collect()
    }

    #[test]
    fn loud_frames_over_quiet_noise_are_speech() {
        let mut vad = EnergyVad::new(settings());
        for _ in 0..50 {
            assert!(!vad.is_speech(&tone(0.001), false));
        }
        assert!(vad.is_speech(&tone(0.3), false));
    }

    #[test]
    fn steady_noise_stops_counting_as_speech() {
        let mut vad = EnergyVad::new(settings());
        // A loud fan switches on: speech at first, then the floor catches up.
        let first = vad.is_speech(&tone(0.05), false);
        let mut last = first;
        for _ in 0..200 {
            last = vad.is_speech(&tone(0.05), false);
        }
        assert!(first);
        assert!(!last);
    }

    #[test]
    fn digital_silence_is_not_speech() {
        let mut vad = EnergyVad::new(settings());
        for _ in 0..10 {
            assert!(!vad.is_speech(&[0.0; FRAME_SAMPLES], false));
        }
        assert!(vad.floor_db() >= -65.0);
    }
}
