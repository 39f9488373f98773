//! Splitting a file's bytes into lines, with the offsets the record contract needs.
//!
//! Lines end at `\n`; a `\r` right before it is part of the terminator. A line that is not
//! finished yet waits for its newline (it may still be being written), unless the file is gone
//! for good ([`LineSplitter::flush`]). A line longer than the limit is cut, never dropped and
//! never a reason to stop tailing: only `max` bytes are kept in memory while the rest is counted,
//! so the original length can be reported. Empty lines carry nothing and are only counted, but
//! their bytes still move the offset forward so that checkpoints pass them.

/// A complete line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Line<'a> {
    /// Offset of the line's first byte in the file.
    pub(crate) offset: u64,
    /// Offset just past the line's terminator: where the next line starts.
    pub(crate) end: u64,
    /// The line without its terminator, cut to the limit.
    pub(crate) bytes: &'a [u8],
    /// The line's length without terminator, when it was cut.
    pub(crate) truncated_from: Option<u64>,
}

/// What the splitter hands out.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    Line(Line<'a>),
    /// An empty line (or a lone `\r`), ending at `end`.
    Empty {
        end: u64,
    },
}

/// Incremental line splitter for one file.
#[derive(Debug)]
pub(crate) struct LineSplitter {
    max: usize,
    /// The first bytes of the unterminated line: at most `max + 1`, so a `\r` right after a line
    /// of exactly `max` bytes is still seen.
    partial: Vec<u8>,
    /// Offset of the unterminated line's first byte.
    line_start: u64,
    /// Length read so far of the unterminated line (may exceed `partial.len()`).
    line_len: u64,
    /// Last byte of the unterminated line, to strip a `\r` from a cut line.
    last: u8,
}

impl LineSplitter {
    pub(crate) fn new(max: usize, offset: u64) -> Self {
        LineSplitter {
            max,
            partial: Vec::new(),
            line_start: offset,
            line_len: 0,
            last: 0,
        }
    }

    /// Offset of the next byte to feed.
    pub(crate) fn position(&self) -> u64 {
        self.line_start + self.line_len
    }

    pub(crate) fn has_partial(&self) -> bool {
        self.line_len > 0
    }

    /// Forgets any unterminated line and continues at `offset` (rewind or truncation).
    pub(crate) fn reset(&mut self, offset: u64) {
        self.partial = Vec::new();
        self.line_start = offset;
        self.line_len = 0;
    }

    /// Feeds the bytes that follow [`position`](Self::position); `emit` gets every line they
    /// complete, in order.
    pub(crate) fn feed(&mut self, data: &[u8], mut emit: impl FnMut(Piece<'_>)) {
        let mut rest = data;
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            let (segment, after) = (&rest[..nl], &rest[nl + 1..]);
            rest = after;
            let end = self.position() + nl as u64 + 1;
            let offset = self.line_start;
            if self.line_len == 0 {
                let cr = segment.last() == Some(&b'\r');
                emit(piece(
                    offset,
                    end,
                    segment,
                    segment.len() as u64,
                    cr,
                    self.max,
                ));
            } else {
                self.append(segment);
                let cr = self.last == b'\r';
                emit(piece(
                    offset,
                    end,
                    &self.partial,
                    self.line_len,
                    cr,
                    self.max,
                ));
                self.partial.clear();
            }
            self.line_start = end;
            self.line_len = 0;
        }
        if !rest.is_empty() {
            self.append(rest);
        }
    }

    /// Emits the unterminated line, if any, as a complete one: the file will not grow any more.
    pub(crate) fn flush(&mut self, emit: impl FnOnce(Piece<'_>)) {
        if self.line_len == 0 {
            return;
        }
        let end = self.position();
        emit(piece(
            self.line_start,
            end,
            &self.partial,
            self.line_len,
            self.last == b'\r',
            self.max,
        ));
        self.reset(end);
    }

    fn append(&mut self, bytes: &[u8]) {
        let room = (self.max + 1).saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.line_len += bytes.len() as u64;
        if let Some(&b) = bytes.last() {
            self.last = b;
        }
    }
}

/// Builds the piece for a line whose raw bytes (terminator `\n` excluded) are `raw_len` long,
/// of which `stored` holds at least the first `min(raw_len, max + 1)`.
fn piece(
    offset: u64,
    end: u64,
    stored: &[u8],
    raw_len: u64,
    ends_with_cr: bool,
    max: usize,
) -> Piece<'_> {
    let len = raw_len - (ends_with_cr && raw_len > 0) as u64;
    if len == 0 {
        return Piece::Empty { end };
    }
    if len > max as u64 {
        Piece::Line(Line {
            offset,
            end,
            bytes: &stored[..max],
            truncated_from: Some(len),
        })
    } else {
        Piece::Line(Line {
            offset,
            end,
            bytes: &stored[..len as usize],
            truncated_from: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (offset, end, text, truncated_from); empty lines as (u64::MAX, end, "", None).
    type Out = (u64, u64, String, Option<u64>);

    /// Feeds `chunks` one after another and returns what came out and the final position.
    fn split(max: usize, chunks: &[&[u8]], flush: bool) -> (Vec<Out>, u64) {
        let mut splitter = LineSplitter::new(max, 0);
        let mut out = Vec::new();
        let mut record = |p: Piece<'_>| match p {
            Piece::Line(l) => out.push((
                l.offset,
                l.end,
                String::from_utf8_lossy(l.bytes).into_owned(),
                l.truncated_from,
            )),
            Piece::Empty { end } => out.push((u64::MAX, end, String::new(), None)),
        };
        for chunk in chunks {
            splitter.feed(chunk, &mut record);
        }
        if flush {
            splitter.flush(&mut record);
        }
        (out, splitter.position())
    }

    #[test]
    fn lines_with_offsets_crlf_and_empty_lines() {
        let (out, pos) = split(100, &[b"ab\ncd\r\n\n\r\nef\n"], false);
        assert_eq!(
            out,
            vec![
                (0, 3, "ab".into(), None),
                (3, 7, "cd".into(), None),
                (u64::MAX, 8, "".into(), None),
                (u64::MAX, 10, "".into(), None),
                (10, 13, "ef".into(), None),
            ]
        );
        assert_eq!(pos, 13);
    }

    #[test]
    fn partial_line_waits_for_its_newline_across_chunks() {
        let (out, pos) = split(100, &[b"hel", b"lo\r", b"\nwor", b"ld"], false);
        assert_eq!(out, vec![(0, 7, "hello".into(), None)]);
        assert_eq!(pos, 12);
        let (out, pos) = split(100, &[b"hel", b"lo\r", b"\nwor", b"ld"], true);
        assert_eq!(out[1], (7, 12, "world".into(), None));
        assert_eq!(pos, 12);
    }

    #[test]
    fn oversized_lines_are_cut_and_report_their_length() {
        // In one chunk, across chunks, with CRLF exactly at the limit, and flushed.
        let (out, _) = split(4, &[b"abcdefgh\nxy\n"], false);
        assert_eq!(
            out,
            vec![(0, 9, "abcd".into(), Some(8)), (9, 12, "xy".into(), None)]
        );
        let (out, _) = split(4, &[b"abc", b"defg", b"h\n"], false);
        assert_eq!(out, vec![(0, 9, "abcd".into(), Some(8))]);
        let (out, _) = split(4, &[b"ab", b"cd\r", b"\n"], false);
        assert_eq!(out, vec![(0, 6, "abcd".into(), None)]);
        let (out, _) = split(4, &[b"ab", b"cde\r", b"\n"], false);
        assert_eq!(out, vec![(0, 7, "abcd".into(), Some(5))]);
        let (out, _) = split(4, &[b"abcdef"], true);
        assert_eq!(out, vec![(0, 6, "abcd".into(), Some(6))]);
    }

    #[test]
    fn invalid_utf8_passes_through_unchanged() {
        let mut splitter = LineSplitter::new(100, 50);
        let mut seen = Vec::new();
        splitter.feed(b"\xff\xfe{\n", |p| {
            if let Piece::Line(l) = p {
                seen.push((l.offset, l.bytes.to_vec()));
            }
        });
        assert_eq!(seen, vec![(50, b"\xff\xfe{".to_vec())]);
    }

    #[test]
    fn reset_forgets_the_partial_line() {
        let mut splitter = LineSplitter::new(100, 0);
        splitter.feed(b"abc", |_| panic!("no line yet"));
        assert!(splitter.has_partial());
        splitter.reset(0);
        assert!(!splitter.has_partial());
        let mut lines = 0;
        splitter.feed(b"x\n", |_| lines += 1);
        assert_eq!((lines, splitter.position()), (1, 2));
    }
}
