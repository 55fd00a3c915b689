//! A Hugging Face folder with its tokenizer and chat template: the tiny Llama
//! fixture plus a `tokenizer.json` (built from the default model's GGUF
//! metadata) and a `tokenizer_config.json` carrying a chat template.

use tessera_core::model::chat_template::ChatMessage;
use tessera_core::model::{self, default_model_path, gguf, gguf_tokenizer};

#[test]
fn hf_folder_brings_tokenizer_and_chat_template() {
    let dir = std::env::temp_dir().join(format!("tessera-hf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let fixture = tessera_conformance::fixtures_dir().join("tiny/llama_gqa_rope3");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(f), dir.join(f)).expect("copy fixture");
    }
    let path = default_model_path();
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-default-model.sh first",
        path.display()
    );
    let file = gguf::GgufFile::open(&path).expect("gguf");
    std::fs::write(
        dir.join("tokenizer.json"),
        gguf_tokenizer::tokenizer_json_from_gguf(&file).expect("json"),
    )
    .expect("write");
    let config = serde_json::json!({
        "add_bos_token": true,
        "bos_token": {"content": "<|im_start|>"},
        "eos_token": "<|im_end|>",
        "chat_template": [
            {"name": "tool_use", "template": "unused"},
            {"name": "default", "template": "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content | trim }}{{ eos_token }}{% endfor %}"}
        ]
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).expect("write");

    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"eos_token_id": [2, 7]}"#,
    )
    .expect("write");

    let src = model::open(dir.to_str().expect("utf-8")).expect("open folder");
    // config.json names EOS 2; generation_config.json adds an end-of-turn token.
    assert_eq!(
        src.tokenizer.as_ref().map(|t| t.eos.clone()),
        Some(vec![2, 7])
    );
    let tok = src.tokenizer.as_ref().expect("tokenizer.json was found");
    let tmpl = src.chat_template.as_ref().expect("chat template was found");
    let text = tmpl
        .render(
            &[ChatMessage {
                role: "user".into(),
                content: " hi ".into(),
            }],
            false,
        )
        .expect("render");
    assert_eq!(text, "<|im_start|>[user] hi<|im_end|>");
    // The config's bos_token_id (1) is prepended once, because add_bos_token is set.
    assert_eq!(
        tok.encode("Hello, world!", true).expect("encode"),
        vec![1, 19556, 28, 905, 17]
    );
    // A rendered template that already starts with the BOS token does not get a second one.
    let ids = tok.encode(&text, true).expect("encode");
    assert!(ids[0] == 1 && ids[1] != 1, "{ids:?}");
    std::fs::remove_dir_all(&dir).ok();
}
