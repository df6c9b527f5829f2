use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::whisper::{self as whisper, model::Whisper, Config};
use tokenizers::Tokenizer;

use crate::decoder::CachedDecoder;
use crate::error::WhisperError;
use crate::loops::{self, LoopDetector, SentenceRepeats};
use crate::mel::MelFilterbank;
use crate::timestamps::{Segment, Segmented, TimestampTokens, SECONDS_PER_STEP};

/// Samples in one 30 s encoder window.
const WINDOW_SAMPLES: usize = whisper::N_SAMPLES;
/// A window whose phrases all closed this long before its end, with sound
/// after them, is decoded again from the last phrase's end: the model
/// sometimes stops early on long audio, and those words would be lost.
const RESUME_AFTER_SECONDS: f64 = 1.0;
/// Whisper's limit on sampled tokens per window (half the text context).
const MAX_WINDOW_TOKENS: usize = 224;
/// No speaker produces more than this many tokens per second of audio
/// (timestamps included, two per phrase); a decode that runs past it is
/// looping, so it is stopped early and judged failed, rather than spending
/// 224 decoder steps on a repetition.
const MAX_TOKENS_PER_SECOND: f64 = 10.0;
/// Windows quieter than this RMS hold no speech; decoding them only invites
/// hallucinated text.
const SILENT_WINDOW_RMS: f32 = 1e-4;
/// Whisper's thresholds: a decode more repetitive than this (zlib ratio) or
/// less likely than this (mean log-probability per token) is retried hotter.
const COMPRESSION_RATIO_THRESHOLD: f64 = whisper::COMPRESSION_RATIO_THRESHOLD;
const LOGPROB_THRESHOLD: f64 = whisper::LOGPROB_THRESHOLD;
const NO_SPEECH_THRESHOLD: f64 = whisper::NO_SPEECH_THRESHOLD;
const DEFAULT_SEED: u64 = 0x5EED_CAFE_F00D_0001;

/// The result of transcribing a stretch of audio.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcription {
    /// The words, trimmed; empty when nothing was said.
    pub text: String,
    /// Mean log-probability of the chosen tokens (end-of-text included), over
    /// all windows; 0 when nothing was decoded.
    pub avg_logprob: f32,
    /// `exp(avg_logprob)`: the geometric-mean token probability, 0..1. It is 0
    /// when the text is empty.
    pub confidence: f32,
    /// The model's probability that the (first) window holds no speech.
    pub no_speech_prob: f32,
    /// The highest sampling temperature any window needed (0 = greedy held).
    pub temperature: f32,
    /// How many encoder windows the audio took (at most 30 s each).
    pub windows: usize,
    /// The phrases, as the model's timestamps delimit them; `text` is their
    /// texts joined by spaces.
    pub segments: Vec<TranscriptSegment>,
}

/// One phrase of a [`Transcription`], with where it lies in the audio.
#[derive(Debug, Clone, PartialEq)]
pub struct TranscriptSegment {
    /// Milliseconds from the start of the transcribed audio.
    pub start_ms: i64,
    pub end_ms: i64,
    pub text: String,
}

impl Transcription {
    fn empty() -> Self {
        Transcription {
            text: String::new(),
            avg_logprob: 0.0,
            confidence: 0.0,
            no_speech_prob: 1.0,
            temperature: 0.0,
            windows: 0,
            segments: Vec::new(),
        }
    }
}

/// How hard [`WhisperModel`] tries on one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effort {
    /// Greedy only: cheap, for partial results that are overwritten anyway.
    Greedy,
    /// Greedy, then sampling at rising temperatures while the decode looks
    /// degenerate, as Whisper does.
    Fallback,
}

/// Whisper loaded once. Cloning is cheap (the weights are shared), and each
/// call works on its own copy of the decoder state, so one model serves many
/// threads at once.
#[derive(Clone)]
pub struct WhisperModel {
    inner: Arc<Inner>,
    seed: u64,
    context: AudioContext,
}

/// How much audio the encoder sees per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioContext {
    /// Always 30 s, the audio padded with silence: what Whisper was trained
    /// on, and the most accurate.
    Full,
    /// The audio plus about a second of silence, but at least `min_frames`
    /// mel frames (100 per second). The encoder's cost grows faster than
    /// linearly with its input, so short utterances encode several times
    /// faster, at some cost in accuracy.
    Trimmed { min_frames: usize },
}

impl AudioContext {
    /// Trimmed, but never under 6 s. Measured on 14 espeak-ng sentences
    /// (stt_bench's scripts plus "Yes." and "Thank you very much."): WER 0.066
    /// with a 6, 8 or 10 s floor (13 s, 15 s, 18 s of compute), against 0.112
    /// in 40 s with the full context. With no floor, one-word clips broke down
    /// ("Yes." became "S", a short phrase came out three times), so a floor
    /// stays.
    pub const DEFAULT: AudioContext = AudioContext::Trimmed { min_frames: 600 };
}

impl Default for AudioContext {
    fn default() -> Self {
        AudioContext::DEFAULT
    }
}

/// The encoder context a trimmed decode that looped is retried with, in mel
/// frames (10 s), before the full 30 s.
const LOOP_RETRY_MIN_FRAMES: usize = 1_000;

/// Silence after the audio in a trimmed context: Whisper expects to see
/// the speech end before its input does.
const TRIM_MARGIN_FRAMES: usize = 100;

struct Inner {
    /// Only its encoder runs; decoding uses `decoder`, which caches
    /// self-attention (candle's decoder re-runs the whole transcript per token).
    whisper: Whisper,
    decoder: CachedDecoder,
    config: Config,
    tokenizer: Tokenizer,
    mel: MelFilterbank,
    device: Device,
    /// Token ids never sampled: the config's suppress_tokens, plus every
    /// special token but end-of-text and the timestamps (a special token
    /// mid-transcript is meaningless).
    suppressed: Vec<usize>,
    /// Extra ids suppressed on the first sampled token only: a leading blank or
    /// an immediate end-of-text.
    begin_suppressed: Vec<usize>,
    sot: u32,
    eot: u32,
    timestamps: TimestampTokens,
    no_speech: usize,
}

impl std::fmt::Debug for WhisperModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperModel")
            .field("config", &self.inner.config)
            .field("seed", &self.seed)
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, WhisperError> {
    std::fs::read(path).map_err(|source| WhisperError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn token_id(tokenizer: &Tokenizer, token: &'static str) -> Result<u32, WhisperError> {
    tokenizer
        .token_to_id(token)
        .ok_or(WhisperError::MissingToken(token))
}

impl WhisperModel {
    /// Loads `config.json`, `tokenizer.json`, `model.safetensors` (any float
    /// dtype; computed in f32) and `mel_filters_80.f32le` (or
    /// `mel_filters_128.f32le` for 128-bin models) from `dir`.
    pub fn load(dir: &Path) -> Result<WhisperModel, WhisperError> {
        let device = Device::Cpu;
        let config_path = dir.join("config.json");
        let raw: serde_json::Value =
            serde_json::from_slice(&read(&config_path)?).map_err(|e| WhisperError::Format {
                path: config_path.clone(),
                message: e.to_string(),
            })?;
        let config: Config =
            serde_json::from_value(raw.clone()).map_err(|e| WhisperError::Format {
                path: config_path.clone(),
                message: e.to_string(),
            })?;
        let begin_suppress: Vec<usize> = raw
            .get("begin_suppress_tokens")
            .and_then(|v| serde_json::from_value::<Vec<usize>>(v.clone()).ok())
            .unwrap_or_default();

        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| WhisperError::Tokenizer {
                path: tokenizer_path.clone(),
                message: e.to_string(),
            })?;
        let sot = token_id(&tokenizer, whisper::SOT_TOKEN)?;
        let eot = token_id(&tokenizer, whisper::EOT_TOKEN)?;
        let no_timestamps = token_id(&tokenizer, whisper::NO_TIMESTAMPS_TOKEN)?;
        let no_speech = whisper::NO_SPEECH_TOKENS
            .iter()
            .find_map(|t| tokenizer.token_to_id(t))
            .ok_or(WhisperError::MissingToken(whisper::NO_SPEECH_TOKENS[0]))?;

        let filters_path = dir.join(format!("mel_filters_{}.f32le", config.num_mel_bins));
        let bytes = read(&filters_path)?;
        let expected = config.num_mel_bins * (whisper::N_FFT / 2 + 1);
        if bytes.len() != expected * 4 {
            return Err(WhisperError::Format {
                path: filters_path,
                message: format!("{} bytes, expected {expected} f32 values", bytes.len()),
            });
        }
        let mel_filters: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let mel =
            MelFilterbank::new(mel_filters, config.num_mel_bins).ok_or(WhisperError::Format {
                path: filters_path,
                message: format!(
                    "mel filters for {} bins of a {}-point FFT expected",
                    config.num_mel_bins,
                    whisper::N_FFT
                ),
            })?;

        let weights_path = dir.join("model.safetensors");
        // Buffered, not memory-mapped: mapping a file is unsafe code, and the
        // weights are converted to f32 on load anyway.
        let vb = VarBuilder::from_buffered_safetensors(read(&weights_path)?, DType::F32, &device)?;
        let whisper = Whisper::load(&vb, config.clone())?;
        let decoder = CachedDecoder::load(vb.pp("model.decoder"), &config)?;

        let vocab = config.vocab_size;
        let mut suppressed: Vec<usize> = config
            .suppress_tokens
            .iter()
            .map(|&t| t as usize)
            .filter(|&t| t < vocab)
            .collect();
        // Special tokens sit between end-of-text and the timestamps in every
        // Whisper vocabulary; the timestamps follow <|notimestamps|>.
        let timestamps = TimestampTokens {
            begin: tokenizer
                .token_to_id("<|0.00|>")
                .unwrap_or(no_timestamps + 1),
            eot,
        };
        suppressed.extend((eot as usize + 1)..(timestamps.begin as usize).min(vocab));
        suppressed.sort_unstable();
        suppressed.dedup();
        let begin_suppressed = begin_suppress.into_iter().filter(|&t| t < vocab).collect();

        Ok(WhisperModel {
            inner: Arc::new(Inner {
                whisper,
                decoder,
                config,
                tokenizer,
                mel,
                device,
                suppressed,
                begin_suppressed,
                sot,
                eot,
                timestamps,
                no_speech: no_speech as usize,
            }),
            seed: DEFAULT_SEED,
            context: AudioContext::DEFAULT,
        })
    }

    /// The same model with another seed for temperature-fallback sampling.
    /// Transcripts are reproducible for a given seed.
    pub fn with_sampling_seed(mut self, seed: u64) -> WhisperModel {
        self.seed = seed;
        self
    }

    /// The same model with another encoder context; see [`AudioContext`].
    pub fn with_audio_context(mut self, context: AudioContext) -> WhisperModel {
        self.context = context;
        self
    }

    /// Transcribes 16 kHz mono PCM of any length. Audio longer than 30 s is
    /// cut into windows at the quietest point near each window's end, so no
    /// word is split between two windows. Blocks for the whole computation.
    pub fn transcribe(&self, pcm_16k: &[f32]) -> Result<Transcription, WhisperError> {
        self.transcribe_with(pcm_16k, Effort::Fallback)
    }

    pub(crate) fn transcribe_with(
        &self,
        pcm: &[f32],
        effort: Effort,
    ) -> Result<Transcription, WhisperError> {
        if let Some(index) = pcm.iter().position(|s| !s.is_finite()) {
            return Err(WhisperError::NonFiniteAudio { index });
        }
        let mut whisper = self.inner.whisper.clone();
        let mut rng = SplitMix64(self.seed);
        let mut previous_letters = String::new();
        let mut segments: Vec<TranscriptSegment> = Vec::new();
        let mut logprob_sum = 0.0f64;
        let mut token_count = 0usize;
        let mut first_no_speech: Option<f64> = None;
        let mut max_temperature = 0.0f64;
        let mut windows = 0usize;

        // Windows follow the words, as Whisper's own long-form decoding does:
        // each starts where the last phrase the previous one finished ended,
        // so a phrase cut by a window's edge is decoded whole in the next.
        let mut seek = 0usize;
        while seek < pcm.len() {
            let end = (seek + WINDOW_SAMPLES).min(pcm.len());
            let window = &pcm[seek..end];
            let window_start = seek;
            windows += 1;
            if rms(window) < SILENT_WINDOW_RMS {
                seek = end;
                continue;
            }
            let decoded = self.decode_window(&mut whisper, window, effort, &mut rng)?;
            first_no_speech.get_or_insert(decoded.no_speech_prob);
            max_temperature = max_temperature.max(decoded.temperature);
            if decoded.is_silence() {
                seek = end;
                continue;
            }
            logprob_sum += decoded.sum_logprob;
            token_count += decoded.tokens.len() + 1;

            let window_seconds = window.len() as f64 / f64::from(crate::SAMPLE_RATE);
            let last_window = end == pcm.len();
            let Segmented { complete, open } = self.inner.timestamps.segments(&decoded.tokens);
            let mut taken = complete;
            let mut consumed = taken.last().map_or(window_seconds, |s| s.end);
            match open {
                // A phrase still open when the decode stopped: where it ends
                // is unknown, so the next window decodes it again, unless
                // nothing else would make progress.
                Some(open) if last_window || taken.is_empty() => {
                    taken.push(Segment {
                        end: window_seconds,
                        ..open
                    });
                    consumed = window_seconds;
                }
                Some(_) => {}
                None => {
                    // Every phrase closed. Speech well after the last one
                    // means the model stopped early: decode that part again.
                    let rest = seconds_to_samples(consumed).min(window.len());
                    let unheard = window_seconds - consumed;
                    if unheard < RESUME_AFTER_SECONDS || rms(&window[rest..]) < SILENT_WINDOW_RMS {
                        consumed = window_seconds;
                    }
                }
            }
            for segment in taken {
                let text = self.detokenize(&segment.tokens)?;
                let letters = loops::letters(&text);
                let seconds = segment.end.min(window_seconds) - segment.start;
                if loops::is_invented(&letters, seconds, &previous_letters) {
                    continue;
                }
                previous_letters = letters;
                let offset = window_start as f64 / f64::from(crate::SAMPLE_RATE);
                segments.push(TranscriptSegment {
                    start_ms: ((offset + segment.start) * 1000.0).round() as i64,
                    end_ms: ((offset + segment.end.min(window_seconds)) * 1000.0).round() as i64,
                    text,
                });
            }
            // Always forward: at least one timestamp step.
            let advance = seconds_to_samples(consumed).max(seconds_to_samples(SECONDS_PER_STEP));
            seek = (seek + advance).min(end.max(seek + 1));
        }

        let mut result = Transcription::empty();
        result.windows = windows;
        result.temperature = max_temperature as f32;
        result.no_speech_prob = first_no_speech.unwrap_or(1.0) as f32;
        result.text = segments
            .iter()
            .map(|s| s.text.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        result.segments = segments;
        if token_count > 0 {
            let avg = logprob_sum / token_count as f64;
            result.avg_logprob = avg as f32;
            if !result.text.is_empty() {
                result.confidence = avg.exp().clamp(0.0, 1.0) as f32;
            }
        }
        Ok(result)
    }

    fn detokenize(&self, tokens: &[u32]) -> Result<String, WhisperError> {
        let text = self
            .inner
            .tokenizer
            .decode(tokens, true)
            .map_err(|e| WhisperError::Detokenize(e.to_string()))?;
        Ok(text.trim().to_string())
    }

    /// Log-mel features of one window (at most 30 s), padded with the mel of
    /// silence: to the full 3000 frames the model was trained on, or, with a
    /// trimmed context, to the audio plus a margin of silence.
    fn mel(&self, window: &[f32], context: AudioContext) -> Result<Tensor, WhisperError> {
        let inner = &self.inner;
        let n_mels = inner.config.num_mel_bins;
        let wanted = match context {
            AudioContext::Full => whisper::N_FRAMES,
            AudioContext::Trimmed { min_frames } => {
                let audio_frames = window.len().div_ceil(whisper::HOP_LENGTH);
                // Rounded up to whole seconds so the margin is never tiny,
                // and even because the encoder's second convolution halves it.
                (audio_frames + TRIM_MARGIN_FRAMES)
                    .div_ceil(100)
                    .saturating_mul(100)
                    .clamp(min_frames.clamp(100, whisper::N_FRAMES), whisper::N_FRAMES)
            }
        };
        let mel = inner.mel.log_mel(window, wanted);
        Ok(Tensor::from_vec(mel, (1, n_mels, wanted), &inner.device)?)
    }

    fn decode_window(
        &self,
        whisper: &mut Whisper,
        window: &[f32],
        effort: Effort,
        rng: &mut SplitMix64,
    ) -> Result<WindowDecode, WhisperError> {
        let decoded = self.decode_window_in(whisper, window, effort, rng, self.context)?;
        // A trimmed context is cheaper but, on a word or two of audio, can
        // send the decoder round a loop Whisper's own checks let through
        // ("No. No. No. No." for "No."); the 30 s context it was trained on
        // does not. Such a decode is redone there: rare, and right.
        // Partials are overwritten within a second: their copy is cut (see
        // decode_tokens), and a wider retry would only hold up the final.
        let (AudioContext::Trimmed { min_frames }, Effort::Fallback) = (self.context, effort)
        else {
            return Ok(decoded);
        };
        if !decoded.repeated_sentence && !loops::repeats_a_sentence(&decoded.text) {
            return Ok(decoded);
        }
        // A 10 s floor was enough on the one-word clips measured (0.6 s of
        // audio) at a third of the full context's cost; the full context is
        // the last resort.
        if min_frames < LOOP_RETRY_MIN_FRAMES {
            let retry = AudioContext::Trimmed {
                min_frames: LOOP_RETRY_MIN_FRAMES,
            };
            let decoded = self.decode_window_in(whisper, window, effort, rng, retry)?;
            if !decoded.repeated_sentence && !loops::repeats_a_sentence(&decoded.text) {
                return Ok(decoded);
            }
        }
        self.decode_window_in(whisper, window, effort, rng, AudioContext::Full)
    }

    fn decode_window_in(
        &self,
        whisper: &mut Whisper,
        window: &[f32],
        effort: Effort,
        rng: &mut SplitMix64,
        context: AudioContext,
    ) -> Result<WindowDecode, WhisperError> {
        let mel = self.mel(window, context)?;
        let features = whisper.encoder.forward(&mel, true)?;
        let seconds = window.len() as f64 / f64::from(crate::SAMPLE_RATE);
        let max_tokens =
            ((seconds * MAX_TOKENS_PER_SECOND).ceil() as usize).clamp(32, MAX_WINDOW_TOKENS);
        let temperatures: &[f64] = match effort {
            Effort::Greedy => &whisper::TEMPERATURES[..1],
            Effort::Fallback => &whisper::TEMPERATURES,
        };
        let mut best: Option<WindowDecode> = None;
        for &temperature in temperatures {
            let decoded = self.decode_tokens(&features, seconds, temperature, max_tokens, rng)?;
            if !decoded.needs_fallback() || decoded.is_silence() {
                return Ok(decoded);
            }
            best = Some(match best {
                Some(previous) if !decoded.is_better_than(&previous) => previous,
                _ => decoded,
            });
        }
        // Every temperature failed: keep the least bad attempt rather than
        // nothing, as Whisper does (its repetitions are collapsed later).
        best.ok_or(WhisperError::Model(candle_core::Error::Msg(
            "no temperature to decode with".into(),
        )))
    }

    fn decode_tokens(
        &self,
        features: &Tensor,
        audio_seconds: f64,
        temperature: f64,
        max_tokens: usize,
        rng: &mut SplitMix64,
    ) -> Result<WindowDecode, WhisperError> {
        let inner = &self.inner;
        let decoder = &inner.decoder;
        let prompt = [inner.sot];
        let mut tokens: Vec<u32> = prompt.to_vec();
        let mut state = decoder.start(features)?;
        let mut sum_logprob = 0.0f64;
        let mut no_speech_prob = 0.0f64;
        let mut finished = false;
        let mut looped = false;
        let mut repeated_sentence = false;
        let mut detector = LoopDetector::default();
        let mut sentences = SentenceRepeats::default();
        // Where each word token sits in `tokens`, to cut a loop off.
        let mut word_positions: Vec<usize> = Vec::new();
        let max_tokens = max_tokens.min(decoder.max_len().saturating_sub(prompt.len()));
        for step in 0..max_tokens {
            // The prompt goes in whole on the first step; after that the cache
            // holds everything but the newest token.
            let fed = if step == 0 { prompt.len() } else { 1 };
            let hidden = decoder.forward(&tokens[tokens.len() - fed..], &mut state)?;
            let mut logits = decoder.logits(&hidden, fed - 1)?;
            if step == 0 {
                // Whisper reads the no-speech probability at the
                // start-of-transcript position (the last of a one-token
                // prompt: no second pass over the vocabulary).
                let other;
                let at_sot = if fed == 1 {
                    &logits
                } else {
                    other = decoder.logits(&hidden, 0)?;
                    &other
                };
                no_speech_prob = at_sot
                    .get(inner.no_speech)
                    .map_or(0.0, |&l| (f64::from(l) - log_sum_exp(at_sot)).exp());
            }
            for &id in &inner.suppressed {
                logits[id] = f32::NEG_INFINITY;
            }
            if step == 0 {
                for &id in &inner.begin_suppressed {
                    logits[id] = f32::NEG_INFINITY;
                }
            }
            inner
                .timestamps
                .constrain(&tokens[prompt.len()..], audio_seconds, &mut logits);
            let next = if temperature > 0.0 {
                sample(&logits, temperature, rng)
            } else {
                argmax(&logits)
            };
            sum_logprob += f64::from(logits[next]) - log_sum_exp(&logits);
            if next as u32 == inner.eot {
                finished = true;
                break;
            }
            tokens.push(next as u32);
            if inner.timestamps.is_timestamp(next as u32) {
                continue;
            }
            word_positions.push(tokens.len() - 1);
            let piece = inner.tokenizer.id_to_token(next as u32).unwrap_or_default();
            if let Some(keep) = detector.push(&piece) {
                // Stop at once: every further step would only extend the
                // loop. The copy goes; what came before it stays.
                tokens.truncate(word_positions[keep]);
                looped = true;
                finished = true;
                break;
            }
            if let Some(copy_starts) = sentences.push(tokens.len() - 1, &piece) {
                // The same for a short sentence said again ("No. No."),
                // under the letter count the detector above needs.
                tokens.truncate(copy_starts);
                looped = true;
                repeated_sentence = true;
                finished = true;
                break;
            }
        }
        let tokens = tokens.split_off(prompt.len());
        let words: Vec<u32> = tokens
            .iter()
            .copied()
            .filter(|&t| !inner.timestamps.is_timestamp(t))
            .collect();
        let text = self.detokenize(&words)?;
        Ok(WindowDecode {
            avg_logprob: sum_logprob / (tokens.len() + 1) as f64,
            compression_ratio: compression_ratio(&text),
            text,
            loops: looped,
            repeated_sentence,
            tokens,
            sum_logprob,
            no_speech_prob,
            temperature,
            finished,
        })
    }
}

/// One window's decode at one temperature.
struct WindowDecode {
    /// Words and timestamps, without the prompt or end-of-text.
    tokens: Vec<u32>,
    /// The words of `tokens`, as text.
    text: String,
    sum_logprob: f64,
    avg_logprob: f64,
    no_speech_prob: f64,
    compression_ratio: f64,
    /// Whether the decode was stopped because it started saying again what
    /// it had just said (the copy is cut off `tokens`).
    loops: bool,
    /// Whether the cut was a short sentence said again ("No. No."): the
    /// trimmed context's failure on a word or two of audio, which a wider
    /// context decodes right. A long phrase's loop, cut, leaves the right
    /// words and is kept.
    repeated_sentence: bool,
    temperature: f64,
    /// Whether end-of-text was reached, or a loop cut, before the token
    /// limit.
    finished: bool,
}

impl WindowDecode {
    /// A loop cut short is not a failure in itself: the text before the copy
    /// is what was said, and retrying hotter costs five more decodes that
    /// mostly loop again. What is left must still pass Whisper's checks.
    fn needs_fallback(&self) -> bool {
        !self.finished
            || self.compression_ratio > COMPRESSION_RATIO_THRESHOLD
            || self.avg_logprob < LOGPROB_THRESHOLD
    }

    /// Whisper's no-speech rule: the model both expects silence and is unsure
    /// of what it wrote.
    fn is_silence(&self) -> bool {
        self.no_speech_prob > NO_SPEECH_THRESHOLD && self.avg_logprob < LOGPROB_THRESHOLD
    }

    /// Orders failed attempts: finished, not looping and not repetitive
    /// first, then by likelihood.
    fn is_better_than(&self, other: &WindowDecode) -> bool {
        let rank = |d: &WindowDecode| {
            (
                d.finished,
                !d.loops,
                d.compression_ratio <= COMPRESSION_RATIO_THRESHOLD,
            )
        };
        match rank(self).cmp(&rank(other)) {
            std::cmp::Ordering::Equal => self.avg_logprob > other.avg_logprob,
            order => order.is_gt(),
        }
    }
}

fn seconds_to_samples(seconds: f64) -> usize {
    (seconds.max(0.0) * f64::from(crate::SAMPLE_RATE)).round() as usize
}

/// `ln(sum(exp(logits)))`, summed in f64: the normaliser of a log-softmax,
/// without writing out the whole distribution.
pub(crate) fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return f64::from(max);
    }
    let max = f64::from(max);
    let sum: f64 = logits.iter().map(|&l| (f64::from(l) - max).exp()).sum();
    sum.ln() + max
}

#[cfg(test)]
pub(crate) fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
        .max(-1e30);
    let max = f64::from(max);
    let sum: f64 = logits.iter().map(|&l| (f64::from(l) - max).exp()).sum();
    let log_sum = sum.ln() + max;
    logits.iter().map(|&l| f64::from(l) - log_sum).collect()
}

fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(best, best_value), (i, &v)| {
            if v > best_value {
                (i, v)
            } else {
                (best, best_value)
            }
        })
        .0
}

fn sample(logits: &[f32], temperature: f64, rng: &mut SplitMix64) -> usize {
    let max = f64::from(logits[argmax(logits)]);
    let weights: Vec<f64> = logits
        .iter()
        .map(|&l| ((f64::from(l) - max) / temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut target = rng.next_f64() * total;
    for (i, w) in weights.iter().enumerate() {
        target -= w;
        if target <= 0.0 && *w > 0.0 {
            return i;
        }
    }
    argmax(logits)
}

/// Whisper's repetition measure: text bytes over zlib-compressed bytes.
fn compression_ratio(text: &str) -> f64 {
    if text.is_empty() {
        return 0.0;
    }
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    let compressed = encoder
        .write_all(text.as_bytes())
        .and_then(|()| encoder.finish());
    match compressed {
        Ok(bytes) if !bytes.is_empty() => text.len() as f64 / bytes.len() as f64,
        // Writing to a Vec cannot fail; if it somehow did, call it unrepetitive.
        _ => 0.0,
    }
}

pub(crate) fn rms(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    let energy: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (energy / samples.len() as f64).sqrt() as f32
}

/// The sample index in `from..to` at the centre of the quietest 200 ms stretch,
/// measured in 10 ms steps: where a cut is least likely to split a word.
pub(crate) fn quietest_point(pcm: &[f32], from: usize, to: usize) -> usize {
    const STEP: usize = 160;
    const SPAN: usize = 20;
    let to = to.min(pcm.len());
    let from = from.min(to);
    let energies: Vec<f64> = pcm[from..to]
        .chunks(STEP)
        .map(|c| c.iter().map(|&s| f64::from(s) * f64::from(s)).sum())
        .collect();
    if energies.len() <= SPAN {
        return from + (to - from) / 2;
    }
    let mut sum: f64 = energies[..SPAN].iter().sum();
    let mut best = (sum, 0usize);
    for i in SPAN..energies.len() {
        sum += energies[i] - energies[i - SPAN];
        // `<=` prefers the latest quiet stretch, keeping windows long.
        if sum <= best.0 {
            best = (sum, i + 1 - SPAN);
        }
    }
    (from + (best.1 + SPAN / 2) * STEP).min(to)
}

/// A small seedable generator for temperature sampling; statistical quality
/// beyond uniformity does not matter here, reproducibility does.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quietest_point_finds_the_gap() {
        let mut pcm = vec![0.5f32; 16_000];
        for s in &mut pcm[9_000..11_000] {
            *s = 0.0;
        }
        let cut = quietest_point(&pcm, 0, pcm.len());
        assert!((9_000..11_000).contains(&cut), "cut at {cut}");
    }

    #[test]
    fn compression_ratio_flags_repetition() {
        let varied = "The quick brown fox jumps over the lazy dog near the river bank.";
        let looped = "and then I said ".repeat(12);
        assert!(compression_ratio(varied) < COMPRESSION_RATIO_THRESHOLD);
        assert!(
            compression_ratio(&looped) > COMPRESSION_RATIO_THRESHOLD,
            "{}",
            compression_ratio(&looped)
        );
    }

    #[test]
    fn sampling_is_reproducible_and_follows_the_distribution() {
        let logits = [0.0f32, 2.0, f32::NEG_INFINITY];
        let mut a = SplitMix64(7);
        let mut b = SplitMix64(7);
        let draws: Vec<usize> = (0..1000).map(|_| sample(&logits, 1.0, &mut a)).collect();
        let again: Vec<usize> = (0..1000).map(|_| sample(&logits, 1.0, &mut b)).collect();
        assert_eq!(draws, again);
        assert!(!draws.contains(&2));
        let ones = draws.iter().filter(|&&d| d == 1).count();
        // p(1) = e^2 / (1 + e^2) ≈ 0.88.
        assert!((830..930).contains(&ones), "{ones}");
    }

    #[test]
    fn log_softmax_normalises() {
        let lp = log_softmax(&[1.0, 2.0, 3.0, f32::NEG_INFINITY]);
        let total: f64 = lp.iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-9);
        assert_eq!(lp[3], f64::NEG_INFINITY);
    }
}
