//! The device against a peer device (in practice the cpu backend on the same
//! machine) on random-weight models of real shapes: what a GPU check can do
//! where no model file travels. Prompt logits are compared by NMSE; greedy
//! tokens are teacher-forced, so one near tie cannot derail the rest: the
//! peer decodes greedily, both score the peer's sequence, and each position
//! must pick the peer's token unless the peer's own scores for the two picks
//! are within noise of each other.

use crate::golden::worst_row_nmse;
use crate::harness::{block_size, greedy, prompt_logits, runner_on};
use crate::report::{Check, Layer};
use crate::thresholds::model_logits_limit;
use std::sync::Arc;
use tessera_core::hal::{open_device, Device};
use tessera_core::model;
use tessera_core::{DType, Result};

/// (model, the dtypes to compare it in; empty: every dtype both devices take).
const MODELS: &[(&str, &[DType])] = &[
    ("random:smollm2-135m", &[]),
    ("random:llama-3.2-1b", &[DType::BF16]),
];
const PROMPT_TOKENS: usize = 48;
const GREEDY_TOKENS: usize = 32;

pub fn check(dev: &Arc<dyn Device>, peer_name: &str) -> Vec<Check> {
    let peer = match open_device(peer_name, None) {
        Ok(p) => p,
        Err(e) => {
            return vec![Check::verdict(
                Layer::Models,
                "peer logits",
                "-",
                peer_name,
                false,
                format!("cannot open the peer: {e}"),
            )]
        }
    };
    let (mine, theirs) = (dev.capabilities(), peer.capabilities());
    let mut out = vec![];
    for &(name, only) in MODELS {
        let dtypes: Vec<DType> = mine
            .weight_dtypes
            .iter()
            .copied()
            .filter(|d| theirs.weight_dtypes.contains(d))
            .filter(|d| only.is_empty() || only.contains(d))
            .collect();
        for dtype in dtypes {
            let group = format!("{name} vs {peer_name}");
            out.extend(compare(dev, &peer, name, dtype).unwrap_or_else(|e| {
                vec![Check::verdict(
                    Layer::Models,
                    "peer logits",
                    dtype.name(),
                    &group,
                    false,
                    format!("error: {e}"),
                )]
            }));
        }
    }
    out
}

/// A seeded prompt of ordinary token ids.
fn prompt(vocab: usize) -> Vec<u32> {
    let mut state = 0x5eed_u64;
    (0..PROMPT_TOKENS)
        .map(|_| {
            state = model::random::splitmix64(state);
            (state % vocab.min(32000) as u64) as u32
        })
        .collect()
}

fn compare(
    dev: &Arc<dyn Device>,
    peer: &Arc<dyn Device>,
    name: &str,
    dtype: DType,
) -> Result<Vec<Check>> {
    let src = model::open(name)?;
    let vocab = src.config.vocab_size;
    let group = format!("{name} vs {}", peer.name());
    let context = PROMPT_TOKENS + GREEDY_TOKENS + 16;
    let bs = |d: &Arc<dyn Device>| block_size(&d.capabilities(), 16);
    let mut theirs = runner_on(peer, &src, dtype, context, bs(peer))?;
    let prompt = prompt(vocab);
    let tokens = greedy(&mut theirs, &prompt, GREEDY_TOKENS)?;
    let mut sequence = prompt.clone();
    sequence.extend(&tokens[..tokens.len().saturating_sub(1)]);
    let peer_logits = prompt_logits(&mut theirs, &sequence)?;
    drop(theirs);

    let mut mine = runner_on(dev, &src, dtype, context, bs(dev))?;
    let logits = prompt_logits(&mut mine, &sequence)?;
    let limit = model_logits_limit(dtype);
    let (row, err) = worst_row_nmse(&peer_logits, &logits, vocab);
    let mut rows = vec![Check::measured(
        Layer::Models,
        "peer logits",
        dtype.name(),
        &group,
        err,
        limit,
    )
    .note(format!("worst of {} positions at {row}", sequence.len()))];

    // Position `prompt.len() - 1 + i` predicts greedy token `i`.
    let (mut same, mut ties, mut wrong) = (0, 0, vec![]);
    for (i, &want) in tokens.iter().enumerate() {
        let at = (prompt.len() - 1 + i) * vocab;
        let (Some(peer_row), Some(row)) =
            (peer_logits.get(at..at + vocab), logits.get(at..at + vocab))
        else {
            break;
        };
        let got = argmax(row);
        if got == want as usize {
            same += 1;
            continue;
        }
        let rms =
            (peer_row.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / vocab as f64).sqrt();
        let gap = f64::from(peer_row[want as usize]) - f64::from(peer_row[got]);
        if gap <= 3.0 * limit.sqrt() * rms {
            ties += 1;
        } else {
            wrong.push(format!(
                "token {i}: {got} instead of {want} (peer gap {gap:.3})"
            ));
        }
    }
    let verdict = Check::verdict(
        Layer::Models,
        "peer greedy tokens",
        dtype.name(),
        &group,
        wrong.is_empty() && same + ties == tokens.len(),
        format!("{same} of {} identical, {ties} near ties", tokens.len()),
    );
    rows.push(if wrong.is_empty() {
        verdict
    } else {
        verdict.fail(wrong.join("; "))
    });
    Ok(rows)
}

fn argmax(row: &[f32]) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, &v) in row.iter().enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}
