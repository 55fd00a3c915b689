//! An incremental parser for server-sent events, as `tessera bench serve`
//! reads streamed completions.

use anyhow::bail;

/// Incremental server-sent-events parser: feed it body bytes as they arrive, split
/// anywhere, and get back the joined `data:` lines of each event completed by a
/// blank line. Lines end in `\n` or `\r\n`; other fields and `:` comments are ignored.
#[derive(Default)]
pub struct SseParser {
    /// Bytes after the last complete line (kept as bytes: a chunk may split a UTF-8 char).
    buf: Vec<u8>,
    /// `data:` values of the event in progress.
    data: Vec<String>,
}

impl SseParser {
    const MAX_LINE: usize = 16 << 20;

    pub fn push(&mut self, bytes: &[u8]) -> anyhow::Result<Vec<String>> {
        self.buf.extend_from_slice(bytes);
        let (mut events, mut start) = (vec![], 0);
        while let Some(n) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let line = &self.buf[start..start + n];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            start += n + 1;
            if line.is_empty() {
                if !self.data.is_empty() {
                    events.push(std::mem::take(&mut self.data).join("\n"));
                }
            } else if let Some(value) = line.strip_prefix(b"data:") {
                let value = value.strip_prefix(b" ").unwrap_or(value);
                self.data.push(String::from_utf8_lossy(value).into_owned());
            }
        }
        self.buf.drain(..start);
        if self.buf.len() > Self::MAX_LINE {
            bail!("an event line is over {} bytes", Self::MAX_LINE);
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_handles_awkward_splits() {
        let stream =
            "data: {\"a\":1}\n\ndata:{\"b\":\"é\"}\r\n\r\n: comment\nevent: x\ndata: [DONE]\n\n";
        let expected = vec!["{\"a\":1}", "{\"b\":\"é\"}", "[DONE]"];
        // Every split point, including inside "data:", "\r\n" and the two-byte 'é'.
        for cut in 0..=stream.len() {
            let (x, y) = stream.as_bytes().split_at(cut);
            let mut p = SseParser::default();
            let mut got = p.push(x).unwrap();
            got.extend(p.push(y).unwrap());
            assert_eq!(got, expected, "split at {cut}");
        }
        // One byte at a time.
        let mut p = SseParser::default();
        let got: Vec<String> = stream
            .as_bytes()
            .chunks(1)
            .flat_map(|b| p.push(b).unwrap())
            .collect();
        assert_eq!(got, expected);
        // A multi-line event is joined with \n; an unterminated one is held back.
        let mut p = SseParser::default();
        assert_eq!(
            p.push(b"data: a\ndata: b\n\ndata: c\n").unwrap(),
            vec!["a\nb"]
        );
    }
}
