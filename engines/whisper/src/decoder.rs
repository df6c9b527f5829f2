//! Whisper's text decoder with a self-attention key/value cache.
//!
//! candle-transformers' decoder caches only the cross-attention keys and
//! values, so every step re-runs the whole transcript so far: a window's cost
//! grows with the square of its length, which hurts long windows and the
//! repeated decodes of temperature fallback. This decoder reads the same
//! weights and keeps each layer's self-attention keys and values, so a step
//! runs one token.

use std::sync::Arc;

use candle_core::{Module, Tensor, D};
use candle_nn::{embedding, layer_norm, linear, linear_no_bias, Embedding, LayerNorm, Linear};
use candle_nn::{LayerNormConfig, VarBuilder};
use candle_transformers::models::whisper::Config;

#[derive(Debug, Clone)]
struct Attention {
    query: Linear,
    key: Linear,
    value: Linear,
    out: Linear,
}

impl Attention {
    fn load(n_state: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Attention {
            query: linear(n_state, n_state, vb.pp("q_proj"))?,
            key: linear_no_bias(n_state, n_state, vb.pp("k_proj"))?,
            value: linear(n_state, n_state, vb.pp("v_proj"))?,
            out: linear(n_state, n_state, vb.pp("out_proj"))?,
        })
    }
}

#[derive(Debug, Clone)]
struct Block {
    attn: Attention,
    attn_ln: LayerNorm,
    cross: Attention,
    cross_ln: LayerNorm,
    mlp_ln: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

#[derive(Debug, Clone)]
pub(crate) struct CachedDecoder {
    token_embedding: Embedding,
    positional: Tensor,
    blocks: Vec<Block>,
    ln: LayerNorm,
    n_head: usize,
    /// The token embeddings again, row after row, for [`CachedDecoder::logits`].
    embedding_rows: Arc<Vec<f32>>,
}

/// Eight running sums, so the compiler keeps them in vector registers.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0.0f32; 8];
    let (a8, a_rest) = a.split_at(a.len() - a.len() % 8);
    let (b8, b_rest) = b.split_at(b.len() - b.len() % 8);
    for (x, y) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for ((sum, x), y) in sums.iter_mut().zip(x).zip(y) {
            *sum += x * y;
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    sums.iter().sum::<f32>() + tail
}

/// One decode's state: per layer, the self-attention keys and values so far
/// (heads split, `(1, heads, tokens, head_dim)`) and the cross-attention keys
/// and values of the audio.
pub(crate) struct DecodeState {
    self_kv: Vec<Option<(Tensor, Tensor)>>,
    cross_kv: Vec<(Tensor, Tensor)>,
    len: usize,
}

fn norm(n_state: usize, vb: VarBuilder) -> candle_core::Result<LayerNorm> {
    layer_norm(n_state, LayerNormConfig::from(1e-5), vb)
}

impl CachedDecoder {
    /// Loads from the checkpoint's `model.decoder` weights.
    pub(crate) fn load(vb: VarBuilder, config: &Config) -> candle_core::Result<Self> {
        let n_state = config.d_model;
        let blocks = (0..config.decoder_layers)
            .map(|i| {
                let vb = vb.pp(format!("layers.{i}"));
                Ok(Block {
                    attn: Attention::load(n_state, vb.pp("self_attn"))?,
                    attn_ln: norm(n_state, vb.pp("self_attn_layer_norm"))?,
                    cross: Attention::load(n_state, vb.pp("encoder_attn"))?,
                    cross_ln: norm(n_state, vb.pp("encoder_attn_layer_norm"))?,
                    mlp_ln: norm(n_state, vb.pp("final_layer_norm"))?,
                    fc1: linear(n_state, 4 * n_state, vb.pp("fc1"))?,
                    fc2: linear(4 * n_state, n_state, vb.pp("fc2"))?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let token_embedding = embedding(config.vocab_size, n_state, vb.pp("embed_tokens"))?;
        let embedding_rows = Arc::new(token_embedding.embeddings().flatten_all()?.to_vec1()?);
        Ok(CachedDecoder {
            embedding_rows,
            token_embedding,
            positional: vb.get(
                (config.max_target_positions, n_state),
                "embed_positions.weight",
            )?,
            blocks,
            ln: norm(n_state, vb.pp("layer_norm"))?,
            n_head: config.decoder_attention_heads,
        })
    }

    /// Most tokens (prompt included) one decode can hold.
    pub(crate) fn max_len(&self) -> usize {
        self.positional.dim(0).unwrap_or(0)
    }

    /// Splits `(1, n, state)` into heads: `(1, heads, n, head_dim)`.
    fn heads(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n, state) = x.dims3()?;
        x.reshape((b, n, self.n_head, state / self.n_head))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// A fresh state for the encoder output `audio` (`(1, frames, state)`).
    pub(crate) fn start(&self, audio: &Tensor) -> candle_core::Result<DecodeState> {
        let cross_kv = self
            .blocks
            .iter()
            .map(|b| {
                let k = self.heads(&b.cross.key.forward(audio)?)?;
                let v = self.heads(&b.cross.value.forward(audio)?)?;
                Ok((k, v))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(DecodeState {
            self_kv: vec![None; self.blocks.len()],
            cross_kv,
            len: 0,
        })
    }

    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let head_dim = q.dim(D::Minus1)?;
        let scale = (head_dim as f64).powf(-0.5);
        let mut scores = (q.matmul(&k.t()?)? * scale)?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        // (1, heads, n, head_dim) back to (1, n, state).
        weights.matmul(v)?.transpose(1, 2)?.flatten_from(2)
    }

    /// Runs `tokens` (the next ones after what `state` holds) and returns
    /// their final hidden states, `(1, tokens, state)`.
    pub(crate) fn forward(
        &self,
        tokens: &[u32],
        state: &mut DecodeState,
    ) -> candle_core::Result<Tensor> {
        let device = self.positional.device();
        let n = tokens.len();
        let offset = state.len;
        let ids = Tensor::new(tokens, device)?.unsqueeze(0)?;
        let mut x = self
            .token_embedding
            .forward(&ids)?
            .broadcast_add(&self.positional.narrow(0, offset, n)?)?;
        // New tokens see everything cached and those before them; a single
        // token sees everything, so it needs no mask.
        let mask = if n > 1 {
            let values: Vec<f32> = (0..n)
                .flat_map(|i| {
                    (0..offset + n).map(move |j| {
                        if j > offset + i {
                            f32::NEG_INFINITY
                        } else {
                            0.0
                        }
                    })
                })
                .collect();
            Some(Tensor::from_vec(values, (n, offset + n), device)?)
        } else {
            None
        };
        for (i, block) in self.blocks.iter().enumerate() {
            let h = block.attn_ln.forward(&x)?;
            let q = self.heads(&block.attn.query.forward(&h)?)?;
            let k_new = self.heads(&block.attn.key.forward(&h)?)?;
            let v_new = self.heads(&block.attn.value.forward(&h)?)?;
            let (k, v) = match state.self_kv[i].take() {
                Some((k, v)) => (
                    Tensor::cat(&[&k, &k_new], 2)?,
                    Tensor::cat(&[&v, &v_new], 2)?,
                ),
                None => (k_new, v_new),
            };
            let attended = self.attend(&q, &k, &v, mask.as_ref())?;
            state.self_kv[i] = Some((k, v));
            x = (&x + block.attn.out.forward(&attended)?)?;

            let h = block.cross_ln.forward(&x)?;
            let q = self.heads(&block.cross.query.forward(&h)?)?;
            let (k, v) = &state.cross_kv[i];
            let attended = self.attend(&q, k, v, None)?;
            x = (&x + block.cross.out.forward(&attended)?)?;

            let h = block.mlp_ln.forward(&x)?;
            x = (&x + block.fc2.forward(&block.fc1.forward(&h)?.gelu()?)?)?;
        }
        state.len += n;
        self.ln.forward(&x)
    }

    /// Logits over the vocabulary for one position's hidden state
    /// (`(1, n, state)`, position `index`): the embedding matrix, tied.
    ///
    /// One dot product per vocabulary row, the rows shared out over rayon's
    /// pool (no thread started per step). A matrix-vector product over
    /// 51,864 rows is bound by reading the matrix (80 MB in f32 for tiny.en),
    /// and candle's matmul, built for matrices, took three times as long on
    /// it: 12 ms of a 15 ms step.
    pub(crate) fn logits(&self, hidden: &Tensor, index: usize) -> candle_core::Result<Vec<f32>> {
        use rayon::prelude::*;
        let h: Vec<f32> = hidden.narrow(1, index, 1)?.flatten_all()?.to_vec1()?;
        let state = h.len().max(1);
        Ok(self
            .embedding_rows
            .par_chunks_exact(state)
            .with_min_len(1_024)
            .map(|row| dot(row, &h))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, IndexOp};
    use candle_transformers::models::whisper::model::Whisper;

    /// The cached decoder must compute what candle's uncached one does, token
    /// for token.
    #[test]
    fn matches_the_uncached_decoder() {
        let Some(dir) = voxwire_testkit::model_dir(voxwire_testkit::WHISPER_TINY_EN) else {
            return;
        };
        let config: Config =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).expect("config.json"))
                .expect("a whisper config");
        let weights = std::fs::read(dir.join("model.safetensors")).expect("weights");
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)
            .expect("safetensors");
        let mut reference = Whisper::load(&vb, config.clone()).expect("candle's whisper");
        let cached = CachedDecoder::load(vb.pp("model.decoder"), &config).expect("decoder");

        // Any audio will do: a chirp, so the features are not degenerate.
        let mel: Vec<f32> = (0..80 * 1000)
            .map(|i| ((i % 997) as f32 * 0.37).sin() * 0.5)
            .collect();
        let mel = Tensor::from_vec(mel, (1, 80, 1000), &Device::Cpu).expect("mel");
        let features = reference.encoder.forward(&mel, true).expect("encoder");

        // sot, notimestamps, " The", " quick", " brown".
        let tokens: [u32; 5] = [50257, 50362, 383, 2068, 7586];
        let input = Tensor::new(&tokens[..], &Device::Cpu)
            .and_then(|t| t.unsqueeze(0))
            .expect("tokens");
        let hidden = reference
            .decoder
            .forward(&input, &features, true)
            .expect("reference decoder");
        let expected: Vec<Vec<f32>> = (0..tokens.len())
            .map(|p| {
                reference
                    .decoder
                    .final_linear(&hidden.i((.., p..p + 1)).expect("position"))
                    .and_then(|l| l.flatten_all())
                    .and_then(|l| l.to_vec1())
                    .expect("logits")
            })
            .collect();

        let mut state = cached.start(&features).expect("state");
        let prompt = cached.forward(&tokens[..2], &mut state).expect("prompt");
        let mut got = vec![
            cached.logits(&prompt, 0).expect("logits"),
            cached.logits(&prompt, 1).expect("logits"),
        ];
        for &token in &tokens[2..] {
            let hidden = cached.forward(&[token], &mut state).expect("step");
            got.push(cached.logits(&hidden, 0).expect("logits"));
        }
        for (position, (want, have)) in expected.iter().zip(&got).enumerate() {
            let diff = want
                .iter()
                .zip(have)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(diff < 1e-3, "position {position}: max difference {diff}");
        }
    }
}
