//! Chooses the next token from logits on the host: greedy, or temperature with
//! top-k / top-p / min-p. Randomness is a pure function of (seed, position), so a
//! seeded request draws the same tokens whatever else runs beside it.

use crate::model::random::splitmix64;
use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 means no limit.
    pub top_k: usize,
    pub min_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::Request(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Request(format!(
                "top_p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(Error::Request(format!(
                "min_p must be in [0, 1], got {}",
                self.min_p
            )));
        }
        Ok(())
    }
}

/// Uniform in [0, 1) from (seed, position).
pub fn uniform(seed: u64, position: u64) -> f64 {
    let r = splitmix64(splitmix64(seed) ^ position.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    (r >> 11) as f64 / (1u64 << 53) as f64
}

/// Index of the largest logit (the first on ties; NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = (0usize, f32::NEG_INFINITY);
    for (i, &x) in logits.iter().enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best.0 as u32
}

/// Picks the token for `position` of a sequence.
pub fn sample(logits: &[f32], p: &SamplingParams, position: u64) -> u32 {
    if p.temperature == 0.0 || logits.is_empty() {
        return argmax(logits);
    }
    let mut cand: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l / p.temperature))
        .collect();
    // Stable order (value desc, id asc) keeps the draw independent of sort details.
    cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if p.top_k > 0 {
        cand.truncate(p.top_k);
    }
    let max = cand[0].1;
    let mut probs: Vec<f64> = cand
        .iter()
        .map(|&(_, l)| ((l - max) as f64).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|x| *x /= total);
    let mut keep = probs.len();
    if p.min_p > 0.0 {
        let floor = probs[0] * p.min_p as f64;
        keep = keep.min(probs.iter().take_while(|&&x| x >= floor).count().max(1));
    }
    if p.top_p < 1.0 {
        let mut acc = 0.0;
        let mut n = 0;
        for &x in &probs[..keep] {
            acc += x;
            n += 1;
            if acc >= p.top_p as f64 {
                break;
            }
        }
        keep = n.max(1);
    }
    let mass: f64 = probs[..keep].iter().sum();
    let u = uniform(p.seed, position) * mass;
    let mut acc = 0.0;
    for (i, &x) in probs[..keep].iter().enumerate() {
        acc += x;
        if u < acc {
            return cand[i].0;
        }
    }
    cand[keep - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax_and_seeded_draws_repeat() {
        let logits = [0.1, 2.0, 1.9, -1.0];
        assert_eq!(sample(&logits, &SamplingParams::default(), 0), 1);
        let p = SamplingParams {
            temperature: 1.0,
            seed: 7,
            ..Default::default()
        };
        let a: Vec<u32> = (0..50).map(|i| sample(&logits, &p, i)).collect();
        let b: Vec<u32> = (0..50).map(|i| sample(&logits, &p, i)).collect();
        assert_eq!(a, b);
        assert!(
            a.contains(&2),
            "temperature 1 must sometimes pick the runner-up"
        );
    }

    #[test]
    fn top_k_one_is_greedy() {
        let logits = [0.1, 2.0, 1.9, -1.0];
        let p = SamplingParams {
            temperature: 5.0,
            top_k: 1,
            seed: 3,
            ..Default::default()
        };
        assert!((0..100).all(|i| sample(&logits, &p, i) == 1));
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        let logits = [0.0f32, (3.0f32).ln()]; // probabilities 1/4, 3/4
        let p = SamplingParams {
            temperature: 1.0,
            seed: 11,
            ..Default::default()
        };
        let ones = (0..20000).filter(|&i| sample(&logits, &p, i) == 1).count() as f64 / 20000.0;
        assert!((ones - 0.75).abs() < 0.02, "{ones}");
    }
}
