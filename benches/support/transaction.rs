//! One SMTP transaction as `smtp-source -d` sends it (MAIL, RCPT, DATA, the
//! body; each waits for its reply, so each arrives in a read of its own),
//! pushed through the codec and the session without sockets.

use bytes::BytesMut;
use smtpsrv::codec::{Frame, SmtpCodec};
use smtpsrv::proto::{DataOutcome, LineEndings, Reply};
use smtpsrv::session::{Action, Received, Session};
use smtpsrv::{Delivery, Server};
use tokio_util::codec::Decoder;

/// The client's side of one transaction: the four writes smtp-source makes.
pub struct Transaction {
    pub writes: Vec<Vec<u8>>,
}

impl Transaction {
    /// smtp-source's commands and a `size`-octet body of 76-column lines.
    pub fn new(size: usize) -> Self {
        let mut body = Vec::with_capacity(size + 200);
        body.extend_from_slice(b"From: <foo@client.example>\r\nTo: <foo@client.example>\r\n");
        body.extend_from_slice(b"Date: Tue, 1 Dec 2026 20:00:00 +0000\r\n");
        body.extend_from_slice(b"Message-Id: <1.2.3@client.example>\r\n\r\n");
        while body.len() < size {
            body.extend_from_slice(&[b'L'; 74]);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b".\r\n");
        Transaction {
            writes: vec![
                b"MAIL FROM:<foo@client.example>\r\n".to_vec(),
                b"RCPT TO:<foo@client.example>\r\n".to_vec(),
                b"DATA\r\n".to_vec(),
                body,
            ],
        }
    }
}

/// A session past EHLO with the codec in front of it, as a connection
/// holds them, minus the socket.
pub struct Wire {
    session: Session,
    codec: SmtpCodec,
    src: BytesMut,
    out: BytesMut,
}

impl Wire {
    /// A greeted session with the server's default settings.
    pub fn new() -> Self {
        let session = Server::builder().session(
            "192.0.2.1:40000".parse().unwrap(),
            "127.0.0.1:25".parse().unwrap(),
        );
        let mut wire = Wire {
            session,
            codec: SmtpCodec::new(1024, LineEndings::Reject),
            src: BytesMut::new(),
            out: BytesMut::new(),
        };
        wire.read(b"EHLO client.example\r\n");
        wire
    }

    /// One whole transaction; returns the bytes of replies it produced.
    pub fn transaction(&mut self, t: &Transaction) -> usize {
        let mut replied = 0;
        for write in &t.writes {
            replied += self.read(write);
        }
        replied
    }

    /// One socket read's worth of input: decode it all, queue the replies,
    /// then "flush" them.
    pub fn read(&mut self, input: &[u8]) -> usize {
        self.src.extend_from_slice(input);
        while let Some(frame) = self.codec.decode(&mut self.src).expect("decode") {
            let action = match frame {
                Frame::Command(c) => self.session.command(c),
                Frame::LineTooLong => self.session.line_too_long(),
                Frame::AuthResponse(l) => self.session.auth_response(&l),
                Frame::DataEnd(DataOutcome::Complete) => self
                    .session
                    .received(Received::Complete(self.codec.take_body())),
                Frame::DataEnd(_) | Frame::BdatEnd(_) => panic!("unexpected frame"),
            };
            match action {
                Action::Reply(r) | Action::Receive(Some(r)) => r.encode(&mut self.out),
                Action::Deliver(ctx) => {
                    let n = ctx.recipients().len();
                    drop(ctx);
                    for r in self.session.delivered(Delivery::All(Reply::ok()), n) {
                        r.encode(&mut self.out);
                    }
                }
                other => panic!("unexpected action {other:?}"),
            }
            self.codec.set_mode(self.session.input_mode());
        }
        let n = self.out.len();
        assert!(
            self.out.starts_with(b"2") || self.out.starts_with(b"3"),
            "{:?}",
            self.out
        );
        self.out.clear();
        n
    }
}
