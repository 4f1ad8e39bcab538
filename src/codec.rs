//! A tokio-util codec for SMTP: a thin adapter over the sans-IO receivers in
//! [`crate::proto`] that switches between command lines, AUTH lines, DATA
//! bodies and BDAT chunks as the session asks (see [`InputMode`]).
//!
//! The codec never lets a buffer grow past the limits it was given: an
//! over-long line is drained and reported once as [`Frame::LineTooLong`];
//! an over-size body is drained to its end and reported as too large.
//!
//! The message body accumulates inside the codec (across BDAT chunks too)
//! and is taken with [`SmtpCodec::take_body`] when the session has accepted
//! it, as a `Bytes` without another copy. A DATA body is split off the
//! input buffer rather than copied out of it ([`DataReceiver::feed_split`]):
//! a message that arrives into one buffer without dot-stuffed lines reaches
//! the handler without being copied at all, and shares that buffer's
//! allocation until it is dropped.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::proto::{
    BdatOutcome, BdatReceiver, Command, CommandError, DataOutcome, DataReceiver, LineEndings,
    LineEvent, LineReader, Reply,
};
use crate::session::InputMode;

/// One decoded unit of client input.
#[derive(Debug)]
pub enum Frame {
    /// A command line, parsed.
    Command(Result<Command, CommandError>),
    /// A line during an AUTH exchange (without CRLF).
    AuthResponse(BytesMut),
    /// A line longer than allowed; it was discarded up to its CRLF.
    LineTooLong,
    /// The end of a DATA body (`CRLF.CRLF` consumed).
    DataEnd(DataOutcome),
    /// The end of a BDAT chunk (exactly its octets consumed).
    BdatEnd(BdatOutcome),
}

#[derive(Debug)]
enum Mode {
    Command(LineReader, usize),
    Auth(LineReader, usize),
    Data(DataReceiver),
    Bdat(BdatReceiver),
}

/// The SMTP decoder/encoder.
#[derive(Debug)]
pub struct SmtpCodec {
    mode: Mode,
    max_line: usize,
    line_endings: LineEndings,
    body: BytesMut,
}

impl SmtpCodec {
    /// A codec reading commands of at most `max_line` octets.
    pub fn new(max_line: usize, line_endings: LineEndings) -> Self {
        SmtpCodec {
            mode: Mode::Command(LineReader::new(max_line), max_line),
            max_line,
            line_endings,
            body: BytesMut::new(),
        }
    }

    /// Switches to the input mode the session wants next. Staying in the
    /// same line mode keeps the reader's state.
    pub fn set_mode(&mut self, mode: InputMode) {
        match (mode, &self.mode) {
            (InputMode::Command { max_line }, Mode::Command(_, m)) if *m == max_line => {}
            (InputMode::AuthResponse { max_line }, Mode::Auth(_, m)) if *m == max_line => {}
            (InputMode::Command { max_line }, _) => {
                self.max_line = max_line;
                self.mode = Mode::Command(LineReader::new(max_line), max_line);
            }
            (InputMode::AuthResponse { max_line }, _) => {
                self.mode = Mode::Auth(LineReader::new(max_line), max_line);
            }
            (InputMode::Data { max_bytes }, _) => {
                self.body = BytesMut::new();
                self.mode = Mode::Data(DataReceiver::new(max_bytes, self.line_endings));
            }
            (
                InputMode::Bdat {
                    size,
                    room,
                    discard,
                    first,
                },
                _,
            ) => {
                if first {
                    self.body.clear();
                }
                self.mode = Mode::Bdat(if discard {
                    BdatReceiver::discard(size)
                } else {
                    BdatReceiver::new(size, room)
                });
            }
        }
    }

    /// Makes room for `additional` more octets of input at the end of
    /// `src` (the read buffer this codec decodes from).
    ///
    /// While a body is being received it was split off the front of `src`;
    /// growing `src` on its own would put the next input in another
    /// allocation, and joining that to the body would copy it. So when the
    /// two are still one piece of memory they grow together (the allocator
    /// can often extend large blocks in place), and the body stays a
    /// single uncopied run.
    pub fn reserve_input(&mut self, src: &mut BytesMut, additional: usize) {
        if src.capacity() - src.len() >= additional || self.body.is_empty() {
            src.reserve(additional);
            return;
        }
        let body_len = self.body.len();
        let mut joined = std::mem::take(&mut self.body);
        match joined.try_unsplit(std::mem::take(src)) {
            Ok(()) => {
                joined.reserve(additional);
                *src = joined.split_off(body_len);
                self.body = joined;
            }
            Err(rest) => {
                self.body = joined;
                *src = rest;
                src.reserve(additional);
            }
        }
    }

    /// Octets of message body held so far.
    pub fn body_len(&self) -> usize {
        self.body.len()
    }

    /// Frees the body held so far (the rest of the transfer is drained by
    /// the caller's decision, e.g. when the memory budget is exhausted).
    pub fn discard_body(&mut self) {
        self.body = BytesMut::new();
    }

    /// Takes the body received so far (streaming mode hands it on while
    /// the rest arrives); the buffer keeps its spare capacity.
    pub fn take_chunk(&mut self) -> Bytes {
        let chunk = self.body.split().freeze();
        if self.body.capacity() == 0 {
            // An empty remainder would still share the read buffer's
            // allocation: the read buffer could then never reuse it once
            // the chunk is dropped, and would allocate anew for every read.
            self.body = BytesMut::new();
        }
        chunk
    }

    /// The body received so far, e.g. to write it to a spill file.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Empties the body buffer (e.g. once it was written to a spill file).
    /// Its memory is let go: it is usually a piece of the input buffer,
    /// which can then be reused for the next read.
    pub fn clear_body(&mut self) {
        self.body = BytesMut::new();
    }

    /// Whether the body being received has already failed (over the size
    /// limit, a bare line ending under the rejecting policy); it is still
    /// drained to its end. For BDAT only the current chunk is known.
    pub fn body_failure(&self) -> Option<crate::body::BodyError> {
        use crate::body::BodyError;
        match &self.mode {
            Mode::Data(r) => r.failure().map(|f| match f {
                DataOutcome::BareLineEnding => BodyError::BareLineEnding,
                _ => BodyError::TooLarge,
            }),
            Mode::Bdat(r) if r.outcome() == BdatOutcome::TooLarge => Some(BodyError::TooLarge),
            _ => None,
        }
    }

    /// Takes the complete message body.
    pub fn take_body(&mut self) -> Bytes {
        std::mem::take(&mut self.body).freeze()
    }

    fn back_to_commands(&mut self) {
        self.mode = Mode::Command(LineReader::new(self.max_line), self.max_line);
    }
}

impl Decoder for SmtpCodec {
    type Item = Frame;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, io::Error> {
        let frame = match &mut self.mode {
            Mode::Command(reader, _) => match reader.poll_line(src) {
                None => None,
                Some(LineEvent::TooLong) => Some(Frame::LineTooLong),
                Some(LineEvent::Line(line)) => Some(Frame::Command(Command::parse(&line))),
            },
            Mode::Auth(reader, _) => match reader.poll_line(src) {
                None => None,
                Some(LineEvent::TooLong) => Some(Frame::LineTooLong),
                Some(LineEvent::Line(line)) => Some(Frame::AuthResponse(line)),
            },
            Mode::Data(receiver) => receiver.feed_split(src, &mut self.body).map(Frame::DataEnd),
            Mode::Bdat(receiver) => receiver.feed(src, &mut self.body).map(Frame::BdatEnd),
        };
        if matches!(frame, Some(Frame::DataEnd(_) | Frame::BdatEnd(_))) {
            self.back_to_commands();
        }
        Ok(frame)
    }
}

impl Encoder<Reply> for SmtpCodec {
    type Error = io::Error;

    fn encode(&mut self, reply: Reply, dst: &mut BytesMut) -> Result<(), io::Error> {
        reply.encode(dst);
        Ok(())
    }
}

impl Encoder<&Reply> for SmtpCodec {
    type Error = io::Error;

    fn encode(&mut self, reply: &Reply, dst: &mut BytesMut) -> Result<(), io::Error> {
        reply.encode(dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
