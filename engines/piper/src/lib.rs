//! Piper (VITS) text-to-speech voices, run natively on candle, with Piper's
//! espeak-ng phonemizer.
//!
//! ```no_run
//! # fn main() -> Result<(), voxwire_piper::PiperError> {
//! use voxwire_piper::{PiperVoice, Scales};
//! let voice = PiperVoice::load("models/en_US-joe-medium.onnx".as_ref())?;
//! let scales = Scales::from_config(voice.config());
//! let audio = voice.synthesize_sentence("Hello, world!", scales, 42)?;
//! assert!(!audio.is_empty()); // mono f32 at voice.config().sample_rate
//! # Ok(())
//! # }
//! ```
//!
//! How it runs:
//!
//! - The `.onnx` is read only for its weights and convolution attributes
//!   (dilations, paddings, strides); the network is this crate's own candle
//!   code: text encoder, stochastic duration predictor, length regulation,
//!   reverse flow, HiFi-GAN decoder. Layer counts and sizes come from the
//!   weights, so other Piper quality levels load through the same code;
//!   multi-speaker voices load and take a speaker id
//!   ([`PiperVoice::synthesize_ids_as`]).
//! - The wide 1-D convolutions (decoder, flow) run as fused candle custom ops
//!   (`conv` module): cache-blocked im2col + GEMM with activation, bias and
//!   residual folded in, parallel over time on rayon's pool. Thread count
//!   follows `RAYON_NUM_THREADS` (also what candle's own CPU kernels use),
//!   except that the text encoder and duration predictor, chains of small
//!   ops, run on the calling thread alone.
//! - Phonemes come from the system's libespeak-ng (voice from the config),
//!   called under one process-wide lock because espeak-ng is not
//!   thread-safe. Clause punctuation is recovered the way Piper does it, one
//!   sentence per model run; see the `phonemize` module for how this differs
//!   from Piper's use of `espeak_TextToPhonemesWithTerminator` (absent from
//!   espeak-ng 1.51).
//!
//! With [`Scales::DETERMINISTIC`] the output matches the reference Piper
//! runtime (onnxruntime) to within about 1e-4 per sample.
//!
//! Licensed GPL-3.0-or-later because it links espeak-ng.
#![deny(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod chunked;
mod config;
mod conv;
mod espeak;
mod model;
mod onnx;
mod phonemize;
mod spline;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use candle_core::Device;

pub use chunked::{ChunkedSynthesis, DecodeWindows, DecodeWindowsError};
pub use config::VoiceConfig;
pub use model::StageTimes;

/// Errors from loading a voice or synthesizing with it.
#[derive(Debug, thiserror::Error)]
pub enum PiperError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no voice at {0}: expected a .onnx file or a directory holding exactly one")]
    NotFound(PathBuf),
    #[error("{0} holds more than one .onnx voice")]
    Ambiguous(PathBuf),
    #[error("invalid voice config: {0}")]
    Config(String),
    #[error("invalid model file: {0}")]
    Format(String),
    #[error("model lacks weight {0}")]
    MissingWeight(String),
    #[error("unsupported voice: {0}")]
    Unsupported(String),
    #[error("phoneme id {0} is outside the model's vocabulary")]
    InvalidPhonemeId(i64),
    #[error("speaker id {0} is not in this voice")]
    InvalidSpeaker(i64),
    #[error("no phoneme ids to synthesize")]
    EmptyInput,
    #[error("espeak-ng: {0}")]
    Espeak(String),
    #[error("espeak-ng has no voice {0:?}")]
    UnknownVoice(String),
    #[error("tensor computation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// Sampling controls, in the order of Piper's `scales` input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scales {
    /// Spread of the latent noise (voice variation); 0 = none.
    pub noise_scale: f32,
    /// Phoneme duration multiplier; above 1 speaks slower.
    pub length_scale: f32,
    /// Spread of the duration predictor's noise (rhythm variation); 0 = none.
    pub noise_w: f32,
}

impl Scales {
    /// No random draws at all: the output depends only on the input ids.
    pub const DETERMINISTIC: Scales = Scales {
        noise_scale: 0.0,
        length_scale: 1.0,
        noise_w: 0.0,
    };

    /// Piper's defaults when a config names none.
    pub const PIPER_DEFAULT: Scales = Scales {
        noise_scale: 0.667,
        length_scale: 1.0,
        noise_w: 0.8,
    };

    /// The voice's recommended scales from its `.onnx.json`.
    pub fn from_config(config: &VoiceConfig) -> Scales {
        config.default_scales
    }
}

/// One sentence of input text, phonemized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sentence {
    /// The source text of the sentence.
    pub text: String,
    /// IPA phonemes with clause punctuation, as fed to the id map.
    pub phonemes: String,
    /// Model input ids, `^ _ p1 _ ... pn _ $`.
    pub ids: Vec<i64>,
}

/// A loaded voice. Immutable after loading, so one instance can serve many
/// threads (wrap it in an `Arc`).
pub struct PiperVoice {
    id: String,
    config: VoiceConfig,
    model: model::Vits,
    /// The decoder's receptive field, in latent frames.
    receptive_field: usize,
    /// Latent frames of context on each side of a decode window.
    decode_context: usize,
    /// The flow's receptive field, in latent frames.
    flow_receptive_field: usize,
    /// Latent frames of context on each side of a stretch of the flow.
    flow_context: usize,
}

impl std::fmt::Debug for PiperVoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PiperVoice")
            .field("id", &self.id)
            .field("sample_rate", &self.config.sample_rate)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, PiperError> {
    std::fs::read(path).map_err(|source| PiperError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The `.onnx` a path designates: the file itself, or the only one in a
/// directory.
fn resolve_model_path(path: &Path) -> Result<PathBuf, PiperError> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if !path.is_dir() {
        return Err(PiperError::NotFound(path.to_path_buf()));
    }
    let entries = std::fs::read_dir(path).map_err(|source| PiperError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| PiperError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let p = entry.path();
        if p.is_file() && p.extension().is_some_and(|e| e == "onnx") {
            found.push(p);
        }
    }
    match found.len() {
        0 => Err(PiperError::NotFound(path.to_path_buf())),
        1 => Ok(found.remove(0)),
        _ => Err(PiperError::Ambiguous(path.to_path_buf())),
    }
}

impl PiperVoice {
    /// Loads a voice from its `.onnx` (with `<name>.onnx.json` beside it) or
    /// from a directory holding exactly one `.onnx`.
    pub fn load(path: &Path) -> Result<PiperVoice, PiperError> {
        let model_path = resolve_model_path(path)?;
        let mut json_path = model_path.clone().into_os_string();
        json_path.push(".json");
        let json_path = PathBuf::from(json_path);
        let json = read(&json_path)?;
        let json = String::from_utf8(json)
            .map_err(|e| PiperError::Config(format!("{}: {e}", json_path.display())))?;
        let config = VoiceConfig::from_json(&json)?;

        let bytes = read(&model_path)?;
        let device = Device::Cpu;
        let weights = onnx::OnnxWeights::parse(&bytes, &device)?;
        drop(bytes);
        let model = model::Vits::load(&weights, &device)?;
        let speakers = model.num_speakers()?;
        if speakers != config.num_speakers as usize {
            return Err(PiperError::Config(format!(
                "config says {} speakers, the model has {speakers}",
                config.num_speakers
            )));
        }

        let id = model_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let receptive_field = model.receptive_field_frames()?;
        let flow_receptive_field = model.flow_receptive_field_frames();
        Ok(PiperVoice {
            id,
            config,
            decode_context: default_decode_context(receptive_field),
            receptive_field,
            flow_context: default_flow_context(flow_receptive_field),
            flow_receptive_field,
            model,
        })
    }

    pub fn config(&self) -> &VoiceConfig {
        &self.config
    }

    /// The model file's stem, e.g. `en_US-joe-medium`.
    pub fn voice_id(&self) -> &str {
        &self.id
    }

    /// Output samples per model frame (256 for medium voices).
    pub fn hop_length(&self) -> usize {
        self.model.hop_length()
    }

    /// Latent frames on either side of a sample that can influence it in the
    /// HiFi-GAN decoder (its full receptive field).
    pub fn receptive_field_frames(&self) -> usize {
        self.receptive_field
    }

    /// Latent frames of context decoded on each side of a window by
    /// [`PiperVoice::synthesize_ids_chunked`].
    pub fn decode_context(&self) -> usize {
        self.decode_context
    }

    /// Sets [`PiperVoice::decode_context`]; the full receptive field makes
    /// chunked audio equal to whole-sentence audio up to float rounding,
    /// less trades accuracy at the window edges for speed.
    pub fn with_decode_context(mut self, frames: usize) -> Self {
        self.decode_context = frames;
        self
    }

    /// Latent frames on either side of a frame that can influence it in the
    /// flow (its full receptive field).
    pub fn flow_receptive_field_frames(&self) -> usize {
        self.flow_receptive_field
    }

    /// Latent frames of context the flow runs over on each side of a
    /// stretch in [`PiperVoice::synthesize_ids_chunked`].
    pub fn flow_context(&self) -> usize {
        self.flow_context
    }

    /// Sets [`PiperVoice::flow_context`]; as with the decoder's, the full
    /// receptive field is exact, less trades accuracy at the cut for speed.
    pub fn with_flow_context(mut self, frames: usize) -> Self {
        self.flow_context = frames;
        self
    }

    /// Splits text into sentences and phonemizes each with espeak-ng.
    pub fn phonemize(&self, text: &str) -> Result<Vec<Sentence>, PiperError> {
        phonemize::phonemize(&self.config, text)
    }

    /// Runs the model on one sentence's ids; mono f32 at the voice's rate.
    /// `seed` drives the noise; with [`Scales::DETERMINISTIC`] it is unused.
    /// Multi-speaker voices speak as speaker 0 (see
    /// [`PiperVoice::synthesize_ids_as`]).
    pub fn synthesize_ids(
        &self,
        ids: &[i64],
        scales: Scales,
        seed: u64,
    ) -> Result<Vec<f32>, PiperError> {
        self.synthesize_ids_as(ids, 0, scales, seed)
    }

    /// [`PiperVoice::synthesize_ids`] as one speaker of a multi-speaker
    /// voice (ids as in `config().speaker_id_map`); single-speaker voices
    /// accept only speaker 0.
    pub fn synthesize_ids_as(
        &self,
        ids: &[i64],
        speaker_id: i64,
        scales: Scales,
        seed: u64,
    ) -> Result<Vec<f32>, PiperError> {
        let mut latent = on_this_thread(|| {
            self.model.latent(
                ids,
                speaker_id,
                scales.noise_scale,
                scales.length_scale,
                scales.noise_w,
                seed,
            )
        })?;
        let frames = latent.frames();
        let whole = model::Context {
            decoder: 0,
            flow: 0,
        };
        self.model.decode_frames(&mut latent, 0..frames, whole)
    }

    /// [`PiperVoice::synthesize_ids`] decoded window by window: the text
    /// encoder and durations run now (errors in the ids show here); each item
    /// of the result is the next window's audio, through the flow and the
    /// decoder when asked for. Joined, the items equal `synthesize_ids`' audio within
    /// 1e-3 per sample (the same random draws, the same length).
    pub fn synthesize_ids_chunked(
        &self,
        ids: &[i64],
        scales: Scales,
        seed: u64,
        windows: DecodeWindows,
    ) -> Result<ChunkedSynthesis<'_>, PiperError> {
        let latent = on_this_thread(|| {
            self.model.latent(
                ids,
                0,
                scales.noise_scale,
                scales.length_scale,
                scales.noise_w,
                seed,
            )
        })?;
        Ok(ChunkedSynthesis::new(
            &self.model,
            latent,
            windows,
            model::Context {
                decoder: self.decode_context,
                flow: self.flow_context,
            },
        ))
    }

    /// [`PiperVoice::synthesize_sentence`], handing each decode window's
    /// audio to `emit` as soon as it is ready. `emit` returning
    /// `ControlFlow::Break` stops the synthesis (nothing more is computed),
    /// and is what this returns then.
    pub fn synthesize_sentence_chunked(
        &self,
        text: &str,
        scales: Scales,
        seed: u64,
        windows: DecodeWindows,
        mut emit: impl FnMut(Vec<f32>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, PiperError> {
        for (i, sentence) in self.phonemize(text)?.iter().enumerate() {
            let chunks = self.synthesize_ids_chunked(
                &sentence.ids,
                scales,
                seed.wrapping_add(i as u64),
                windows,
            )?;
            for chunk in chunks {
                if emit(chunk?).is_break() {
                    return Ok(ControlFlow::Break(()));
                }
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// Phonemizes `text` and synthesizes each of its sentences in turn,
    /// returning their audio back to back. Sentence `i` uses seed `seed + i`.
    /// Text that phonemizes to nothing gives empty audio.
    pub fn synthesize_sentence(
        &self,
        text: &str,
        scales: Scales,
        seed: u64,
    ) -> Result<Vec<f32>, PiperError> {
        let mut audio = Vec::new();
        for (i, sentence) in self.phonemize(text)?.iter().enumerate() {
            audio.extend(self.synthesize_ids(
                &sentence.ids,
                scales,
                seed.wrapping_add(i as u64),
            )?);
        }
        Ok(audio)
    }
}

/// Runs `f` with every rayon job it starts kept on the calling thread. The
/// text encoder and the duration predictor are chains of hundreds of small
/// ops (a 192-channel matmul over a sentence's ids, a norm, an activation);
/// split over threads, each op waits for the slowest thread. On 2 shared
/// cores (load 5) 357 ids took 446 ms of encoder and 560 ms of durations
/// with 2 threads against 185 and 50 ms with `RAYON_NUM_THREADS=1`; with
/// this scope the 2-thread figures varied from 115 / 40 to 474 / 352 ms
/// between runs, so part of that cost is the machine, not the split (see
/// docs/benchmarks.md). The flow and decoder run bigger blocks and keep the
/// shared pool.
fn on_this_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .use_current_thread()
        .build()
    {
        Ok(pool) => pool.install(f),
        // Already a worker of another pool: run as we are.
        Err(_) => f(),
    }
}

/// The decode context the voice uses by default: three quarters of the
/// decoder's receptive field, whose outermost taps carry little weight. For
/// en_US-joe-medium (field 13) the largest difference from whole-sentence
/// decoding over the reference cases, by context, was 2.5e-3 at 8 frames,
/// 5.6e-4 at 9, 3.9e-6 at 10 (this default) and 0 at 13
/// (`tests/reference.rs`, `decode_context_sweep`).
fn default_decode_context(receptive_field: usize) -> usize {
    receptive_field - receptive_field / 4
}

/// The flow context the voice uses by default: three quarters of its
/// receptive field, as for the decoder. For en_US-joe-medium (field 32) the
/// largest difference from whole-sentence audio over the reference cases,
/// by flow context, was 1.4e-2 at 16 frames, 4.4e-4 at 20, 2.3e-5 at 24
/// (this default) and 3.6e-6 (the decoder's share) at 28 and 32
/// (`tests/reference.rs`, `flow_context_sweep`).
fn default_flow_context(receptive_field: usize) -> usize {
    receptive_field - receptive_field / 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voice_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<PiperVoice>();
    }

    #[test]
    fn missing_model_is_a_typed_error() {
        let err = PiperVoice::load(Path::new("/nonexistent/voice.onnx"));
        assert!(matches!(err, Err(PiperError::NotFound(_))), "{err:?}");
    }

    #[test]
    fn missing_config_is_an_io_error() -> Result<(), Box<dyn std::error::Error>> {
        let dir =
            std::env::temp_dir().join(format!("voxwire-piper-noconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let model = dir.join("voice.onnx");
        std::fs::write(&model, b"")?;
        let err = PiperVoice::load(&model);
        std::fs::remove_dir_all(&dir)?;
        assert!(matches!(err, Err(PiperError::Io { .. })), "{err:?}");
        Ok(())
    }

    #[test]
    fn garbage_model_is_a_format_error() -> Result<(), Box<dyn std::error::Error>> {
        let dir =
            std::env::temp_dir().join(format!("voxwire-piper-garbage-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let model = dir.join("voice.onnx");
        std::fs::write(&model, b"\xff\xff\xff not protobuf")?;
        std::fs::write(
            dir.join("voice.onnx.json"),
            r#"{"audio":{"sample_rate":22050},"espeak":{"voice":"en-us"},
                "phoneme_id_map":{"^":[1],"_":[0],"$":[2]}}"#,
        )?;
        let err = PiperVoice::load(&dir);
        std::fs::remove_dir_all(&dir)?;
        assert!(
            matches!(
                err,
                Err(PiperError::Format(_) | PiperError::MissingWeight(_))
            ),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn empty_directory_is_not_found() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("voxwire-piper-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let err = PiperVoice::load(&dir);
        std::fs::remove_dir_all(&dir)?;
        assert!(matches!(err, Err(PiperError::NotFound(_))), "{err:?}");
        Ok(())
    }
}
