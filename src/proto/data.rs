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
        if self.state != State::Done {
            let consumed = self.scan(src, out);
            src.advance(consumed);
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

    /// Runs the state machine over `buf`; returns how many bytes it used.
    ///
    /// Content passes through in runs: `run` is where the bytes not yet
    /// written start, and a run is written in one piece when a byte must be
    /// dropped or rewritten, or at the end of `buf`.
    fn scan(&mut self, buf: &[u8], out: &mut BytesMut) -> usize {
        let mut run = 0;
        let mut i = 0;
        while let Some(&byte) = buf.get(i) {
            match self.state {
                State::LineStart => {
                    if byte == b'.' {
                        self.write(out, &buf[run..i]);
                        i += 1;
                        run = i;
                        self.state = State::Dot;
                    } else {
                        self.state = State::InLine;
                    }
                }
                State::InLine => {
                    let Some(offset) = memchr::memchr2(b'\r', b'\n', &buf[i..]) else {
                        i = buf.len();
                        continue;
                    };
                    let at = i + offset;
                    i = at + 1;
                    if buf[at] == b'\r' {
                        // The common case, a CRLF followed by a line that
                        // does not start with a dot, without going through
                        // the states one byte at a time.
                        match (buf.get(at + 1), buf.get(at + 2)) {
                            (Some(b'\n'), Some(&next)) if next != b'.' => i = at + 2,
                            _ => self.state = State::AfterCr,
                        }
                    } else if self.bare(out) {
                        self.write(out, &buf[run..at]);
                        self.write(out, b"\r\n");
                        run = i;
                    }
                }
                State::AfterCr => {
                    if byte == b'\n' {
                        i += 1;
                        self.state = State::LineStart;
                    } else {
                        // The CR before `i` was bare (it is in the run, or
                        // was written by the previous call).
                        if self.bare(out) {
                            self.write(out, &buf[run..i]);
                            self.write(out, b"\n");
                            run = i;
                        }
                        self.state = State::InLine;
                    }
                }
                State::Dot => {
                    if byte == b'\r' {
                        i += 1;
                        run = i;
                        self.state = State::DotCr;
                    } else {
                        self.state = State::InLine;
                    }
                }
                State::DotCr => {
                    if byte == b'\n' {
                        self.state = State::Done;
                        return i + 1;
                    }
                    // The held-back CR was bare: the dot was a stuffed one.
                    let bare_cr: &[u8] = if self.bare(out) { b"\r\n" } else { b"\r" };
                    self.write(out, bare_cr);
                    self.state = State::InLine;
                }
                State::Done => return i,
            }
        }
        self.write(out, &buf[run..]);
        buf.len()
    }

    /// Records a bare CR or LF; true if it must be rewritten as CRLF.
    fn bare(&mut self, out: &mut BytesMut) -> bool {
        match self.policy {
            LineEndings::Normalize => true,
            LineEndings::Reject => {
                if !self.bare_line_ending {
                    self.bare_line_ending = true;
                    *out = BytesMut::new();
                }
                false
            }
        }
    }

    /// Counts `content` and appends it unless the message is being drained.
    fn write(&mut self, out: &mut BytesMut, content: &[u8]) {
        if content.is_empty() {
            return;
        }
        self.received = self.received.saturating_add(content.len() as u64);
        if self.received > self.max_bytes && !self.too_large {
            self.too_large = true;
            *out = BytesMut::new();
        }
        if !self.too_large && !self.bare_line_ending {
            out.extend_from_slice(content);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Result of receiving one input: message, outcome, bytes left, count.
    type Received = (Vec<u8>, Option<DataOutcome>, Vec<u8>, u64);

    /// Feeds `chunks` in turn; after the outcome, later chunks only pile up
    /// in `src` as the next command would.
    fn run(max: usize, policy: LineEndings, chunks: &[&[u8]]) -> Received {
        let mut receiver = DataReceiver::new(max, policy);
        let mut src = BytesMut::new();
        let mut out = BytesMut::new();
        let mut outcome = None;
        for chunk in chunks {
            src.extend_from_slice(chunk);
            if outcome.is_none() {
                outcome = receiver.feed(&mut src, &mut out);
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
}
