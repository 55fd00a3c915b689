//! The default model (SmolLM2-135M-Instruct, Q4_1 GGUF) against Hugging Face
//! transformers loading the same GGUF (fixtures/default): tokenizer ids, chat
//! template, and the chat answer naming Paris. Its logits and greedy tokens
//! are the models layer of the suite (`backend_suite!` in each backend crate).
//! The model comes from scripts/fetch-default-model.sh (the test script runs it).

use serde_json::Value;
use tessera_conformance::{fixtures_dir, runner};
use tessera_core::model::chat_template::ChatMessage;
use tessera_core::model::{self, default_model_path, ModelSource};
use tessera_core::DType;

use tessera_cpu as _;

const DEVICE: &str = "cpu";

fn source() -> ModelSource {
    let path = default_model_path();
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-default-model.sh first",
        path.display()
    );
    model::open("default").expect("open the default model")
}

fn prompts() -> Value {
    let text =
        std::fs::read_to_string(fixtures_dir().join("default/prompts.json")).expect("prompts.json");
    serde_json::from_str(&text).expect("prompts.json is JSON")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

#[test]
fn tokenizer_matches_transformers() {
    let src = source();
    let tok = src.tokenizer.as_ref().expect("GGUF tokenizer");
    let p = prompts();
    for case in p["tokenizer_cases"].as_array().expect("cases") {
        let text = case["text"].as_str().expect("text");
        assert_eq!(
            tok.encode(text, true).expect("encode"),
            ids(&case["ids"]),
            "ids of {text:?}"
        );
        assert_eq!(
            tok.decode(&ids(&case["ids"]), false).expect("decode"),
            text,
            "round trip of {text:?}"
        );
    }
    for prompt in p["prompts"].as_array().expect("prompts") {
        let text = prompt["text"].as_str().expect("text");
        assert_eq!(
            tok.encode(text, true).expect("encode"),
            ids(&prompt["input_ids"]),
            "ids of {text:?}"
        );
    }
}

#[test]
fn chat_template_matches_transformers() {
    let src = source();
    let tmpl = src
        .chat_template
        .as_ref()
        .expect("chat template in the GGUF");
    let p = prompts();
    let chat = p["prompts"]
        .as_array()
        .expect("prompts")
        .iter()
        .find(|x| x["chat"].as_bool() == Some(true))
        .expect("a chat prompt");
    let msg = ChatMessage {
        role: "user".into(),
        content: chat["user_message"].as_str().expect("message").into(),
    };
    assert_eq!(
        tmpl.render(&[msg], true).expect("render"),
        chat["text"].as_str().expect("text")
    );
}

#[test]
fn chat_answer_names_paris() {
    let src = source();
    let tok = src.tokenizer.as_ref().expect("tokenizer");
    let tmpl = src.chat_template.as_ref().expect("template");
    let text = tmpl
        .render(
            &[ChatMessage {
                role: "user".into(),
                content: "What is the capital of France?".into(),
            }],
            true,
        )
        .expect("render");
    let prompt = tok.encode(&text, true).expect("encode");
    for dtype in [DType::F32, DType::BF16] {
        let mut r = runner(&src, DEVICE, dtype, 128, 16).expect("runner");
        let opts = tessera_core::engine::GenerateOptions {
            max_tokens: 32,
            sampling: Default::default(),
            stop_ids: tok.eos.clone(),
            prefill_chunk: 512,
            lora_slot: None,
        };
        let mut out = vec![];
        let stats = tessera_core::engine::generate(&mut r, &prompt, &opts, |id| {
            out.push(id);
            Ok(true)
        })
        .expect("generate");
        let answer = tok.decode(&out, true).expect("decode");
        eprintln!("{dtype}: {answer:?}");
        assert!(
            answer.contains("Paris"),
            "{dtype} answer {answer:?} does not name Paris"
        );
        assert_eq!(
            stats.finish_reason, "stop",
            "the answer should end with <|im_end|>"
        );
    }
}

/// Streaming one id at a time never splits a character and ends with the whole
/// text, including a long run that moves the decoder's settled prefix many times.
#[test]
fn streaming_decode_never_splits_characters() {
    let src = source();
    let tok = src.tokenizer.as_ref().expect("tokenizer");
    let long = "naïve café – ünïcödé 😀 ".repeat(6);
    for text in ["naïve café – ünïcödé 😀", "Hello, world!", long.as_str()] {
        let all = tok.encode(text, false).expect("encode");
        let mut dec = tessera_core::model::tokenizer::StreamDecoder::new();
        let mut streamed = String::new();
        for &id in &all {
            if let Some(piece) = dec.push(tok, id).expect("push") {
                assert!(!piece.contains('\u{FFFD}'), "split character in {piece:?}");
                streamed.push_str(&piece);
            }
        }
        assert_eq!(streamed, text);
    }
}
