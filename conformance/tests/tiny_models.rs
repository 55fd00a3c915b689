//! Tiny random models against Hugging Face transformers (fixtures/tiny): logits
//! at every prompt position (NMSE <= 1e-6 in f32) and 32 greedy tokens.

use tessera_conformance::{fixtures_dir, greedy, prompt_logits, runner, worst_row_nmse, Golden};
use tessera_core::model;
use tessera_core::DType;

// Link the backends under test.
use tessera_cpu as _;

const DEVICE: &str = "cpu";

fn check(name: &str) {
    let dir = fixtures_dir().join("tiny").join(name);
    let golden = Golden::load(&dir.join("golden.safetensors")).expect("golden file");
    let source = model::open(dir.to_str().expect("utf-8 path")).expect("open fixture model");
    let vocab = source.config.vocab_size;
    let prompt = golden.ids("input_ids");
    let want_greedy = golden.ids("greedy");
    // Block size 16 with 11 prompt tokens + 32 steps exercises several blocks.
    let mut r = runner(&source, DEVICE, DType::F32, prompt.len() + want_greedy.len() + 1, 16).expect("runner");

    let logits = prompt_logits(&mut r, &prompt).expect("forward");
    let (_, want) = golden.floats("logits");
    let (row, err) = worst_row_nmse(want, &logits, vocab);
    eprintln!("{name}: worst logits NMSE {err:.3e} at position {row}");
    assert!(err <= 1e-6, "{name}: logits NMSE {err:.3e} at position {row} > 1e-6");

    let got = greedy(&mut r, &prompt, want_greedy.len()).expect("greedy");
    assert_eq!(got, want_greedy, "{name}: greedy tokens differ from transformers");
}

#[test]
fn llama_gqa_with_llama3_rope_scaling_matches_transformers() {
    check("llama_gqa_rope3");
}

#[test]
fn qwen2_with_qkv_bias_matches_transformers() {
    check("qwen2_bias");
}

#[test]
fn smollm_shape_with_tied_embeddings_matches_transformers() {
    check("smollm_tied");
}

#[test]
fn block_size_does_not_change_the_logits() {
    let dir = fixtures_dir().join("tiny").join("llama_gqa_rope3");
    let golden = Golden::load(&dir.join("golden.safetensors")).expect("golden file");
    let source = model::open(dir.to_str().expect("utf-8 path")).expect("open");
    let prompt = golden.ids("input_ids");
    let mut a = runner(&source, DEVICE, DType::F32, 64, 8).expect("runner");
    let mut b = runner(&source, DEVICE, DType::F32, 64, 32).expect("runner");
    let (la, lb) = (prompt_logits(&mut a, &prompt).expect("a"), prompt_logits(&mut b, &prompt).expect("b"));
    let (_, err) = worst_row_nmse(&la, &lb, source.config.vocab_size);
    assert!(err <= 1e-10, "block size 8 vs 32: NMSE {err:.3e}");
}
