//! Text <-> token ids, through Hugging Face `tokenizers` (a `tokenizer.json`
//! from a HF folder, or one built from GGUF metadata), plus streaming decode.

use crate::{Error, Result};
use std::path::Path;

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Prepend `bos` to prompts (Llama 2/3 do; SmolLM and Qwen do not).
    pub add_bos: bool,
    pub bos: Option<u32>,
    /// Tokens that end generation.
    pub eos: Vec<u32>,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(Self::wrap(inner))
    }

    pub fn from_json(json: &str) -> Result<Self> {
        let inner: tokenizers::Tokenizer = json
            .parse()
            .map_err(|e| Error::Tokenizer(format!("invalid tokenizer.json: {e}")))?;
        Ok(Self::wrap(inner))
    }

    fn wrap(mut inner: tokenizers::Tokenizer) -> Self {
        // tessera adds BOS itself (once, where the model wants it); a post-processor
        // from tokenizer.json would add it a second time after a chat template.
        inner.with_post_processor(None::<tokenizers::PostProcessorWrapper>);
        Tokenizer {
            inner,
            add_bos: false,
            bos: None,
            eos: vec![],
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Encodes text; special tokens written in the text (`<|im_start|>`) become
    /// their ids. `bos` is prepended when the model wants it and `with_bos` is set.
    pub fn encode(&self, text: &str, with_bos: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if with_bos && self.add_bos {
            if let Some(b) = self.bos {
                if enc.get_ids().first() != Some(&b) {
                    ids.push(b);
                }
            }
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }
}

/// Turns a stream of ids into text pieces without splitting a character: a piece
/// is released only once the bytes decoded so far form complete characters.
pub struct StreamDecoder {
    ids: Vec<u32>,
    /// Text already released.
    emitted: usize,
    /// Ids before this index are settled and only kept as decoding context.
    prefix: usize,
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamDecoder {
    pub fn new() -> Self {
        StreamDecoder {
            ids: vec![],
            emitted: 0,
            prefix: 0,
        }
    }

    /// Adds one id and returns the new text it completes, if any.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = tok.decode(&self.ids[self.prefix..], true)?;
        if text.ends_with('\u{FFFD}') || text.len() <= self.emitted {
            return Ok(None);
        }
        let piece = text[self.emitted..].to_string();
        // Keep a few ids of context so that decoders which drop a leading space
        // (SentencePiece) still see it; settle everything before them.
        if self.ids.len() - self.prefix > 8 {
            let keep_from = self.ids.len() - 4;
            let settled = tok.decode(&self.ids[keep_from..], true)?;
            self.prefix = keep_from;
            self.emitted = settled.len();
        } else {
            self.emitted = text.len();
        }
        Ok(Some(piece))
    }
}
