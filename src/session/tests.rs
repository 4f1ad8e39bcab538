//! Table tests of the session state machine, without sockets.

use super::*;

fn session_with(config: Config) -> Session {
    let info = SessionInfo::new(
        "192.0.2.1:4000".parse().unwrap(),
        "127.0.0.1:25".parse().unwrap(),
    );
    Session::new(Arc::new(config), None, info)
}

fn session() -> Session {
    session_with(Config::default())
}

/// Feeds one command line and returns the reply code (0 when no reply).
fn code(s: &mut Session, line: &str) -> u16 {
    match s.command(Command::parse(line.as_bytes())) {
        Action::Reply(r) | Action::Close(r) | Action::StartTls(r) => r.code(),
        Action::Receive(Some(r)) => r.code(),
        Action::Receive(None) | Action::Check(_) | Action::Deliver(_) => 0,
    }
}

#[test]
fn basic_sequence_rules() {
    let mut s = session();
    assert_eq!(code(&mut s, "MAIL FROM:<a@b.c>"), 503);
    assert_eq!(code(&mut s, "RCPT TO:<a@b.c>"), 503);
    assert_eq!(code(&mut s, "DATA"), 503);
    assert_eq!(code(&mut s, "EHLO client.example"), 250);
    assert_eq!(code(&mut s, "MAIL FROM:<>"), 250);
    assert_eq!(code(&mut s, "MAIL FROM:<a@b.c>"), 503);
    assert_eq!(code(&mut s, "DATA"), 554);
    assert_eq!(code(&mut s, "RCPT TO:<Postmaster>"), 250);
    assert_eq!(code(&mut s, "DATA"), 354);
    assert_eq!(
        s.input_mode(),
        InputMode::Data {
            max_bytes: 25 * 1024 * 1024
        }
    );
}

#[test]
fn completed_message_is_delivered_with_every_recipient() {
    let mut s = session();
    for line in [
        "EHLO x",
        "MAIL FROM:<a@b.c>",
        "RCPT TO:<d@e.f>",
        "RCPT TO:<g@h.i>",
        "DATA",
    ] {
        assert!(code(&mut s, line) < 400, "{line}");
    }
    let Action::Deliver(ctx) = s.received(Received::Complete("Subject: x\r\n\r\nhi\r\n".into()))
    else {
        panic!("expected delivery");
    };
    let rcpts: Vec<_> = ctx
        .recipients()
        .iter()
        .map(|r| r.address().as_str())
        .collect();
    assert_eq!(rcpts, ["d@e.f", "g@h.i"]);
    assert_eq!(s.delivered(Delivery::All(Reply::ok()), 2)[0].code(), 250);
    // A new transaction needs no RSET.
    assert_eq!(code(&mut s, "MAIL FROM:<a@b.c>"), 250);
}

#[test]
fn a_421_from_a_hook_closes_the_session() {
    let mut config = Config::default();
    config.hooks.mail = true;
    let mut s = session_with(config);
    assert_eq!(code(&mut s, "EHLO x"), 250);
    assert!(matches!(
        s.command(Command::parse(b"MAIL FROM:<a@b.c>")),
        Action::Check(_)
    ));
    let action = s.checked(Reply::new(421, (4, 7, 0), "Rate limit exceeded"));
    assert!(matches!(action, Action::Close(r) if r.code() == 421));
    // A 450 from the same hook keeps the session open.
    let mut config = Config::default();
    config.hooks.mail = true;
    let mut s = session_with(config);
    assert_eq!(code(&mut s, "EHLO x"), 250);
    let _ = s.command(Command::parse(b"MAIL FROM:<a@b.c>"));
    let action = s.checked(Reply::new(450, (4, 7, 0), "Rate limit exceeded"));
    assert!(matches!(action, Action::Reply(r) if r.code() == 450));
    assert_eq!(code(&mut s, "NOOP"), 250);
}
