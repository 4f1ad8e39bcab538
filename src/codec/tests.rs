//! Decoder tests: whole conversations go through the codec, with a real
//! [`Session`] choosing the input mode after each frame as the connection
//! driver does. However the input is cut into reads, the frames, replies and
//! message bodies must be the same.

use std::sync::Arc;

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use super::*;
use crate::config::Config;
use crate::info::{Identity, SessionInfo};
use crate::proto::{Address, MailParams};
use crate::reply_conv::Delivery;
use crate::session::{Action, Check, Received, Session};

/// What came out of the codec and the session, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Command(Result<Command, CommandError>),
    AuthLine(Vec<u8>),
    TooLong,
    DataEnd(DataOutcome),
    BdatEnd(BdatOutcome),
    /// A reply, as sent on the wire.
    Reply(String),
    /// The body of a delivered message.
    Message(Vec<u8>),
}

/// A connection without a socket: the codec, the session, the read buffer.
struct Conn {
    codec: SmtpCodec,
    session: Session,
    src: BytesMut,
    events: Vec<Event>,
    closed: bool,
    /// The largest read buffer and held body seen between reads.
    peak_src: usize,
    peak_body: usize,
}

impl Conn {
    fn new(config: Config) -> Self {
        let codec = SmtpCodec::new(config.max_line_len, config.line_endings);
        let info = SessionInfo::new(
            "192.0.2.1:4000".parse().unwrap(),
            "127.0.0.1:25".parse().unwrap(),
        );
        let mut session = Session::new(Arc::new(config), None, info);
        let greeting = session.greeting(None);
        let mut conn = Conn {
            codec,
            session,
            src: BytesMut::new(),
            events: Vec::new(),
            closed: false,
            peak_src: 0,
            peak_body: 0,
        };
        conn.perform(greeting);
        conn
    }

    /// One read from the client: decode all complete frames.
    fn feed(&mut self, bytes: &[u8]) {
        if self.closed {
            return;
        }
        self.src.extend_from_slice(bytes);
        while let Some(frame) = self.codec.decode(&mut self.src).unwrap() {
            let action = self.on_frame(frame);
            self.perform(action);
            if self.closed {
                return;
            }
            self.codec.set_mode(self.session.input_mode());
        }
        self.peak_src = self.peak_src.max(self.src.len());
        self.peak_body = self.peak_body.max(self.codec.body_len());
    }

    /// As `conn.rs` does: body outcomes become [`Received`] values.
    fn on_frame(&mut self, frame: Frame) -> Action {
        match frame {
            Frame::Command(cmd) => {
                self.events.push(Event::Command(cmd.clone()));
                self.session.command(cmd)
            }
            Frame::AuthResponse(line) => {
                self.events.push(Event::AuthLine(line.to_vec()));
                self.session.auth_response(&line)
            }
            Frame::LineTooLong => {
                self.events.push(Event::TooLong);
                self.session.line_too_long()
            }
            Frame::DataEnd(outcome) => {
                self.events.push(Event::DataEnd(outcome));
                let received = match outcome {
                    DataOutcome::Complete => Received::Complete(self.codec.take_body()),
                    DataOutcome::TooLarge => Received::TooLarge,
                    DataOutcome::BareLineEnding => Received::BareLineEnding,
                };
                if !matches!(received, Received::Complete(_)) {
                    self.codec.discard_body();
                }
                self.session.received(received)
            }
            Frame::BdatEnd(outcome) => {
                self.events.push(Event::BdatEnd(outcome));
                let received = match outcome {
                    BdatOutcome::TooLarge => Received::TooLarge,
                    BdatOutcome::Complete | BdatOutcome::Discarded => {
                        Received::Complete(Bytes::new())
                    }
                };
                match self.session.received(received) {
                    Action::Deliver(mut ctx) => {
                        ctx.set_message(self.codec.take_body());
                        Action::Deliver(ctx)
                    }
                    other => {
                        if matches!(&other, Action::Reply(r) if r.code() >= 400) {
                            self.codec.discard_body();
                        }
                        other
                    }
                }
            }
        }
    }

    /// Hooks say yes, authentication succeeds, the service accepts.
    fn perform(&mut self, action: Action) {
        match action {
            Action::Reply(r) | Action::Receive(Some(r)) | Action::StartTls(r) => self.reply(&r),
            Action::Receive(None) => {}
            Action::Close(r) => {
                self.reply(&r);
                self.closed = true;
            }
            Action::Check(Check::Auth(req)) => {
                let identity = Identity::new(req.username().to_owned());
                let next = self.session.authenticated(Ok(identity));
                self.perform(next);
            }
            Action::Check(_) => {
                let next = self.session.checked(Reply::ok());
                self.perform(next);
            }
            Action::AwaitAnswer { .. } => unreachable!("this driver never streams"),
            Action::Deliver(ctx) => {
                self.events
                    .push(Event::Message(ctx.message().unwrap().to_vec()));
                let n = ctx.recipients().len();
                for r in self.session.delivered(Delivery::All(Reply::ok()), n) {
                    self.reply(&r);
                }
            }
        }
    }

    fn reply(&mut self, r: &Reply) {
        let mut wire = BytesMut::new();
        self.codec.encode(r, &mut wire).unwrap();
        self.events
            .push(Event::Reply(String::from_utf8(wire.to_vec()).unwrap()));
    }

    fn frames(&self) -> impl Iterator<Item = &Event> {
        self.events
            .iter()
            .filter(|e| !matches!(e, Event::Reply(_) | Event::Message(_)))
    }

    fn commands(&self) -> Vec<&Command> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Command(Ok(c)) => Some(c),
                _ => None,
            })
            .collect()
    }

    fn messages(&self) -> Vec<&[u8]> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Message(m) => Some(&m[..]),
                _ => None,
            })
            .collect()
    }

    /// The code and enhanced status of every reply, e.g. `503 5.5.1`.
    fn reply_heads(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Reply(wire) => Some(head_of(wire)),
                _ => None,
            })
            .collect()
    }
}

/// `250` for plain and multi-line replies, `250 2.1.0` with a status.
fn head_of(wire: &str) -> String {
    let last = wire.trim_end().lines().last().unwrap_or_default();
    let mut words = last.split(' ');
    let code = words.next().unwrap_or_default();
    match words.next() {
        Some(s) if s.split('.').count() == 3 && s.split('.').all(|p| p.parse::<u16>().is_ok()) => {
            format!("{code} {s}")
        }
        _ => code.to_owned(),
    }
}

fn whole(config: &Config, input: &[u8]) -> Conn {
    let mut conn = Conn::new(config.clone());
    conn.feed(input);
    conn
}

fn in_chunks(config: &Config, input: &[u8], size: usize) -> Conn {
    let mut conn = Conn::new(config.clone());
    for chunk in input.chunks(size) {
        conn.feed(chunk);
    }
    conn
}

/// Checks that two reads cut at every offset, and one read per byte, give
/// the same events as one read; returns the one-read connection.
#[track_caller]
fn same_at_every_split(config: &Config, input: &[u8]) -> Conn {
    let reference = whole(config, input);
    assert!(reference.closed, "the script should end with QUIT");
    for at in 0..=input.len() {
        let mut conn = Conn::new(config.clone());
        conn.feed(&input[..at]);
        conn.feed(&input[at..]);
        assert_eq!(conn.events, reference.events, "split at {at}");
    }
    let bytewise = in_chunks(config, input, 1);
    assert_eq!(bytewise.events, reference.events, "byte by byte");
    reference
}

fn mail_from(addr: &str) -> Command {
    Command::Mail {
        from: Some(Address::parse(addr).unwrap()),
        params: MailParams::default(),
    }
}

#[test]
fn pipelined_conversation_is_the_same_however_it_is_cut() {
    let config = Config {
        auth: true,
        allow_insecure_auth: true,
        ..Config::default()
    };
    let input = concat!(
        "EHLO client.example\r\n",
        "AUTH PLAIN\r\n",
        "AGFsaWNlAHNlY3JldA==\r\n",
        "MAIL FROM:<a@b.c>\r\n",
        "RCPT TO:<d@e.f>\r\n",
        "RCPT TO:<g@h.i>\r\n",
        "DATA\r\n",
        "Subject: hi\r\n\r\n..leading dot\r\nbody\r\n.\r\n",
        "MAIL FROM:<>\r\n",
        "RCPT TO:<Postmaster>\r\n",
        // Raw chunks: the dot line and the verb are content, not syntax.
        "BDAT 7\r\n",
        "a\r\n.\r\nb",
        "BDAT 4 LAST\r\n",
        "MAIL",
        "NOOP\r\n",
        "QUIT\r\n",
    )
    .as_bytes();
    let conn = same_at_every_split(&config, input);
    assert_eq!(
        conn.reply_heads(),
        [
            "220",
            "250",
            "334",
            "235 2.7.0",
            "250 2.1.0",
            "250 2.1.5",
            "250 2.1.5",
            "354",
            "250 2.0.0",
            "250 2.1.0",
            "250 2.1.5",
            "250 2.0.0",
            "250 2.0.0",
            "250 2.0.0",
            "221 2.0.0",
        ]
    );
    assert_eq!(
        conn.messages(),
        [
            &b"Subject: hi\r\n\r\n.leading dot\r\nbody\r\n"[..],
            &b"a\r\n.\r\nbMAIL"[..]
        ]
    );
    let frames: Vec<_> = conn.frames().cloned().collect();
    assert_eq!(frames.len(), 16, "{frames:#?}");
    assert_eq!(frames[2], Event::AuthLine(b"AGFsaWNlAHNlY3JldA==".to_vec()));
    assert_eq!(frames[3], Event::Command(Ok(mail_from("a@b.c"))));
    assert_eq!(frames[7], Event::DataEnd(DataOutcome::Complete));
    assert_eq!(frames[11], Event::BdatEnd(BdatOutcome::Complete));
    assert_eq!(frames[13], Event::BdatEnd(BdatOutcome::Complete));
    assert_eq!(frames[14], Event::Command(Ok(Command::Noop)));
    assert_eq!(
        conn.session.info().identity().map(Identity::as_str),
        Some("alice")
    );
    assert!(conn.src.is_empty());
}

/// Line endings that a lax receiver takes for the end of the message.
const SMUGGLING: [&str; 5] = ["\n.\n", "\n.\r\n", "\r\n.\n", "\r.\r", "\r\n.\r"];

/// The message kept under `Normalize`: bare line endings become CRLF, a
/// dot after a real CRLF is unstuffed, anything else is content.
const NORMALIZED: [&str; 5] = [
    "Subject: t\r\n\r\nhello\r\n.\r\nMAIL FROM:<evil@x>\r\n",
    "Subject: t\r\n\r\nhello\r\n.\r\nMAIL FROM:<evil@x>\r\n",
    "Subject: t\r\n\r\nhello\r\n\r\nMAIL FROM:<evil@x>\r\n",
    "Subject: t\r\n\r\nhello\r\n.\r\nMAIL FROM:<evil@x>\r\n",
    "Subject: t\r\n\r\nhello\r\n\r\nMAIL FROM:<evil@x>\r\n",
];

#[test]
fn smuggled_end_of_data_never_ends_the_message() {
    for (sequence, normalized) in SMUGGLING.iter().zip(NORMALIZED) {
        let input = format!(
            "EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n\
             Subject: t\r\n\r\nhello{sequence}MAIL FROM:<evil@x>\r\n.\r\nQUIT\r\n"
        );
        for policy in [LineEndings::Reject, LineEndings::Normalize] {
            let config = Config {
                line_endings: policy,
                ..Config::default()
            };
            let name = format!("{sequence:?} under {policy:?}");
            let conn = same_at_every_split(&config, input.as_bytes());
            let ends: Vec<_> = conn
                .frames()
                .filter(|e| matches!(e, Event::DataEnd(_)))
                .collect();
            let (outcome, reply, messages): (_, _, &[&[u8]]) = match policy {
                LineEndings::Reject => (DataOutcome::BareLineEnding, "550 5.5.2", &[]),
                LineEndings::Normalize => {
                    (DataOutcome::Complete, "250 2.0.0", &[normalized.as_bytes()])
                }
            };
            assert_eq!(ends, [&Event::DataEnd(outcome)], "{name}");
            assert_eq!(conn.messages(), messages, "{name}");
            assert_eq!(
                conn.reply_heads(),
                [
                    "220",
                    "250",
                    "250 2.1.0",
                    "250 2.1.5",
                    "354",
                    reply,
                    "221 2.0.0"
                ],
                "{name}"
            );
            // The smuggled MAIL never reaches the session as a command.
            assert_eq!(
                conn.commands(),
                [
                    &Command::Ehlo { domain: "c".into() },
                    &mail_from("a@b.c"),
                    &Command::Rcpt {
                        to: Address::parse("d@e.f").unwrap(),
                        params: Default::default()
                    },
                    &Command::Data,
                    &Command::Quit,
                ],
                "{name}"
            );
        }
    }
}

#[test]
fn smuggled_end_of_data_at_the_start_of_the_body() {
    for sequence in SMUGGLING {
        let input = format!("{DATA_START}{sequence}MAIL FROM:<evil@x>\r\n.\r\nQUIT\r\n");
        for policy in [LineEndings::Reject, LineEndings::Normalize] {
            let config = Config {
                line_endings: policy,
                ..Config::default()
            };
            let name = format!("{sequence:?} under {policy:?}");
            let conn = same_at_every_split(&config, input.as_bytes());
            let ends = conn
                .frames()
                .filter(|e| matches!(e, Event::DataEnd(_)))
                .count();
            assert_eq!(ends, 1, "{name}");
            assert_eq!(conn.commands().len(), 5, "{name}: {:?}", conn.commands());
            assert!(!conn.commands().contains(&&mail_from("evil@x")), "{name}");
            let messages = conn.messages();
            match policy {
                LineEndings::Reject => assert!(messages.is_empty(), "{name}"),
                LineEndings::Normalize => {
                    assert_eq!(messages.len(), 1, "{name}");
                    assert!(
                        messages[0].ends_with(b"\r\nMAIL FROM:<evil@x>\r\n"),
                        "{name}"
                    );
                }
            }
        }
    }
}

#[test]
fn empty_body_is_a_message() {
    // 9
    let input = format!("{DATA_START}.\r\nQUIT\r\n");
    let conn = same_at_every_split(&Config::default(), input.as_bytes());
    assert_eq!(conn.messages(), [&b""[..]]);
    assert_eq!(
        conn.reply_heads(),
        [
            "220",
            "250",
            "250 2.1.0",
            "250 2.1.5",
            "354",
            "250 2.0.0",
            "221 2.0.0"
        ]
    );
}

#[test]
fn bdat_chunk_refused_out_of_sequence_is_never_read_as_commands() {
    let chunk = "MAIL FROM:<evil@x>\r\n";
    let input = format!("EHLO c\r\nBDAT {} LAST\r\n{chunk}QUIT\r\n", chunk.len());
    let conn = same_at_every_split(&Config::default(), input.as_bytes());
    assert_eq!(conn.reply_heads(), ["220", "250", "503 5.5.1", "221 2.0.0"]);
    assert!(
        conn.frames()
            .any(|e| *e == Event::BdatEnd(BdatOutcome::Discarded))
    );
    assert!(
        !conn
            .commands()
            .iter()
            .any(|c| matches!(c, Command::Mail { .. }))
    );
}

#[test]
fn overlong_command_line_is_reported_once_and_skipped() {
    let input = format!(
        "EHLO c\r\nNOOP {}\r\nMAIL FROM:<a@b.c>\r\nQUIT\r\n",
        "a".repeat(10_000)
    );
    let config = Config::default();
    let conn = same_at_every_split(&config, input.as_bytes());
    let frames: Vec<_> = conn.frames().cloned().collect();
    assert_eq!(
        frames,
        [
            Event::Command(Ok(Command::Ehlo { domain: "c".into() })),
            Event::TooLong,
            Event::Command(Ok(mail_from("a@b.c"))),
            Event::Command(Ok(Command::Quit)),
        ]
    );
    assert_eq!(
        conn.reply_heads(),
        ["220", "250", "500 5.5.2", "250 2.1.0", "221 2.0.0"]
    );
    // Read in pieces, the buffer never holds much more than one line.
    for size in [1, 7, 100, 1500] {
        let conn = in_chunks(&config, input.as_bytes(), size);
        assert_eq!(conn.events, whole(&config, input.as_bytes()).events);
        assert!(
            conn.peak_src <= config.max_line_len + size,
            "reads of {size}: buffer grew to {}",
            conn.peak_src
        );
    }
}

#[test]
fn line_exactly_at_the_limit_is_accepted() {
    let config = Config {
        max_line_len: 64,
        ..Config::default()
    };
    let fits = format!("NOOP {}\r\n", "a".repeat(64 - 7));
    let too_long = format!("NOOP {}\r\n", "a".repeat(64 - 6));
    assert_eq!(fits.len(), 64);
    let input = format!("{fits}{too_long}{fits}QUIT\r\n");
    let conn = same_at_every_split(&config, input.as_bytes());
    assert_eq!(
        conn.reply_heads(),
        ["220", "250 2.0.0", "500 5.5.2", "250 2.0.0", "221 2.0.0"]
    );
}

/// EHLO, MAIL and RCPT, then `DATA`.
const DATA_START: &str = "EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n";

#[test]
fn oversize_body_is_drained_with_bounded_buffers() {
    let config = Config {
        max_message_bytes: 4096,
        ..Config::default()
    };
    let line = format!("{}\r\n", "x".repeat(98));
    let mut input = DATA_START.to_owned();
    for _ in 0..10_000 {
        input.push_str(&line);
    }
    input.push_str(".\r\nNOOP\r\nQUIT\r\n");
    for size in [1000, 4096, 65536] {
        let conn = in_chunks(&config, input.as_bytes(), size);
        assert_eq!(
            conn.reply_heads(),
            [
                "220",
                "250",
                "250 2.1.0",
                "250 2.1.5",
                "354",
                "552 5.3.4",
                "250 2.0.0",
                "221 2.0.0"
            ],
            "reads of {size}"
        );
        assert!(
            conn.frames()
                .any(|e| *e == Event::DataEnd(DataOutcome::TooLarge))
        );
        assert!(
            conn.peak_body <= 4096,
            "reads of {size}: body {}",
            conn.peak_body
        );
        assert!(
            conn.peak_src <= size.max(config.max_line_len),
            "reads of {size}: buffer {}",
            conn.peak_src
        );
        assert!(conn.messages().is_empty());
    }
    // 10: the one final reply comes only after the terminator.
    let cut = input.len() - ".\r\nNOOP\r\nQUIT\r\n".len();
    let mut conn = in_chunks(&config, &input.as_bytes()[..cut], 4096);
    assert_eq!(conn.reply_heads().last().map(String::as_str), Some("354"));
    conn.feed(&input.as_bytes()[cut..]);
    assert_eq!(
        conn.reply_heads()[5..],
        ["552 5.3.4", "250 2.0.0", "221 2.0.0"]
    );
}

#[test]
fn body_exactly_at_the_limit_is_kept() {
    let config = Config {
        max_message_bytes: 100,
        ..Config::default()
    };
    let body = format!("{}\r\n", "y".repeat(98));
    assert_eq!(body.len(), 100);
    // The second message is one line over the limit.
    let input = format!("{DATA_START}{body}.\r\n{DATA_START}{body}z\r\n.\r\nQUIT\r\n");
    let conn = same_at_every_split(&config, input.as_bytes());
    assert_eq!(conn.messages(), [body.as_bytes()]);
    let heads = conn.reply_heads();
    assert_eq!(heads[5], "250 2.0.0");
    assert_eq!(heads[heads.len() - 2..], ["552 5.3.4", "221 2.0.0"]);
}

#[test]
fn oversize_bdat_chunk_is_drained_with_bounded_buffers() {
    let config = Config {
        max_message_bytes: 4096,
        ..Config::default()
    };
    let first = "a".repeat(3000);
    let second = "b".repeat(100_000);
    let input = format!(
        "EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n\
         BDAT 3000\r\n{first}BDAT 100000 LAST\r\n{second}NOOP\r\nQUIT\r\n"
    );
    for size in [1, 1000, 65536] {
        let conn = in_chunks(&config, input.as_bytes(), size);
        assert_eq!(
            conn.reply_heads(),
            [
                "220",
                "250",
                "250 2.1.0",
                "250 2.1.5",
                "250 2.0.0",
                "552 5.3.4",
                "250 2.0.0",
                "221 2.0.0"
            ],
            "reads of {size}"
        );
        assert!(
            conn.frames()
                .any(|e| *e == Event::BdatEnd(BdatOutcome::TooLarge))
        );
        assert!(
            conn.peak_body <= 3000,
            "reads of {size}: body {}",
            conn.peak_body
        );
        assert!(
            conn.peak_src <= size.max(config.max_line_len),
            "reads of {size}: buffer {}",
            conn.peak_src
        );
        assert_eq!(conn.codec.body_len(), 0, "the refused message is freed");
    }
}

#[test]
fn bare_line_ending_body_is_drained_without_being_kept() {
    let mut input = DATA_START.to_owned();
    for _ in 0..1000 {
        input.push_str("bare\nline\n");
    }
    input.push_str("\r\n.\r\nQUIT\r\n");
    let conn = in_chunks(&Config::default(), input.as_bytes(), 512);
    assert_eq!(conn.peak_body, 0);
    assert_eq!(
        conn.reply_heads(),
        [
            "220",
            "250",
            "250 2.1.0",
            "250 2.1.5",
            "354",
            "550 5.5.2",
            "221 2.0.0"
        ]
    );
}

#[test]
fn encoder_writes_replies_in_wire_format() {
    let mut codec = SmtpCodec::new(512, LineEndings::Reject);
    let mut dst = BytesMut::new();
    codec
        .encode(Reply::new(250, (2, 1, 0), "Sender OK"), &mut dst)
        .unwrap();
    codec
        .encode(&Reply::plain(250, "mx Hello c\nPIPELINING"), &mut dst)
        .unwrap();
    assert_eq!(
        &dst[..],
        b"250 2.1.0 Sender OK\r\n250-mx Hello c\r\n250 PIPELINING\r\n"
    );
}

/// Streaming hands each read's body on with `take_chunk`. Once the handler
/// drops that chunk, the read buffer must own its memory again, so that the
/// next read reuses it instead of allocating (and, in `BytesMut`, doubling)
/// a new one per read.
#[test]
fn a_dropped_chunk_gives_the_read_buffer_its_memory_back() {
    let mut codec = SmtpCodec::new(512, LineEndings::Reject);
    codec.set_mode(InputMode::Data { max_bytes: 1 << 20 });
    let mut src = BytesMut::with_capacity(64 * 1024);
    src.extend_from_slice(&[b'x'; 1000]);
    src.extend_from_slice(b"\r\n");
    assert!(codec.decode(&mut src).unwrap().is_none(), "no end yet");
    let chunk = codec.take_chunk();
    assert!(!chunk.is_empty());
    assert!(src.is_empty(), "the whole read was body");
    assert!(
        !src.try_reclaim(64 * 1024),
        "the chunk still holds the memory"
    );
    drop(chunk);
    assert!(
        src.try_reclaim(64 * 1024),
        "the read buffer is the only owner again (capacity {})",
        src.capacity()
    );
}
