//! The whole protocol engine (codec + session) driven by arbitrary client
//! bytes: no panic, every reply well formed, state invariants hold.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use smtpsrv::codec::{Frame, SmtpCodec};
use smtpsrv::proto::{LineEndings, Reply};
use smtpsrv::session::{Action, Check, Received};
use smtpsrv::{Delivery, Identity, Server};
use tokio_util::codec::Decoder;

fn check_reply(r: &Reply) {
    let mut wire = BytesMut::new();
    r.encode(&mut wire);
    let text = std::str::from_utf8(&wire).expect("replies are UTF-8");
    let lines: Vec<&str> = text.split_terminator("\r\n").collect();
    assert!(!lines.is_empty());
    for (i, line) in lines.iter().enumerate() {
        assert!(line.len() + 2 <= 512, "reply line too long");
        assert!(line.as_bytes()[..3].iter().all(u8::is_ascii_digit));
        let sep = line.as_bytes().get(3).copied().unwrap_or(b' ');
        assert_eq!(sep, if i + 1 == lines.len() { b' ' } else { b'-' });
        assert!(!line.contains('\r') && !line.contains('\n'));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else { return };
    let mut builder = Server::builder()
        .max_message_bytes(4096)
        .max_recipients(5)
        .allow_insecure_auth(flags & 1 != 0)
        .lmtp(flags & 2 != 0)
        .require_auth(flags & 4 != 0);
    if flags & 8 != 0 {
        builder = builder.authenticator(tower::service_fn(|_: smtpsrv::Authenticate| async {
            Ok::<_, smtpsrv::BoxError>(Some(Identity::new("u")))
        }));
    }
    let mut session = builder.session("192.0.2.1:1000".parse().unwrap(), "127.0.0.1:25".parse().unwrap());
    let mut codec = SmtpCodec::new(1024, LineEndings::Reject);
    let mut src = BytesMut::new();
    let step = 1 + (flags as usize >> 4);
    let mut replies = 0usize;
    // Half the inputs call the service as the body begins (streaming mode):
    // their transactions end in AwaitAnswer instead of Deliver.
    let streaming = input.len() % 2 == 1;
    for chunk in input.chunks(step) {
        src.extend_from_slice(chunk);
        while let Some(frame) = codec.decode(&mut src).expect("decode never fails") {
            let mut action = match frame {
                Frame::Command(c) => session.command(c),
                Frame::LineTooLong => session.line_too_long(),
                Frame::AuthResponse(l) => session.auth_response(&l),
                Frame::DataEnd(_) | Frame::BdatEnd(_) => session.received(Received::Complete(codec.take_body())),
            };
            loop {
                action = match action {
                    Action::Reply(r) | Action::Receive(Some(r)) => {
                        check_reply(&r);
                        replies += 1;
                        if streaming && r.code() == 354 {
                            let ctx = session.streaming_context().expect("DATA inside a transaction");
                            assert!(!ctx.recipients().is_empty(), "streaming without recipients");
                        }
                        break;
                    }
                    Action::Receive(None) => break,
                    Action::Close(r) | Action::StartTls(r) => {
                        check_reply(&r);
                        return;
                    }
                    Action::Check(Check::Auth(_)) => session.authenticated(Ok(Identity::new("u"))),
                    Action::Check(_) => session.checked(Reply::ok()),
                    Action::AwaitAnswer { recipients } => {
                        assert!(streaming, "an answer awaited for a message nobody streamed");
                        assert!(recipients > 0, "delivery without recipients");
                        for r in session.delivered(Delivery::All(Reply::ok()), recipients) {
                            check_reply(&r);
                        }
                        break;
                    }
                    Action::Deliver(ctx) => {
                        assert!(!ctx.recipients().is_empty(), "delivery without recipients");
                        assert!(ctx.size() <= 4096, "delivery over the size limit");
                        let n = ctx.recipients().len();
                        for r in session.delivered(Delivery::All(Reply::ok()), n) {
                            check_reply(&r);
                        }
                        break;
                    }
                };
            }
            codec.set_mode(session.input_mode());
            assert!(src.len() <= 64 * 1024 + 4096);
        }
    }
    let _ = replies;
});
