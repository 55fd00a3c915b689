//! Stop strings in streamed text. Text arrives piece by piece (one decoded
//! token at a time); a stop string may straddle pieces, so the tail that could
//! still begin a stop string is held back until the next piece settles it.
//!
//! Matching is byte-wise KMP per stop string (UTF-8 is self-synchronising, so
//! a byte match is a string match): each push costs O(piece length x number of
//! stops), and the held-back tail is at most (longest stop - 1) bytes.

/// Finds stop strings in text produced piece by piece, holding back any tail that could still be the
/// start of a stop string, so a stop string is never split across two emitted chunks and never emitted.
#[derive(Clone, Debug)]
pub struct StopMatcher {
    stops: Vec<Stop>,
    /// Text received but not yet emitted.
    pending: String,
    /// Index of the stop string that matched.
    matched: Option<usize>,
}

#[derive(Clone, Debug)]
struct Stop {
    text: String,
    /// KMP failure function: `fail[i]` is the length of the longest proper
    /// prefix of `text[..=i]` that is also its suffix.
    fail: Vec<usize>,
    /// Length of the longest suffix of the text so far that is a prefix of `text`.
    state: usize,
}

impl Stop {
    fn new(text: String) -> Self {
        let p = text.as_bytes();
        let mut fail = vec![0usize; p.len()];
        let mut k = 0;
        for i in 1..p.len() {
            while k > 0 && p.get(k) != p.get(i) {
                k = fail.get(k - 1).copied().unwrap_or(0);
            }
            if p.get(k) == p.get(i) {
                k += 1;
            }
            if let Some(f) = fail.get_mut(i) {
                *f = k;
            }
        }
        Stop {
            text,
            fail,
            state: 0,
        }
    }

    /// Feeds `bytes`; returns the index just past the first complete match.
    fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        let p = self.text.as_bytes();
        let mut q = self.state;
        for (i, &b) in bytes.iter().enumerate() {
            while q > 0 && p.get(q) != Some(&b) {
                q = self.fail.get(q - 1).copied().unwrap_or(0);
            }
            if p.get(q) == Some(&b) {
                q += 1;
            }
            if q == p.len() {
                self.state = q;
                return Some(i + 1);
            }
        }
        self.state = q;
        None
    }
}

impl StopMatcher {
    /// Empty strings are ignored (they would match before any text).
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops: stops
                .into_iter()
                .filter(|s| !s.is_empty())
                .map(Stop::new)
                .collect(),
            pending: String::new(),
            matched: None,
        }
    }

    /// Adds newly decoded text; returns the text that is now safe to emit, and whether a stop string was
    /// found (then the returned text ends right before it, and later pushes return nothing).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.matched.is_some() {
            return (String::new(), true);
        }
        let base = self.pending.len();
        self.pending.push_str(text);
        // The earliest-starting match among all stops wins.
        let mut best: Option<(usize, usize)> = None;
        for (si, s) in self.stops.iter_mut().enumerate() {
            if let Some(end) = s.feed(text.as_bytes()) {
                let start = (base + end).saturating_sub(s.text.len());
                if best.is_none_or(|(b, _)| start < b) {
                    best = Some((start, si));
                }
            }
        }
        if let Some((start, si)) = best {
            let start = floor_char_boundary(&self.pending, start);
            self.pending.truncate(start);
            self.matched = Some(si);
            for s in &mut self.stops {
                s.state = 0;
            }
            return (std::mem::take(&mut self.pending), true);
        }
        let hold = self.stops.iter().map(|s| s.state).max().unwrap_or(0);
        let cut = floor_char_boundary(&self.pending, self.pending.len().saturating_sub(hold));
        let rest = self.pending.split_off(cut);
        (std::mem::replace(&mut self.pending, rest), false)
    }

    /// At the end of generation (no stop found): the held-back tail.
    pub fn flush(&mut self) -> String {
        for s in &mut self.stops {
            s.state = 0;
        }
        std::mem::take(&mut self.pending)
    }

    /// The stop string that ended the text, once one has.
    pub fn matched(&self) -> Option<&str> {
        self.matched
            .and_then(|i| self.stops.get(i))
            .map(|s| s.text.as_str())
    }

    /// Bytes held back now (at most the longest stop string's length - 1).
    pub fn held(&self) -> usize {
        self.pending.len()
    }
}

/// The largest char boundary of `s` at or below `i`.
fn floor_char_boundary(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    /// Pushes `pieces`; returns the emitted chunks, whether it stopped, and the flush.
    fn run(stop: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
        let mut m = StopMatcher::new(stops(stop));
        let mut out = Vec::new();
        let mut stopped = false;
        for p in pieces {
            let (text, hit) = m.push(p);
            assert!(!stopped || text.is_empty(), "text after a stop");
            if !text.is_empty() {
                out.push(text);
            }
            stopped |= hit;
        }
        let tail = m.flush();
        (out, stopped, if stopped { String::new() } else { tail })
    }

    fn chars(s: &str) -> Vec<String> {
        s.chars().map(String::from).collect()
    }

    #[test]
    fn stop_split_across_one_char_pushes() {
        let text = "Hello world<|end|>ignored";
        let pieces = chars(text);
        let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
        let (out, stopped, _) = run(&["<|end|>"], &refs);
        assert!(stopped);
        assert_eq!(out.concat(), "Hello world");
        // Never emitted a piece of the stop string.
        assert!(out.iter().all(|c| !c.contains('<')));
    }

    #[test]
    fn overlapping_prefixes() {
        let (out, stopped, _) = run(&["ab"], &["a", "a", "b", "c"]);
        assert!(stopped);
        assert_eq!(out.concat(), "a");
        let (out, stopped, _) = run(&["ab"], &["aab"]);
        assert!(stopped);
        assert_eq!(out.concat(), "a");
        // A self-overlapping stop: "aab" in "aaab", split everywhere.
        let (out, stopped, _) = run(&["aab"], &["a", "a", "a", "b", "x"]);
        assert!(stopped);
        assert_eq!(out.concat(), "a");
        let (out, stopped, _) = run(&["abab"], &["ab", "xaba", "b", "ab"]);
        assert!(stopped);
        assert_eq!(out.concat(), "abx");
    }

    #[test]
    fn multibyte_text_and_stops() {
        let text = "héllo wörld ✓✓ 日本語の文章です";
        let cases = [
            ("✓✓", "héllo wörld "),
            ("本語", "héllo wörld ✓✓ 日"),
            ("す", "héllo wörld ✓✓ 日本語の文章で"),
        ];
        for (stop, want) in cases {
            let pieces = chars(text);
            let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
            let (out, stopped, _) = run(&[stop], &refs);
            assert!(stopped, "{stop}");
            assert_eq!(out.concat(), want);
            let (out, stopped, _) = run(&[stop], &[text]);
            assert!(stopped);
            assert_eq!(out.concat(), want);
        }
        // A stop that shares a lead byte with the text but never matches.
        let (out, stopped, tail) = run(
            &["日x"],
            &chars(text).iter().map(String::as_str).collect::<Vec<_>>(),
        );
        assert!(!stopped);
        assert_eq!(out.concat() + &tail, text);
    }

    #[test]
    fn no_stop_flush_returns_the_tail() {
        let text = "the end is near: <|e";
        for split in [1usize, 2, 3, 7, 100] {
            let pieces: Vec<String> = text
                .as_bytes()
                .chunks(split)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect();
            let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
            let mut m = StopMatcher::new(stops(&["<|end|>", "STOP"]));
            let mut all = String::new();
            for p in &refs {
                let (t, hit) = m.push(p);
                assert!(!hit);
                assert!(m.held() < "<|end|>".len());
                all += &t;
            }
            assert_eq!(all, "the end is near: ");
            let tail = m.flush();
            assert_eq!(tail, "<|e");
            assert_eq!(all + &tail, text);
            assert_eq!(m.matched(), None);
        }
        // No stops at all: everything passes straight through.
        let mut m = StopMatcher::new(vec![String::new()]);
        assert_eq!(m.push("abc"), ("abc".to_string(), false));
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn earliest_match_wins() {
        // "world" ends first but "o w" starts earlier.
        let (out, stopped, _) = run(&["world", "o w"], &["hello world"]);
        assert!(stopped);
        assert_eq!(out.concat(), "hell");
        // Longer stop found later in the same push starts first.
        let mut m = StopMatcher::new(stops(&["c", "abcd"]));
        assert_eq!(m.push("xab"), ("x".to_string(), false));
        assert_eq!(m.push("cd"), (String::new(), true));
        assert_eq!(m.matched(), Some("abcd"));
        let mut m = StopMatcher::new(stops(&["bcd", "abz", "cd"]));
        assert_eq!(m.push("xabcdef"), ("xa".to_string(), true));
        assert_eq!(m.matched(), Some("bcd"));
        assert_eq!(m.push("more"), (String::new(), true));
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn random_splits_agree_with_a_plain_search() {
        let alphabet = ["a", "b", "é", "✓", " "];
        let stop_sets: [&[&str]; 3] = [&["ab"], &["b✓", "éé a"], &["aab", "✓ ", "bbbb"]];
        let mut state = 0x1234_5678u64;
        let mut next = || {
            state = crate::model::random::splitmix64(state);
            state
        };
        for _ in 0..300 {
            let len = (next() % 40) as usize;
            let text: String = (0..len).map(|_| alphabet[(next() % 5) as usize]).collect();
            let set = stop_sets[(next() % 3) as usize];
            let want_cut = set.iter().filter_map(|s| text.find(s)).min();
            let mut pieces = Vec::new();
            let mut rest = text.as_str();
            while !rest.is_empty() {
                let mut n = 1 + (next() % 6) as usize;
                n = n.min(rest.len());
                while !rest.is_char_boundary(n) {
                    n += 1;
                }
                pieces.push(&rest[..n]);
                rest = &rest[n..];
            }
            let (out, stopped, tail) = run(set, &pieces);
            match want_cut {
                Some(c) => {
                    assert!(stopped, "{text:?} {set:?}");
                    assert_eq!(out.concat(), &text[..c], "{text:?} {set:?} {pieces:?}");
                }
                None => {
                    assert!(!stopped);
                    assert_eq!(out.concat() + &tail, text);
                }
            }
        }
    }
}
