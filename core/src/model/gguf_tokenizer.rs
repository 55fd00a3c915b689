//! Rebuilds a Hugging Face `tokenizer.json` from the tokenizer a GGUF file
//! embeds (`tokenizer.ggml.*`), so one tokenizer implementation serves both
//! kinds of model folders.
//!
//! * `gpt2` (byte-level BPE): vocabulary, merges, added tokens, and the
//!   pre-tokenizer named by `tokenizer.ggml.pre`.
//! * `llama` (SentencePiece): a byte-fallback BPE whose merges are derived from
//!   the pieces' scores, as `transformers`' converter derives them.

use super::gguf::{GgufFile, MetaValue};
use crate::{Error, Result};
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
mod token_type {
    pub const UNKNOWN: i64 = 2;
    pub const CONTROL: i64 = 3;
    pub const USER_DEFINED: i64 = 4;
}

const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `tokenizer.ggml.pre` values this module knows, for messages.
const KNOWN_PRE: &str =
    "default, gpt-2, smollm, llama3, llama-v3, llama-bpe, smaug-bpe, falcon3, qwen2, deepseek-r1-qwen";

/// The chat template the file carries (`tokenizer.chat_template`).
pub fn chat_template_from_gguf(file: &GgufFile) -> Option<String> {
    file.meta_str("tokenizer.chat_template").map(str::to_owned)
}

/// Whether a BOS token should be put in front of prompts
/// (`tokenizer.ggml.add_bos_token`; when absent, true for SentencePiece models only, as in llama.cpp).
pub fn add_bos_from_gguf(file: &GgufFile) -> bool {
    file.meta_bool("tokenizer.ggml.add_bos_token")
        .unwrap_or_else(|| file.meta_str("tokenizer.ggml.model") == Some("llama"))
}

/// The tokenizer as a `tokenizers::Tokenizer`.
pub fn tokenizer_from_gguf(file: &GgufFile) -> Result<tokenizers::Tokenizer> {
    let json = tokenizer_json_from_gguf(file)?;
    json.parse::<tokenizers::Tokenizer>().map_err(|e| {
        Error::model(
            file.path.display(),
            format!("the tokenizer rebuilt from GGUF metadata does not load: {e}"),
        )
    })
}

/// A `tokenizer.json` document equivalent to the GGUF file's tokenizer.
pub fn tokenizer_json_from_gguf(file: &GgufFile) -> Result<String> {
    let bad = |m: String| Error::model(file.path.display(), m);
    let model = file.meta_str("tokenizer.ggml.model").ok_or_else(|| {
        bad("GGUF metadata has no tokenizer.ggml.model; the file carries no tokenizer".into())
    })?;
    let tokens = file
        .meta_str_array("tokenizer.ggml.tokens")
        .ok_or_else(|| bad("GGUF metadata has no tokenizer.ggml.tokens array of strings".into()))?;
    if tokens.is_empty() {
        return Err(bad("tokenizer.ggml.tokens is empty".into()));
    }
    if u32::try_from(tokens.len()).is_err() {
        return Err(bad(format!("{} tokens are too many", tokens.len())));
    }
    let types: Vec<i64> = match file.meta_array("tokenizer.ggml.token_type") {
        None => vec![1; tokens.len()],
        Some(a) => {
            let t: Option<Vec<i64>> = a.iter().map(MetaValue::as_i64).collect();
            match t {
                Some(t) if t.len() == tokens.len() => t,
                _ => {
                    return Err(bad(format!(
                        "tokenizer.ggml.token_type is not an array of {} integers, one per token",
                        tokens.len()
                    )))
                }
            }
        }
    };

    // The first spelling of a token wins, as in the vocabulary maps of both libraries.
    let mut vocab = Map::new();
    let mut ids: HashMap<&str, u32> = HashMap::with_capacity(tokens.len());
    let mut duplicates = 0usize;
    for (i, t) in tokens.iter().enumerate() {
        if ids.contains_key(t) {
            duplicates += 1;
            continue;
        }
        ids.insert(t, i as u32);
        vocab.insert((*t).to_owned(), json!(i));
    }
    if duplicates > 0 {
        tracing::warn!(
            "{}: {duplicates} tokens of the GGUF vocabulary repeat an earlier token and cannot be produced",
            file.path.display()
        );
    }

    let mut added = vec![];
    for (i, (t, &ty)) in tokens.iter().zip(&types).enumerate() {
        let special = matches!(ty, token_type::CONTROL | token_type::UNKNOWN);
        if (special || ty == token_type::USER_DEFINED) && ids.get(t) == Some(&(i as u32)) {
            added.push(json!({
                "id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": special,
            }));
        }
    }

    let doc = match model {
        "gpt2" => gpt2_tokenizer(file, &ids, vocab, added)?,
        "llama" => spm_tokenizer(file, &tokens, &types, &ids, vocab, added)?,
        other => {
            return Err(bad(format!(
                "GGUF tokenizer model {other:?} is not supported (supported: gpt2 byte-level BPE, llama SentencePiece)"
            )))
        }
    };
    serde_json::to_string(&doc)
        .map_err(|e| bad(format!("cannot serialize the rebuilt tokenizer: {e}")))
}

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split_then_byte_level(regex: &str) -> Value {
    json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
        byte_level(false),
    ]})
}

fn gpt2_tokenizer(
    file: &GgufFile,
    ids: &HashMap<&str, u32>,
    vocab: Map<String, Value>,
    added: Vec<Value>,
) -> Result<Value> {
    let bad = |m: String| Error::model(file.path.display(), m);
    let pre_name = file.meta_str("tokenizer.ggml.pre").unwrap_or("default");
    let (pre_tokenizer, normalizer, ignore_merges) = match pre_name {
        "default" | "gpt-2" | "gpt2" => (byte_level(true), Value::Null, false),
        "smollm" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]}),
            Value::Null,
            false,
        ),
        "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" | "falcon3" => {
            (split_then_byte_level(LLAMA3_REGEX), Value::Null, true)
        }
        "qwen2" | "deepseek-r1-qwen" => (split_then_byte_level(QWEN2_REGEX), json!({"type": "NFC"}), false),
        other => {
            return Err(bad(format!(
                "GGUF pre-tokenizer {other:?} (tokenizer.ggml.pre) is not supported yet (supported: {KNOWN_PRE})"
            )))
        }
    };

    let merge_list = file
        .meta_str_array("tokenizer.ggml.merges")
        .ok_or_else(|| {
            bad("a gpt2 GGUF tokenizer needs tokenizer.ggml.merges, an array of strings".into())
        })?;
    let mut merges = Vec::with_capacity(merge_list.len());
    for (i, m) in merge_list.iter().enumerate() {
        // As llama.cpp splits them: at the first space that is not the first character.
        let cut = m
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == ' ')
            .map(|(p, _)| p);
        let (a, b) = match cut {
            Some(p) => (&m[..p], &m[p + 1..]),
            None => {
                return Err(bad(format!(
                    "merge {i} ({m:?}) is not two tokens separated by a space"
                )))
            }
        };
        if !ids.contains_key(a)
            || !ids.contains_key(b)
            || !ids.contains_key(format!("{a}{b}").as_str())
        {
            return Err(bad(format!(
                "merge {i} ({m:?}) names a token that is not in the vocabulary"
            )));
        }
        merges.push(json!([a, b]));
    }

    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
            "vocab": vocab, "merges": merges,
        },
    }))
}

fn spm_tokenizer(
    file: &GgufFile,
    tokens: &[&str],
    types: &[i64],
    ids: &HashMap<&str, u32>,
    vocab: Map<String, Value>,
    added: Vec<Value>,
) -> Result<Value> {
    let bad = |m: String| Error::model(file.path.display(), m);
    let scores: Vec<f32> = match file.meta_array("tokenizer.ggml.scores") {
        Some(a) => a
            .iter()
            .map(|v| v.as_f64().map(|x| x as f32))
            .collect::<Option<Vec<f32>>>()
            .filter(|s| s.len() == tokens.len())
            .ok_or_else(|| {
                bad(format!(
                    "tokenizer.ggml.scores is not an array of {} floats",
                    tokens.len()
                ))
            })?,
        None => {
            return Err(bad(
                "a SentencePiece (llama) GGUF tokenizer needs tokenizer.ggml.scores".into(),
            ))
        }
    };

    // transformers' `generate_merges`: every split of every piece into two pieces
    // of the vocabulary is a merge, ranked by the merged piece's score (highest
    // first), then by the lengths of the left and right halves (longest first);
    // ties keep vocabulary order, then the ids of the halves.
    let mut merges: Vec<(f32, usize, usize, u32, u32)> = vec![];
    for (i, piece) in tokens.iter().enumerate() {
        if ids.get(piece) != Some(&(i as u32)) {
            continue;
        }
        let mut local: Vec<(u32, u32, usize)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(p, _)| Some((*ids.get(&piece[..p])?, *ids.get(&piece[p..])?, p)))
            .collect();
        local.sort_unstable();
        merges.extend(local.into_iter().map(|(l, r, p)| {
            let (left, right) = piece.split_at(p);
            (scores[i], left.chars().count(), right.chars().count(), l, r)
        }));
    }
    // A stable sort, descending (NaN scores last).
    merges.sort_by(|a, b| {
        let score =
            b.0.partial_cmp(&a.0)
                .unwrap_or_else(|| a.0.is_nan().cmp(&b.0.is_nan()));
        score.then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2))
    });
    let merges: Vec<Value> = merges
        .iter()
        .map(|&(_, _, _, l, r)| json!([tokens[l as usize], tokens[r as usize]]))
        .collect();

    let unk = file
        .meta_u64("tokenizer.ggml.unknown_token_id")
        .and_then(|i| usize::try_from(i).ok())
        .filter(|&i| i < tokens.len())
        .or_else(|| types.iter().position(|&t| t == token_type::UNKNOWN))
        .map(|i| tokens[i]);
    let add_space_prefix = file
        .meta_bool("tokenizer.ggml.add_space_prefix")
        .unwrap_or(true);
    let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
    let normalizer = if add_space_prefix {
        json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"}, replace]})
    } else {
        replace
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_space_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }

    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::super::gguf::testutil::build;
    use super::*;

    fn strs(v: &[&str]) -> MetaValue {
        MetaValue::Array(v.iter().map(|s| MetaValue::String((*s).into())).collect())
    }

    fn tok(file: &GgufFile) -> tokenizers::Tokenizer {
        tokenizer_from_gguf(file).unwrap()
    }

    fn ids(t: &tokenizers::Tokenizer, s: &str) -> Vec<u32> {
        t.encode(s, false).unwrap().get_ids().to_vec()
    }

    fn gpt2_file(pre: &str) -> GgufFile {
        // Byte-level: space is "Ġ".
        let tokens = [
            "<|eos|>", "<|user|>", "a", "b", "c", "1", "2", "Ġ", "ab", "Ġab", "abc", "12",
        ];
        let types = [3, 4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1];
        let meta = [
            ("tokenizer.ggml.model", MetaValue::String("gpt2".into())),
            ("tokenizer.ggml.pre", MetaValue::String(pre.into())),
            ("tokenizer.ggml.tokens", strs(&tokens)),
            (
                "tokenizer.ggml.token_type",
                MetaValue::Array(types.iter().map(|&t| MetaValue::I32(t)).collect()),
            ),
            (
                "tokenizer.ggml.merges",
                strs(&["a b", "Ġ ab", "ab c", "1 2"]),
            ),
            (
                "tokenizer.chat_template",
                MetaValue::String("{{ x }}".into()),
            ),
        ];
        GgufFile::from_bytes("tok.gguf", build(&meta, &[])).unwrap()
    }

    #[test]
    fn gpt2_byte_level_bpe() {
        let f = gpt2_file("gpt-2");
        let t = tok(&f);
        assert_eq!(ids(&t, "abc ab"), vec![10, 9]);
        assert_eq!(ids(&t, "<|eos|>ab<|user|>"), vec![0, 8, 1]);
        assert_eq!(ids(&t, "12"), vec![11]);
        assert_eq!(t.decode(&[10, 9], false).unwrap(), "abc ab");
        assert_eq!(t.decode(&[0, 10], true).unwrap(), "abc");
        assert_eq!(chat_template_from_gguf(&f).as_deref(), Some("{{ x }}"));
        assert!(!add_bos_from_gguf(&f));
        // smollm splits digits one by one.
        assert_eq!(ids(&tok(&gpt2_file("smollm")), "12"), vec![5, 6]);
        // llama3 keeps up to three digits together.
        assert_eq!(ids(&tok(&gpt2_file("llama-bpe")), "12 ab"), vec![11, 9]);
        let e = tokenizer_json_from_gguf(&gpt2_file("mystery"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("mystery"), "{e}");
    }

    #[test]
    fn bad_merges_are_errors() {
        let meta = [
            ("tokenizer.ggml.model", MetaValue::String("gpt2".into())),
            ("tokenizer.ggml.tokens", strs(&["a", "b"])),
            ("tokenizer.ggml.merges", strs(&["a b"])),
        ];
        let f = GgufFile::from_bytes("tok.gguf", build(&meta, &[])).unwrap();
        let e = tokenizer_json_from_gguf(&f).unwrap_err().to_string();
        assert!(e.contains("merge 0"), "{e}");
        let meta = [
            ("tokenizer.ggml.model", MetaValue::String("bert".into())),
            ("tokenizer.ggml.tokens", strs(&["a"])),
        ];
        let f = GgufFile::from_bytes("tok.gguf", build(&meta, &[])).unwrap();
        assert!(tokenizer_json_from_gguf(&f)
            .unwrap_err()
            .to_string()
            .contains("bert"));
    }

    #[test]
    fn sentencepiece_with_byte_fallback() {
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        let base = tokens.len();
        for p in ["▁", "h", "e", "l", "o", "▁h", "ll", "▁he", "llo", "▁hello"] {
            tokens.push(p.into());
        }
        let mut types = vec![2, 3, 3];
        types.extend(std::iter::repeat_n(6, 256));
        types.extend(std::iter::repeat_n(1, 10));
        let mut scores = vec![0f32; base];
        // Longer pieces score higher, so they merge first.
        scores.extend([-10., -10., -10., -10., -10., -5., -4., -3., -2., -1.]);
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let meta = [
            ("tokenizer.ggml.model", MetaValue::String("llama".into())),
            ("tokenizer.ggml.tokens", strs(&refs)),
            (
                "tokenizer.ggml.token_type",
                MetaValue::Array(types.iter().map(|&t| MetaValue::I32(t)).collect()),
            ),
            (
                "tokenizer.ggml.scores",
                MetaValue::Array(scores.iter().map(|&s| MetaValue::F32(s)).collect()),
            ),
            ("tokenizer.ggml.unknown_token_id", MetaValue::U32(0)),
        ];
        let f = GgufFile::from_bytes("spm.gguf", build(&meta, &[])).unwrap();
        assert!(add_bos_from_gguf(&f));
        let t = tok(&f);
        let hello = refs.iter().position(|&p| p == "▁hello").unwrap() as u32;
        assert_eq!(ids(&t, "hello"), vec![hello]);
        // "x" is not a piece: it falls back to its byte <0x78>.
        assert_eq!(ids(&t, "hello x"), vec![hello, base as u32, 3 + 0x78]);
        assert_eq!(ids(&t, "<s>hello"), vec![1, hello]);
        assert_eq!(
            t.decode(&[hello, base as u32, 3 + 0x78], false).unwrap(),
            "hello x"
        );
    }

    /// The default model, when it is on disk: `TESSERA_DEFAULT_MODEL` or the cache path.
    fn default_model() -> Option<GgufFile> {
        let p = std::env::var_os("TESSERA_DEFAULT_MODEL")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| {
                    std::path::PathBuf::from(h)
                        .join(".cache/tessera/models/SmolLM2-135M-Instruct.Q4_1.gguf")
                })
            })?;
        if !p.is_file() {
            eprintln!("skipping: default model {} is not on disk", p.display());
            return None;
        }
        Some(GgufFile::open(&p).unwrap())
    }

    #[test]
    fn default_model_tokenizer() {
        let Some(f) = default_model() else { return };
        let t = tok(&f);
        assert_eq!(t.get_vocab_size(true), 49152);
        assert_eq!(t.token_to_id("<|endoftext|>"), Some(0));
        assert_eq!(t.token_to_id("<|im_start|>"), Some(1));
        assert_eq!(t.token_to_id("<|im_end|>"), Some(2));
        assert!(!add_bos_from_gguf(&f));
        assert!(chat_template_from_gguf(&f).is_some_and(|c| c.contains("<|im_start|>")));

        let hello = t.encode("Hello, world!", false).unwrap();
        assert_eq!(hello.get_tokens(), ["Hello", ",", "Ġworld", "!"]);
        assert_eq!(t.decode(hello.get_ids(), false).unwrap(), "Hello, world!");

        let q = t.encode("What is 12345?", false).unwrap();
        let toks = q.get_tokens();
        for d in ["1", "2", "3", "4", "5"] {
            assert!(
                toks.iter().any(|x| x == d),
                "digit {d} is not a token of its own: {toks:?}"
            );
        }
        assert!(toks.iter().all(|x| !x.contains("12")), "{toks:?}");
        assert_eq!(t.decode(q.get_ids(), false).unwrap(), "What is 12345?");

        let chat = ids(&t, "<|im_start|>user\nHi<|im_end|>");
        assert_eq!(chat[0], 1);
        assert_eq!(t.id_to_token(chat[1]).as_deref(), Some("user"));
        assert_eq!(*chat.last().unwrap(), 2);
        assert_eq!(t.decode(&chat, true).unwrap(), "user\nHi");
    }
}
