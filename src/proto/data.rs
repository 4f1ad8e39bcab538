//! The DATA body after the `354` reply: dot-unstuffing up to `CRLF.CRLF`.
//!
//! Only a real CRLF ends a line (RFC 5321 2.3.8), so only `CRLF . CRLF` ends
//! the message. A bare LF or bare CR never does, whatever follows it: that is
//! what closes the door on SMTP smuggling, where a receiver that accepts
//! `LF . LF` sees two messages where the next hop sees one.
//!
//! The receiver is resumable: it keeps the few bits of state that a read
//! boundary can cut through (a CR waiting for its LF, a dot at the start of a
//! line), so any split of the input gives the same result.

use bytes::{Buf, BytesMut};

/// What to do with a bare CR or bare LF inside the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LineEndings {
    /// Drain the message and answer it with [`DataOutcome::BareLineEnding`].
    #[default]
    Reject,
    /// Write each bare CR and bare LF as CRLF and accept the message.
    Normalize,
}

/// How a DATA body ended. Only [`DataOutcome::Complete`] leaves a message in
/// the output buffer; the others leave it empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataOutcome {
    /// The message was received whole.
    Complete,
    /// The message was longer than allowed and was drained (`552 5.3.4`).
    TooLarge,
    /// The message held a bare CR or bare LF under [`LineEndings::Reject`].
    BareLineEnding,
}

/// Where the receiver stands between two input bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line begun by a real CRLF (or of the message).
    LineStart,
    /// Inside a line.
    InLine,
    /// Inside a line, just after a CR (already counted as content).
    AfterCr,
    /// After a dot that started a line; the dot is not content either way.
    Dot,
    /// After `.` CR at the start of a line; the CR is held back, since with
    /// an LF it is the end of the message.
    DotCr,
    /// The terminator has been consumed.
    Done,
}

/// Receives a DATA body, unstuffed, into an output buffer.
///
/// ```
/// use bytes::BytesMut;
/// use smtpsrv::proto::{DataOutcome, DataReceiver, LineEndings};
///
/// let mut receiver = DataReceiver::new(1024, LineEndings::Reject);
/// let mut src = BytesMut::from(&b"Subject: hi\r\n\r\n..dot\r\n"[..]);
/// let mut message = BytesMut::new();
/// assert_eq!(receiver.feed(&mut src, &mut message), None); // needs more input
/// src.extend_from_slice(b".\r\nQUIT\r\n");
/// assert_eq!(receiver.feed(&mut src, &mut message), Some(DataOutcome::Complete));
/// assert_eq!(&message[..], b"Subject: hi\r\n\r\n.dot\r\n");
/// assert_eq!(&src[..], b"QUIT\r\n"); // the pipelined command is left alone
/// ```
#[derive(Debug, Clone)]
pub struct DataReceiver {
    max_bytes: u64,
    policy: LineEndings,
    state: State,
    received: u64,
    too_large: bool,
    bare_line_ending: bool,
}

impl DataReceiver {
    /// A receiver for a message of at most `max_bytes` unstuffed octets.
    pub fn new(max_bytes: usize, policy: LineEndings) -> Self {
        Self {
            max_bytes: u64::try_from(max_bytes).unwrap_or(u64::MAX),
            policy,
            state: State::LineStart,
            received: 0,
            too_large: false,
            bare_line_ending: false,
        }
    }

    /// Consumes the body from `src` and appends the unstuffed message to
    /// `out`.
    ///
    /// Returns `None` when all of `src` was consumed and more is needed, and
    /// the outcome once the terminating `.` CRLF has been consumed; the bytes
    /// after it (pipelined commands) stay in `src`. Once the message is too
    /// large or (under [`LineEndings::Reject`]) has a bare line ending, `out`
    /// is replaced by an empty buffer and nothing more is appended, so memory
    /// stays bounded by `max_bytes` whatever the peer sends.
    pub fn feed(&mut self, src: &mut BytesMut, out: &mut BytesMut) -> Option<DataOutcome> {
        self.feed_with(src, out, |src, out, n| {
            out.extend_from_slice(&src[..n]);
            src.advance(n);
        })
    }

    /// As [`feed`](Self::feed), but the message's octets are split off the
    /// front of `src` rather than copied: when `out` ends where `src`
    /// starts (it was split off the same buffer before), the two are joined
    /// without a copy ([`BytesMut::unsplit`]). A message without
    /// dot-stuffed lines that arrives into one buffer is never copied; each
    /// dropped dot (or rewritten line ending) costs one copy of what
    /// follows it in that buffer. `out` then shares `src`'s allocation.
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use smtpsrv::proto::{DataOutcome, DataReceiver, LineEndings};
    ///
    /// let mut receiver = DataReceiver::new(1024, LineEndings::Reject);
    /// let mut src = BytesMut::from(&b"Subject: hi\r\n\r\n..dot\r\n.\r\nQUIT\r\n"[..]);
    /// let mut message = BytesMut::new();
    /// let outcome = receiver.feed_split(&mut src, &mut message);
    /// assert_eq!(outcome, Some(DataOutcome::Complete));
    /// assert_eq!(&message[..], b"Subject: hi\r\n\r\n.dot\r\n");
    /// assert_eq!(&src[..], b"QUIT\r\n");
    /// ```
    pub fn feed_split(&mut self, src: &mut BytesMut, out: &mut BytesMut) -> Option<DataOutcome> {
        self.feed_with(src, out, |src, out, n| out.unsplit(src.split_to(n)))
    }

    /// The loop both feeds share: steps through `src`, handing each run of
    /// content (the first `n` octets of `src`) to `keep`, which must remove
    /// them from `src`.
    fn feed_with(
        &mut self,
        src: &mut BytesMut,
        out: &mut BytesMut,
        keep: impl Fn(&mut BytesMut, &mut BytesMut, usize),
    ) -> Option<DataOutcome> {
        while self.state != State::Done && !src.is_empty() {
            let step = self.step(src);
            if self.count(out, step.content) {
                keep(src, out, step.content);
            } else {
                src.advance(step.content);
            }
            src.advance(step.consumed - step.content);
            if self.count(out, step.insert.len()) {
                out.extend_from_slice(step.insert);
            }
        }
        (self.state == State::Done).then(|| self.outcome())
    }

    /// Unstuffed octets of the message seen so far, including those not kept
    /// (bare line endings count as two under [`LineEndings::Normalize`]).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The failure the message will end with, known as soon as it happens
    /// (the rest is still drained to `CRLF.CRLF`): for a receiver that
    /// hands the message on while it arrives.
    pub fn failure(&self) -> Option<DataOutcome> {
        let outcome = self.outcome();
        (outcome != DataOutcome::Complete).then_some(outcome)
    }

    fn outcome(&self) -> DataOutcome {
        if self.too_large {
            DataOutcome::TooLarge
        } else if self.bare_line_ending {
            DataOutcome::BareLineEnding
        } else {
            DataOutcome::Complete
        }
    }

    /// Runs the state machine over `buf` up to the first octet that is not
    /// content as it stands (a dot or CR to drop, a line ending to rewrite,
    /// the terminator) or the end of `buf`.
    ///
    /// Content passes through in one run per step: a message without
    /// dot-stuffed lines is one step per buffer.
    fn step(&mut self, buf: &[u8]) -> Step {
        let mut i = 0;
        while let Some(&byte) = buf.get(i) {
            match self.state {
                State::LineStart => {
                    if byte == b'.' {
                        self.state = State::Dot;
                        return Step::drop(i, 1);
                    }
                    self.state = State::InLine;
                }
                State::InLine => {
                    if let Some(line_start) = skip_plain_lines(buf, i) {
                        i = line_start;
                        self.state = State::LineStart;
                        continue;
                    }
                    let Some(at) = next_line_end(buf, i) else {
                        i = buf.len();
                        continue;
                    };
                    i = at + 1;
                    if buf[at] == b'\r' {
                        // The common case, a CRLF followed by a line that
                        // does not start with a dot, without going through
                        // the states one byte at a time.
                        match (buf.get(at + 1), buf.get(at + 2)) {
                            (Some(b'\n'), Some(&next)) if next != b'.' => i = at + 2,
                            _ => self.state = State::AfterCr,
                        }
                    } else if self.bare() {
                        return Step::rewrite(at, 1, b"\r\n");
                    }
                }
                State::AfterCr => {
                    if byte == b'\n' {
                        i += 1;
                        self.state = State::LineStart;
                    } else {
                        // The CR before `i` was bare (it is content already,
                        // in this step or an earlier one).
                        self.state = State::InLine;
                        if self.bare() {
                            return Step::rewrite(i, 0, b"\n");
                        }
                    }
                }
                State::Dot => {
                    if byte == b'\r' {
                        self.state = State::DotCr;
                        return Step::drop(i, 1);
                    }
                    self.state = State::InLine;
                }
                State::DotCr => {
                    if byte == b'\n' {
                        self.state = State::Done;
                        return Step::drop(i, 1);
                    }
                    // The held-back CR was bare: the dot was a stuffed one.
                    self.state = State::InLine;
                    let bare_cr: &'static [u8] = if self.bare() { b"\r\n" } else { b"\r" };
                    return Step::rewrite(i, 0, bare_cr);
                }
                State::Done => return Step::drop(i, 0),
            }
        }
        Step::drop(buf.len(), 0)
    }

    /// Records a bare CR or LF; true if it must be rewritten as CRLF.
    fn bare(&mut self) -> bool {
        match self.policy {
            LineEndings::Normalize => true,
            LineEndings::Reject => {
                self.bare_line_ending = true;
                false
            }
        }
    }

    /// Counts `len` octets of content; true if they are to be kept. Once
    /// the message has failed (too large, a bare line ending under
    /// [`LineEndings::Reject`]) `out` is emptied and nothing more is kept.
    fn count(&mut self, out: &mut BytesMut, len: usize) -> bool {
        if len == 0 {
            return false;
        }
        self.received = self.received.saturating_add(len as u64);
        if self.received > self.max_bytes {
            self.too_large = true;
        }
        if self.too_large || self.bare_line_ending {
            if out.capacity() != 0 {
                *out = BytesMut::new();
            }
            return false;
        }
        true
    }
}

/// One step of [`DataReceiver::step`]: the first `content` octets of the
/// input are content, `consumed` octets (at least `content`) were used, and
/// `insert` follows the content in the message.
#[derive(Debug, Clone, Copy)]
struct Step {
    content: usize,
    consumed: usize,
    insert: &'static [u8],
}

impl Step {
    /// Content up to `at`, then `skip` octets that are not content.
    fn drop(at: usize, skip: usize) -> Step {
        Step {
            content: at,
            consumed: at + skip,
            insert: b"",
        }
    }

    /// Content up to `at`, then `skip` octets replaced by `insert`.
    fn rewrite(at: usize, skip: usize, insert: &'static [u8]) -> Step {
        Step {
            content: at,
            consumed: at + skip,
            insert,
        }
    }
}

/// Skips whole lines that need nothing done, from `from` inside a line
/// (not just after a CR): returns where the line after the last of them
/// starts, or `None` when not even the current line is plain (then the
/// byte-exact path takes over).
///
/// A line is plain when its CR and LF come as CRLF and the next line does
/// not start with a dot; [`first_irregular`] finds the first pair of bytes
/// where that fails, many bytes at a time, and every LF before it ends a
/// plain line. This is what keeps the scan from stopping at every line of
/// an ordinary message.
fn skip_plain_lines(buf: &[u8], from: usize) -> Option<usize> {
    // An LF right here would be bare (the state machine says no CR came
    // just before): leave it to the exact path, as a CR here.
    if matches!(buf.get(from), None | Some(b'\r' | b'\n')) {
        return None;
    }
    let end = first_irregular(buf, from);
    // Every LF in `from..=end` is the end of a CRLF (the pair before it is
    // regular, and `buf[from]` is no LF), and no line starting after one of
    // them (up to `end + 1`) starts with a dot unless the pair at `end` says so.
    memchr::memrchr(b'\n', &buf[from..=end]).map(|lf| from + lf + 1)
}

/// The index `j` of the first pair `buf[j], buf[j + 1]` (with `j >= from`)
/// that is not ordinary content: a CR not followed by LF, an LF not preceded
/// by CR, or an LF followed by a dot; `buf.len() - 1` if there is none.
/// `buf[from]` must exist.
fn first_irregular(buf: &[u8], from: usize) -> usize {
    /// Bytes looked at per round: the inner loop is written so that the
    /// compiler turns it into vector compares.
    const BLOCK: usize = 64;
    fn irregular(a: u8, b: u8) -> bool {
        ((a == b'\r') != (b == b'\n')) | ((a == b'\n') & (b == b'.'))
    }
    let mut j = from;
    while let (Some(a), Some(b)) = (buf.get(j..j + BLOCK), buf.get(j + 1..j + 1 + BLOCK)) {
        let mut any = false;
        for (&x, &y) in a.iter().zip(b) {
            any |= irregular(x, y);
        }
        if any {
            break;
        }
        j += BLOCK;
    }
    while j + 1 < buf.len() {
        if irregular(buf[j], buf[j + 1]) {
            return j;
        }
        j += 1;
    }
    buf.len() - 1
}

/// The first CR or LF at or after `from`.
fn next_line_end(buf: &[u8], from: usize) -> Option<usize> {
    memchr::memchr2(b'\r', b'\n', buf.get(from..)?).map(|offset| from + offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Result of receiving one input: message, outcome, bytes left, count.
    type Received = (Vec<u8>, Option<DataOutcome>, Vec<u8>, u64);

    /// Feeds `chunks` in turn; after the outcome, later chunks only pile up
    /// in `src` as the next command would.
    /// Both feeds, the copying one and the splitting one, must agree.
    fn run(max: usize, policy: LineEndings, chunks: &[&[u8]]) -> Received {
        let copied = run_with(max, policy, chunks, false);
        let split = run_with(max, policy, chunks, true);
        assert_eq!(copied, split, "feed and feed_split differ");
        copied
    }

    fn run_with(max: usize, policy: LineEndings, chunks: &[&[u8]], split: bool) -> Received {
        let mut receiver = DataReceiver::new(max, policy);
        let mut src = BytesMut::new();
        let mut out = BytesMut::new();
        let mut outcome = None;
        for chunk in chunks {
            src.extend_from_slice(chunk);
            if outcome.is_none() {
                outcome = if split {
                    receiver.feed_split(&mut src, &mut out)
                } else {
                    receiver.feed(&mut src, &mut out)
                };
                if outcome.is_none() {
                    assert!(src.is_empty(), "an unfinished feed consumes everything");
                }
            }
            assert!(out.len() <= max, "out grew to {}", out.len());
        }
        (out.to_vec(), outcome, src.to_vec(), receiver.received())
    }

    fn whole(max: usize, policy: LineEndings, input: &[u8]) -> Received {
        run(max, policy, &[input])
    }

    /// Obviously correct model: cut the input into lines at each CRLF, stop
    /// at the line ".", unstuff, then judge the bare CR/LF left in each line.
    fn reference(max: usize, policy: LineEndings, input: &[u8]) -> Received {
        let mut message = Vec::new();
        let mut bare = false;
        let mut start = 0;
        let mut i = 0;
        while i + 1 < input.len() {
            if !(input[i] == b'\r' && input[i + 1] == b'\n') {
                i += 1;
                continue;
            }
            let mut line = &input[start..i];
            i += 2;
            start = i;
            if line == b"." {
                let received = message.len() as u64;
                let outcome = if message.len() > max {
                    DataOutcome::TooLarge
                } else if bare && policy == LineEndings::Reject {
                    DataOutcome::BareLineEnding
                } else {
                    DataOutcome::Complete
                };
                if outcome != DataOutcome::Complete {
                    message.clear();
                }
                return (message, Some(outcome), input[i..].to_vec(), received);
            }
            if line.first() == Some(&b'.') {
                line = &line[1..];
            }
            for &byte in line {
                let is_bare = byte == b'\r' || byte == b'\n';
                bare |= is_bare;
                if is_bare && policy == LineEndings::Normalize {
                    message.extend_from_slice(b"\r\n");
                } else {
                    message.push(byte);
                }
            }
            message.extend_from_slice(b"\r\n");
        }
        panic!("reference inputs always hold a terminator");
    }

    const REJECT: LineEndings = LineEndings::Reject;
    const NORMALIZE: LineEndings = LineEndings::Normalize;

    #[test]
    fn table() {
        use DataOutcome::*;
        // input, policy, message, outcome, bytes left after the terminator
        type Case = (
            &'static [u8],
            LineEndings,
            &'static [u8],
            DataOutcome,
            &'static [u8],
        );
        let cases: &[Case] = &[
            (b".\r\n", REJECT, b"", Complete, b""),
            (b".\r\nQUIT\r\n", REJECT, b"", Complete, b"QUIT\r\n"),
            (b"a\r\n.\r\n", REJECT, b"a\r\n", Complete, b""),
            (b"\r\n.\r\n", REJECT, b"\r\n", Complete, b""),
            (b"..x\r\n.\r\n", REJECT, b".x\r\n", Complete, b""),
            (b"a\r\n..\r\n.\r\n", REJECT, b"a\r\n.\r\n", Complete, b""),
            (b"a\r\n...\r\n.\r\n", REJECT, b"a\r\n..\r\n", Complete, b""),
            (b"a.\r\n.b\r\n.\r\n", REJECT, b"a.\r\nb\r\n", Complete, b""),
            (b"a\r\n.\r\n.\r\n", REJECT, b"a\r\n", Complete, b".\r\n"),
            (b"a\nb\r\n.\r\n", NORMALIZE, b"a\r\nb\r\n", Complete, b""),
            (b"a\rb\r\n.\r\n", NORMALIZE, b"a\r\nb\r\n", Complete, b""),
            (b"a\r\r\n.\r\n", NORMALIZE, b"a\r\n\r\n", Complete, b""),
            (b"a\n\r\n.\r\n", NORMALIZE, b"a\r\n\r\n", Complete, b""),
            (b"\n..\r\n.\r\n", NORMALIZE, b"\r\n..\r\n", Complete, b""),
            (b".\r.\r\n.\r\n", NORMALIZE, b"\r\n.\r\n", Complete, b""),
            (b".\n\r\n.\r\n", NORMALIZE, b"\r\n\r\n", Complete, b""),
            (b"a\nb\r\n.\r\n", REJECT, b"", BareLineEnding, b""),
            (b"a\rb\r\n.\r\n", REJECT, b"", BareLineEnding, b""),
            (b".\r.\r\n.\r\nX", REJECT, b"", BareLineEnding, b"X"),
        ];
        for (input, policy, message, outcome, leftover) in cases {
            let got = whole(100, *policy, input);
            let expected = (message.to_vec(), Some(*outcome), leftover.to_vec());
            assert_eq!(
                (got.0, got.1, got.2),
                expected,
                "input {input:?} {policy:?}"
            );
        }
    }

    #[test]
    fn smuggled_terminators_never_end_the_message() {
        let smuggled: &[&[u8]] = &[b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r\n.\r"];
        for fake in smuggled {
            let mut input = b"MAIL 1\r\nbody".to_vec();
            input.extend_from_slice(fake);
            input.extend_from_slice(b"MAIL FROM:<evil@x>\r\nend\r\n.\r\nRSET\r\n");
            for policy in [REJECT, NORMALIZE] {
                let mut receiver = DataReceiver::new(1000, policy);
                let mut src = BytesMut::from(&input[..]);
                let mut out = BytesMut::new();
                let outcome = receiver.feed(&mut src, &mut out);
                assert_eq!(&src[..], b"RSET\r\n", "{fake:?} {policy:?}");
                let expected = match policy {
                    LineEndings::Reject => DataOutcome::BareLineEnding,
                    LineEndings::Normalize => DataOutcome::Complete,
                };
                assert_eq!(outcome, Some(expected), "{fake:?}");
                // Nothing more comes out of the same message.
                assert_eq!(receiver.feed(&mut src, &mut out), Some(expected));
                assert_eq!(&src[..], b"RSET\r\n");
                if policy == NORMALIZE {
                    assert!(out.ends_with(b"MAIL FROM:<evil@x>\r\nend\r\n"), "{out:?}");
                    assert!(out.starts_with(b"MAIL 1\r\nbody\r\n"), "{out:?}");
                } else {
                    assert!(out.is_empty());
                }
            }
        }
        let normalized = whole(1000, NORMALIZE, b"x\n.\ny\r.\rz\r\n.\r\n");
        assert_eq!(normalized.0, b"x\r\n.\r\ny\r\n.\r\nz\r\n");
    }

    #[test]
    fn size_limit_counts_unstuffed_octets() {
        // Exactly at the limit: "..ab\r\n" unstuffs to 5 octets.
        let at_limit = whole(5, REJECT, b"..ab\r\n.\r\n");
        assert_eq!(at_limit.1, Some(DataOutcome::Complete));
        assert_eq!(at_limit.3, 5);
        let over = whole(4, REJECT, b"..ab\r\n.\r\nNEXT");
        assert_eq!(over.1, Some(DataOutcome::TooLarge));
        assert!(over.0.is_empty());
        assert_eq!(over.2, b"NEXT");
        // Normalised bare line endings count as two octets.
        let normalized = whole(4, NORMALIZE, b"a\nb\r\n.\r\n");
        assert_eq!(
            (normalized.1, normalized.3),
            (Some(DataOutcome::TooLarge), 6)
        );
        // TooLarge wins over BareLineEnding.
        let both = whole(3, REJECT, b"a\nbcdef\r\n.\r\n");
        assert_eq!(both.1, Some(DataOutcome::TooLarge));
    }

    #[test]
    fn oversize_message_keeps_memory_bounded() {
        let max = 10_000;
        let mut receiver = DataReceiver::new(max, REJECT);
        let mut out = BytesMut::new();
        let mut src = BytesMut::new();
        let line = [b'm'; 998];
        for _ in 0..2000 {
            src.extend_from_slice(&line);
            src.extend_from_slice(b"\r\n");
            assert_eq!(receiver.feed(&mut src, &mut out), None);
            assert!(src.is_empty());
            assert!(out.capacity() <= 2 * max, "out capacity {}", out.capacity());
        }
        assert!(out.is_empty());
        src.extend_from_slice(b".\r\nQUIT\r\n");
        assert_eq!(
            receiver.feed(&mut src, &mut out),
            Some(DataOutcome::TooLarge)
        );
        assert_eq!(receiver.received(), 2000 * 1000);
        assert_eq!(&src[..], b"QUIT\r\n");
        assert!(src.capacity() < 64 * 1024);
    }

    #[test]
    fn bare_line_ending_under_reject_stops_buffering() {
        let mut receiver = DataReceiver::new(usize::MAX, REJECT);
        let mut out = BytesMut::new();
        let mut src = BytesMut::from(&b"a\nb"[..]);
        assert_eq!(receiver.feed(&mut src, &mut out), None);
        for _ in 0..100 {
            src.extend_from_slice(&[b'q'; 1000]);
            assert_eq!(receiver.feed(&mut src, &mut out), None);
            assert_eq!(out.capacity(), 0);
        }
        src.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(
            receiver.feed(&mut src, &mut out),
            Some(DataOutcome::BareLineEnding)
        );
        assert_eq!(receiver.received(), 100_000 + 5);
    }

    /// Inputs that put every special sequence at every possible boundary.
    const SPLIT_INPUTS: &[&[u8]] = &[
        b".\r\nNEXT\r\n",
        b"a\r\n.\r\nNEXT",
        b"..x\r\n...\r\n.\r.\r\n.\n\r\n\r\n.\r\nNEXT\r\n",
        b"x\n.\ny\n.\r\nz\r\n.\nw\r.\rv\r\n.\rq\r\r\n.\r\nQUIT\r\n",
        b"\r\r\n\n\r\n.\r\r\n..\r\n.\r\n",
        b"line one\r\n.line two\r\n\r\n.\r\n.\r\n",
    ];

    #[test]
    fn every_split_gives_the_same_result() {
        for input in SPLIT_INPUTS {
            for policy in [REJECT, NORMALIZE] {
                for max in [8, 1000] {
                    let one = whole(max, policy, input);
                    assert_eq!(one, reference(max, policy, input), "{input:?} {policy:?}");
                    for at in 0..=input.len() {
                        let (a, b) = input.split_at(at);
                        assert_eq!(run(max, policy, &[a, b]), one, "{input:?} at {at}");
                    }
                    for a in 0..=input.len() {
                        for b in a..=input.len() {
                            let parts = [&input[..a], &input[a..b], &input[b..]];
                            assert_eq!(run(max, policy, &parts), one, "{input:?} at {a},{b}");
                        }
                    }
                    let bytes: Vec<&[u8]> = input.chunks(1).collect();
                    assert_eq!(run(max, policy, &bytes), one, "{input:?} byte by byte");
                }
            }
        }
    }

    use crate::proto::test_rng::XorShift;

    #[test]
    fn random_inputs_match_the_reference() {
        let alphabet = b"\r\r\r\n\n\n...xx";
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for case in 0..5000 {
            let len = rng.below(40);
            let mut input: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect();
            // Always a real terminator, then a pipelined command.
            input.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
            let policy = if rng.below(2) == 0 { REJECT } else { NORMALIZE };
            let max = if rng.below(3) == 0 {
                rng.below(30)
            } else {
                1000
            };
            let mut chunks = Vec::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let (chunk, tail) = rest.split_at(1 + rng.below(rest.len()).min(5));
                chunks.push(chunk);
                rest = tail;
            }
            let got = run(max, policy, &chunks);
            assert_eq!(
                got,
                reference(max, policy, &input),
                "case {case}: {input:?} {policy:?} max {max}"
            );
        }
    }

    /// Long lines of ordinary text with the odd special byte: the block
    /// scan that skips plain lines many bytes at a time must agree with the
    /// reference wherever the special bytes fall relative to its blocks.
    #[test]
    fn long_plain_lines_with_rare_special_bytes_match_the_reference() {
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        for case in 0..3000 {
            let mut input = Vec::new();
            for _ in 0..rng.below(12) {
                for _ in 0..rng.below(300) {
                    input.push(match rng.below(200) {
                        0 => b'\r',
                        1 => b'\n',
                        2..=5 => b'.',
                        _ => b'x',
                    });
                }
                input.extend_from_slice(b"\r\n");
                if rng.below(8) == 0 {
                    input.push(b'.');
                }
            }
            input.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
            let policy = if rng.below(2) == 0 { REJECT } else { NORMALIZE };
            let max = if rng.below(4) == 0 {
                rng.below(2000)
            } else {
                1 << 20
            };
            let expected = reference(max, policy, &input);
            assert_eq!(whole(max, policy, &input), expected, "case {case} whole");
            let cut = rng.below(input.len());
            let (a, b) = input.split_at(cut);
            assert_eq!(
                run(max, policy, &[a, b]),
                expected,
                "case {case} cut at {cut}"
            );
            let step = 1 + rng.below(130);
            let pieces: Vec<&[u8]> = input.chunks(step).collect();
            assert_eq!(
                run(max, policy, &pieces),
                expected,
                "case {case} in {step}s"
            );
        }
    }
}
