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
    let mut r = runner(
        &source,
        DEVICE,
        DType::F32,
        prompt.len() + want_greedy.len() + 1,
        16,
    )
    .expect("runner");

    let logits = prompt_logits(&mut r, &prompt).expect("forward");
    let (_, want) = golden.floats("logits");
    let (row, err) = worst_row_nmse(want, &logits, vocab);
    eprintln!("{name}: worst logits NMSE {err:.3e} at position {row}");
    assert!(
        err <= 1e-6,
        "{name}: logits NMSE {err:.3e} at position {row} > 1e-6"
    );

    let got = greedy(&mut r, &prompt, want_greedy.len()).expect("greedy");
    assert_eq!(
        got, want_greedy,
        "{name}: greedy tokens differ from transformers"
    );
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
    let (la, lb) = (
        prompt_logits(&mut a, &prompt).expect("a"),
        prompt_logits(&mut b, &prompt).expect("b"),
    );
    let (_, err) = worst_row_nmse(&la, &lb, source.config.vocab_size);
    assert!(err <= 1e-10, "block size 8 vs 32: NMSE {err:.3e}");
}

/// One ragged step mixing a decode (sequence A, 11 cached tokens + 1 new) and a
/// prefill (sequence B, 7 tokens, its blocks elsewhere in the cache) gives each
/// sequence the logits it gets alone.
#[test]
fn mixed_prefill_and_decode_batch_equals_each_alone() {
    use tessera_core::engine::StepBatch;
    let dir = fixtures_dir().join("tiny").join("qwen2_bias");
    let golden = Golden::load(&dir.join("golden.safetensors")).expect("golden file");
    let source = model::open(dir.to_str().expect("utf-8 path")).expect("open");
    let vocab = source.config.vocab_size;
    let a: Vec<u32> = golden.ids("input_ids");
    let next_a = golden.ids("greedy")[0];
    let b: Vec<u32> = a
        .iter()
        .rev()
        .take(7)
        .map(|&t| (t * 7 + 3) % vocab as u32)
        .collect();
    let bs = 4usize;

    // Alone: A's 12th token after its prompt, and B's last prefill token.
    let mut r = runner(&source, DEVICE, DType::F32, 64, bs).expect("runner");
    let mut a_full = a.clone();
    a_full.push(next_a);
    let alone_a = prompt_logits(&mut r, &a_full).expect("a");
    let alone_a = &alone_a[(a_full.len() - 1) * vocab..];
    let alone_b = prompt_logits(&mut r, &b).expect("b");
    let alone_b = &alone_b[(b.len() - 1) * vocab..];

    // Together: A's prompt cached in blocks 0..3, B in blocks 8.. (scattered on purpose).
    let mut r = runner(&source, DEVICE, DType::F32, 64, bs).expect("runner");
    let table_a: Vec<u32> = (0..a_full.len().div_ceil(bs) as u32).collect();
    let table_b: Vec<u32> = vec![9, 8];
    let slot = |table: &[u32], pos: usize| table[pos / bs] * bs as u32 + (pos % bs) as u32;
    let prefill_a = StepBatch {
        tokens: a.clone(),
        positions: (0..a.len() as u32).collect(),
        slots: (0..a.len()).map(|p| slot(&table_a, p)).collect(),
        query_start_loc: vec![0, a.len() as u32],
        seq_lens: vec![a.len() as u32],
        block_tables: vec![table_a.clone()],
        all_logits: false,
    };
    r.step(&prefill_a).expect("prefill a");
    let mut tokens = vec![next_a];
    tokens.extend(&b);
    let mut positions = vec![a.len() as u32];
    positions.extend(0..b.len() as u32);
    let mut slots = vec![slot(&table_a, a.len())];
    slots.extend((0..b.len()).map(|p| slot(&table_b, p)));
    let mixed = StepBatch {
        tokens,
        positions,
        slots,
        query_start_loc: vec![0, 1, 1 + b.len() as u32],
        seq_lens: vec![a_full.len() as u32, b.len() as u32],
        block_tables: vec![table_a, table_b],
        all_logits: false,
    };
    let together = r.step(&mixed).expect("mixed step").to_f32_vec();
    let err_a = tessera_conformance::nmse(alone_a, &together[..vocab]);
    let err_b = tessera_conformance::nmse(alone_b, &together[vocab..]);
    assert!(
        err_a <= 1e-10 && err_b <= 1e-10,
        "batched vs alone: A {err_a:.3e}, B {err_b:.3e}"
    );
}

#[test]
fn mistral_with_sliding_window_matches_transformers() {
    check("mistral_sliding");
}
