//! Engine behaviour on the cpu backend beyond the suite's engine layer (which
//! every backend runs through `backend_suite!`): n > 1 shares the prompt's
//! blocks; block accounting balances under random traffic; bad requests are
//! refused with a typed error while the engine keeps serving; priorities; the
//! async handle; the default model batched equals alone.

use std::collections::HashMap;
use tessera_conformance::invariants::{greedy, prompt, seeded};
use tessera_conformance::{fixtures_dir, runner};
use tessera_core::engine::{
    choice_seed, Engine, EngineConfig, FinishReason, RequestOutput, SamplingParams,
};
use tessera_core::model::{self, ModelSource};
use tessera_core::{DType, Error};

use tessera_cpu as _;

fn tiny() -> ModelSource {
    model::open(
        fixtures_dir()
            .join("tiny/qwen2_bias")
            .to_str()
            .expect("utf-8"),
    )
    .expect("fixture")
}

fn engine(
    src: &ModelSource,
    blocks: usize,
    block_size: usize,
    max_seqs: usize,
    max_tokens_step: usize,
) -> Engine {
    let r = runner(src, "cpu", DType::F32, blocks * block_size, block_size).expect("runner");
    let cfg = EngineConfig {
        max_num_seqs: max_seqs,
        max_num_batched_tokens: max_tokens_step,
        max_model_len: 2048,
        prefix_caching: true,
        lora: None,
    };
    Engine::new(r, None, cfg).expect("engine")
}

/// Runs to completion; tokens per (request, sample), checking each sample finishes once.
fn drain(e: &mut Engine) -> HashMap<(String, usize), Vec<u32>> {
    let mut out: HashMap<(String, usize), Vec<u32>> = HashMap::new();
    let mut finished: HashMap<(String, usize), usize> = HashMap::new();
    let mut guard = 0;
    while e.has_work() {
        guard += 1;
        assert!(guard < 100_000, "engine did not finish");
        for o in e.step().expect("step") {
            collect(&mut out, &mut finished, o);
        }
        e.check_blocks().expect("block invariants");
    }
    assert!(
        finished.values().all(|&n| n == 1),
        "a sample finished twice: {finished:?}"
    );
    assert_eq!(
        e.block_stats().used,
        0,
        "blocks still held after every request finished"
    );
    out
}

fn collect(
    out: &mut HashMap<(String, usize), Vec<u32>>,
    fin: &mut HashMap<(String, usize), usize>,
    o: RequestOutput,
) {
    let key = (o.request_id.clone(), o.index);
    out.entry(key.clone()).or_default().extend(&o.token_ids);
    if o.finish_reason.is_some() {
        *fin.entry(key).or_default() += 1;
    }
}

fn alone(src: &ModelSource, p: &[u32], params: SamplingParams) -> Vec<u32> {
    let mut e = engine(src, 64, 4, 8, 64);
    e.add_request("alone", p.to_vec(), params, 0).expect("add");
    drain(&mut e)
        .remove(&("alone".to_string(), 0))
        .expect("output")
}

#[test]
fn n_samples_share_prompt_blocks_and_match_single_runs() {
    let src = tiny();
    let p = prompt(99, 18); // 4 full blocks of 4 + a partial one
    let mut e = engine(&src, 64, 4, 8, 64);
    let params = SamplingParams {
        n: 2,
        ..seeded(6, 5)
    };
    e.add_request("pair", p.clone(), params, 0).expect("add");
    let mut out = HashMap::new();
    let mut fin = HashMap::new();
    for o in e.step().expect("prefill step") {
        collect(&mut out, &mut fin, o);
    }
    // After the prefill both samples exist and share all 5 prompt blocks.
    assert_eq!(
        e.block_stats().used,
        5,
        "forked samples share the prompt's blocks"
    );
    for o in e.step().expect("decode step") {
        collect(&mut out, &mut fin, o);
    }
    // Both wrote into the shared partial block: one copy-on-write, one more block.
    assert_eq!(e.block_stats().used, 6);
    while e.has_work() {
        for o in e.step().expect("step") {
            collect(&mut out, &mut fin, o);
        }
    }
    assert_eq!(e.block_stats().used, 0);
    let (a, b) = (
        &out[&("pair".to_string(), 0)],
        &out[&("pair".to_string(), 1)],
    );
    assert_eq!(
        a,
        &alone(&src, &p, seeded(6, 5)),
        "sample 0 = the request alone with its seed"
    );
    assert_eq!(
        b,
        &alone(&src, &p, seeded(6, choice_seed(5, 1))),
        "sample 1 = alone with its derived seed"
    );
    assert_ne!(a, b, "two samples at temperature 1 should differ");
}

#[test]
fn random_traffic_balances_the_blocks() {
    let src = tiny();
    let mut e = engine(&src, 24, 4, 6, 16);
    let mut rng = 12345u64;
    let mut next = |m: u64| {
        rng = tessera_core::model::random::splitmix64(rng);
        rng % m
    };
    let mut live: Vec<String> = vec![];
    let mut out = HashMap::new();
    let mut fin = HashMap::new();
    let mut submitted = 0;
    let mut expected_samples = HashMap::new();
    for round in 0..300 {
        match next(4) {
            0 | 1 if submitted < 80 => {
                let id = format!("q{submitted}");
                submitted += 1;
                let n = 1 + next(2) as usize;
                // Shared prefixes on purpose: some prompts extend others.
                let p = prompt(next(3), 1 + next(20) as usize);
                let params = SamplingParams {
                    n,
                    ..seeded(1 + next(12) as usize, round)
                };
                e.add_request(&id, p, params, next(3) as i32).expect("add");
                expected_samples.insert(id.clone(), n);
                live.push(id);
            }
            2 if !live.is_empty() => {
                let id = live.swap_remove(next(live.len() as u64) as usize);
                for o in e.abort(&id) {
                    collect(&mut out, &mut fin, o);
                }
            }
            _ => {
                for o in e.step().expect("step") {
                    collect(&mut out, &mut fin, o);
                }
            }
        }
        e.check_blocks().expect("block invariants");
    }
    for (k, v) in drain(&mut e) {
        out.entry(k).or_default().extend(v);
    }
    assert_eq!(e.block_stats().used, 0);
    assert_eq!(e.num_requests(), 0, "no request may be left behind");
    // Every sample of every request that was not aborted before it was forked finished exactly once.
    assert!(fin.values().all(|&n| n == 1), "{fin:?}");
    for (id, n) in expected_samples {
        let done = (0..n)
            .filter(|i| fin.contains_key(&(id.clone(), *i)))
            .count();
        assert!(done >= 1, "request {id} never finished");
    }
}

#[test]
fn refusals_are_typed_and_the_engine_keeps_serving() {
    let src = tiny();
    let mut e = engine(&src, 64, 4, 8, 64);
    e.add_request("ok", prompt(1, 5), greedy(4), 0)
        .expect("a good request");
    let bad: Vec<(&str, Vec<u32>, SamplingParams)> = vec![
        ("too-long", vec![1; 3000], greedy(4)),
        ("beyond-context", vec![1; 10], greedy(2045)),
        ("zero-max", vec![1; 3], greedy(0)),
        (
            "neg-temp",
            vec![1; 3],
            SamplingParams {
                temperature: -0.5,
                ..greedy(4)
            },
        ),
        (
            "top-p",
            vec![1; 3],
            SamplingParams {
                top_p: 1.5,
                ..greedy(4)
            },
        ),
        (
            "bias-oov",
            vec![1; 3],
            SamplingParams {
                logit_bias: vec![(999, 1.0)],
                ..greedy(4)
            },
        ),
        (
            "stop-oov",
            vec![1; 3],
            SamplingParams {
                stop_token_ids: vec![256],
                ..greedy(4)
            },
        ),
        ("prompt-oov", vec![1, 300], greedy(4)),
        ("ok", vec![1; 3], greedy(4)),
        ("pool", vec![1; 3], greedy(300)),
    ];
    for (id, p, params) in bad {
        match e.add_request(id, p, params, 0) {
            Err(Error::Request(msg)) => assert!(!msg.is_empty()),
            other => panic!("{id}: expected a request error, got {other:?}"),
        }
    }
    let out = drain(&mut e);
    assert_eq!(out[&("ok".to_string(), 0)].len(), 4);
    assert_eq!(out.len(), 1);
}

#[test]
fn default_model_batched_equals_alone() {
    let src = model::open("default").expect("default model (run scripts/fetch-default-model.sh)");
    let tok = src.tokenizer.as_ref().expect("tokenizer");
    let texts = [
        "The capital of France is",
        "def fibonacci(n):",
        "Once upon a time, in a land far away,",
    ];
    let prompts: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| tok.encode(t, true).expect("encode"))
        .collect();
    let make = || {
        let r = runner(&src, "cpu", DType::F32, 256, 16).expect("runner");
        Engine::new(
            r,
            None,
            EngineConfig {
                max_num_batched_tokens: 16,
                ..Default::default()
            },
        )
        .expect("engine")
    };
    let mut together = make();
    for (i, p) in prompts.iter().enumerate() {
        together
            .add_request(&format!("r{i}"), p.clone(), greedy(16), 0)
            .expect("add");
    }
    let got = drain(&mut together);
    for (i, p) in prompts.iter().enumerate() {
        let mut e = make();
        e.add_request("a", p.clone(), greedy(16), 0).expect("add");
        let want = drain(&mut e).remove(&("a".to_string(), 0)).expect("out");
        assert_eq!(got[&(format!("r{i}"), 0)], want, "prompt {i}");
    }
    let _ = FinishReason::Stop;
}

#[test]
fn priority_orders_admission_and_fcfs_breaks_ties() {
    let src = tiny();
    let mut e = engine(&src, 64, 4, 1, 64);
    e.add_request("late-but-urgent", prompt(1, 4), greedy(3), 0)
        .expect("add");
    e.add_request("low", prompt(2, 4), greedy(3), 5)
        .expect("add");
    e.add_request("urgent-second", prompt(3, 4), greedy(3), 0)
        .expect("add");
    let mut order = vec![];
    while e.has_work() {
        for o in e.step().expect("step") {
            if o.finish_reason.is_some() {
                order.push(o.request_id);
            }
        }
    }
    assert_eq!(order, ["late-but-urgent", "urgent-second", "low"]);
}

#[test]
fn async_handle_streams_refuses_duplicates_and_survives_dropped_clients() {
    use tessera_core::engine::EngineHandle;
    let src = tiny();
    let want = alone(&src, &prompt(7, 6), greedy(10));
    let (handle, thread) = EngineHandle::spawn(engine(&src, 64, 4, 8, 64)).expect("spawn");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut a = handle
            .submit("a", prompt(7, 6), greedy(10), 0, None)
            .await
            .expect("submit a");
        // A 200-token request, so it is surely still running when its id comes
        // again (a 10-token one can finish first on a fast machine).
        let long = handle
            .submit("long", prompt(9, 6), greedy(200), 0, None)
            .await
            .expect("submit long");
        let dup = handle
            .submit("long", prompt(9, 6), greedy(10), 0, None)
            .await;
        assert!(
            matches!(dup, Err(Error::Request(_))),
            "duplicate id must be refused"
        );
        drop(long);
        // A client that goes away: its request is aborted, the others go on.
        let gone = handle
            .submit("gone", prompt(8, 6), greedy(200), 0, None)
            .await
            .expect("submit");
        drop(gone);
        let mut tokens = vec![];
        let mut finish = None;
        while let Some(o) = a.recv().await {
            tokens.extend(o.token_ids);
            if o.finish_reason.is_some() {
                finish = o.finish_reason;
                break;
            }
        }
        assert_eq!(tokens, want);
        assert_eq!(finish, Some(FinishReason::Length));
        let bad = handle.submit("bad", vec![], greedy(1), 0, None).await;
        assert!(matches!(bad, Err(Error::Request(_))));
    });
    handle.shutdown();
    thread.join().expect("engine thread ends cleanly");
}
