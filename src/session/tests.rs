//! Table tests of the session state machine, without sockets.
//!
//! Most tests are scripts of `(client line, expected outcome)` pairs. An
//! outcome is written as the reply code and enhanced status (`"503 5.5.1"`),
//! the code alone for replies without one (greeting, EHLO, 334), and a
//! prefix for anything but a plain reply: `close 221 2.0.0`,
//! `starttls 220 2.0.0`, `receive 354`, `receive` (BDAT), `check mail`,
//! `deliver`. The numbers in comments refer to /work/shared/RFC-CHECKLIST.md.

use super::*;
use crate::proto::Address;

const PEER: &str = "192.0.2.1:4000";
const LOCAL: &str = "127.0.0.1:25";

fn info() -> SessionInfo {
    SessionInfo::new(PEER.parse().unwrap(), LOCAL.parse().unwrap())
}

fn session_with(config: Config) -> Session {
    Session::new(Arc::new(config), None, info())
}

fn session() -> Session {
    session_with(Config::default())
}

/// A session on a default config changed by `change`.
fn configured(change: impl FnOnce(&mut Config)) -> Session {
    let mut config = Config::default();
    change(&mut config);
    session_with(config)
}

fn tls_info() -> TlsInfo {
    TlsInfo {
        version: crate::tls::TlsVersion::Tls1_3,
        cipher: "TLS13_AES_128_GCM_SHA256".into(),
        sni: None,
        peer_certificates: Vec::new(),
    }
}

/// `code status` or just `code`.
fn head(r: &Reply) -> String {
    match r.status() {
        Some(s) => format!("{} {s}", r.code()),
        None => r.code().to_string(),
    }
}

fn summary(action: &Action) -> String {
    match action {
        Action::Reply(r) => head(r),
        Action::Close(r) => format!("close {}", head(r)),
        Action::StartTls(r) => format!("starttls {}", head(r)),
        Action::Receive(Some(r)) => format!("receive {}", head(r)),
        Action::Receive(None) => "receive".into(),
        Action::Check(Check::Helo(_)) => "check helo".into(),
        Action::Check(Check::Auth(_)) => "check auth".into(),
        Action::Check(Check::Mail(_)) => "check mail".into(),
        Action::Check(Check::Rcpt(_)) => "check rcpt".into(),
        Action::Deliver(_) => "deliver".into(),
        Action::AwaitAnswer { recipients } => format!("await {recipients}"),
    }
}

fn send(s: &mut Session, line: &str) -> Action {
    s.command(Command::parse(line.as_bytes()))
}

/// Feeds one command line and returns the summary of what came out.
fn say(s: &mut Session, line: &str) -> String {
    summary(&send(s, line))
}

/// Feeds one command line and returns the reply code (0 when no reply).
fn code(s: &mut Session, line: &str) -> u16 {
    match send(s, line) {
        Action::Reply(r) | Action::Close(r) | Action::StartTls(r) => r.code(),
        Action::Receive(Some(r)) => r.code(),
        Action::Receive(None)
        | Action::Check(_)
        | Action::Deliver(_)
        | Action::AwaitAnswer { .. } => 0,
    }
}

/// Runs a script of `(line, expected summary)` steps.
#[track_caller]
fn script(s: &mut Session, steps: &[(&str, &str)]) {
    for (i, (line, want)) in steps.iter().enumerate() {
        assert_eq!(say(s, line), *want, "step {i}: {line:?}");
    }
}

/// The reply of an action that must be a plain reply.
#[track_caller]
fn reply_of(action: Action) -> Reply {
    match action {
        Action::Reply(r) => r,
        other => panic!("expected a reply, got {other:?}"),
    }
}

/// The lines of the EHLO (or LHLO) reply after the hello line.
#[track_caller]
fn capabilities(s: &mut Session, line: &str) -> Vec<String> {
    let r = reply_of(send(s, line));
    assert_eq!(r.code(), 250, "{line}");
    assert_eq!(r.status(), None, "EHLO replies carry no enhanced status");
    r.text().lines().skip(1).map(str::to_owned).collect()
}

fn received(s: &mut Session, outcome: Received) -> String {
    summary(&s.received(outcome))
}

fn complete(body: &'static str) -> Received {
    Received::Complete(Bytes::from_static(body.as_bytes()))
}

/// The context of a delivery, or a panic.
#[track_caller]
fn delivered_context(action: Action) -> Context {
    match action {
        Action::Deliver(ctx) => *ctx,
        other => panic!("expected a delivery, got {other:?}"),
    }
}

fn rcpt_addresses(ctx: &Context) -> Vec<String> {
    ctx.recipients()
        .iter()
        .map(|r| r.address().as_str().to_owned())
        .collect()
}

fn codes(replies: &[Reply]) -> Vec<String> {
    replies.iter().map(head).collect()
}

/// EHLO, MAIL and one RCPT: ready for DATA or BDAT.
fn in_transaction(s: &mut Session) {
    script(
        s,
        &[
            ("EHLO client.example", "250"),
            ("MAIL FROM:<a@b.c>", "250 2.1.0"),
            ("RCPT TO:<d@e.f>", "250 2.1.5"),
        ],
    );
}

/// PLAIN credentials `\0alice\0secret`, base64.
const PLAIN_ALICE: &str = "AGFsaWNlAHNlY3JldA==";

// ---------------------------------------------------------------- greeting

#[test]
fn greeting_names_the_host_and_the_protocol() {
    let cases = [
        (false, "220 localhost ESMTP Service ready\r\n"),
        (true, "220 localhost LMTP Service ready\r\n"),
    ];
    for (lmtp, wire) in cases {
        let mut s = configured(|c| c.lmtp = lmtp);
        let r = reply_of(s.greeting(None));
        assert_eq!(r.to_string(), wire);
        assert!(!s.is_closed());
    }
    let mut s = configured(|c| c.hostname = "mx.example.com".into());
    assert_eq!(
        reply_of(s.greeting(None)).text(),
        "mx.example.com ESMTP Service ready"
    );
}

#[test]
fn connect_refusal_leaves_only_quit() {
    // 1: a refusing server greets 554 and then serves only QUIT.
    let mut s = session();
    let r = reply_of(s.greeting(Some(Reply::new(554, (5, 7, 1), "No service for you"))));
    assert_eq!(head(&r), "554 5.7.1");
    script(
        &mut s,
        &[
            ("EHLO client.example", "503 5.5.1"),
            ("HELO client.example", "503 5.5.1"),
            ("MAIL FROM:<a@b.c>", "503 5.5.1"),
            ("NOOP", "503 5.5.1"),
            ("FOO", "503 5.5.1"),
            ("QUIT", "close 221 2.0.0"),
        ],
    );
    assert!(s.is_closed());
}

#[test]
fn connect_refusal_with_421_closes_at_once() {
    let mut s = session();
    let action = s.greeting(Some(Reply::new(421, (4, 3, 2), "Busy")));
    assert_eq!(summary(&action), "close 421 4.3.2");
    assert!(s.is_closed());
}

#[test]
fn refused_session_still_counts_errors() {
    let mut s = configured(|c| c.max_errors = 2);
    s.greeting(Some(Reply::new(554, (5, 7, 1), "No")));
    script(
        &mut s,
        &[
            ("EHLO a", "503 5.5.1"),
            ("EHLO a", "503 5.5.1"),
            ("EHLO a", "close 421 4.7.0"),
        ],
    );
}

// -------------------------------------------------------------- HELO/EHLO

#[test]
fn ehlo_lists_every_capability_one_per_line() {
    // 2, 20
    let mut s = session();
    let r = reply_of(send(&mut s, "EHLO client.example"));
    assert_eq!(
        r.text().lines().collect::<Vec<_>>(),
        [
            "localhost Hello client.example",
            "PIPELINING",
            "SIZE 26214400",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
            "BINARYMIME",
            "DSN",
            "LIMITS RCPTMAX=100",
            "HELP",
        ]
    );
    let wire = r.to_string();
    assert!(wire.starts_with("250-localhost Hello client.example\r\n250-PIPELINING\r\n"));
    assert!(
        wire.ends_with("250-LIMITS RCPTMAX=100\r\n250 HELP\r\n"),
        "{wire}"
    );
    assert_eq!(s.info().helo_name(), Some("client.example"));
}

#[test]
fn ehlo_capabilities_follow_the_config() {
    type Change = fn(&mut Config);
    let cases: &[(&str, Change, &[&str], &[&str])] = &[
        (
            "defaults",
            |_| {},
            &["SIZE 26214400", "CHUNKING", "DSN"],
            &["STARTTLS", "AUTH PLAIN LOGIN", "REQUIRETLS"],
        ),
        (
            "size",
            |c| c.max_message_bytes = 1000,
            &["SIZE 1000"],
            &["SIZE 26214400"],
        ),
        (
            "no chunking",
            |c| c.chunking = false,
            &["DSN"],
            &["CHUNKING", "BINARYMIME"],
        ),
        ("no dsn", |c| c.dsn = false, &["CHUNKING"], &["DSN"]),
        (
            "starttls",
            |c| c.starttls = true,
            &["STARTTLS"],
            &["AUTH PLAIN LOGIN"],
        ),
        // 31: plaintext mechanisms are not offered without TLS.
        (
            "auth in plaintext",
            |c| c.auth = true,
            &[],
            &["AUTH PLAIN LOGIN"],
        ),
        (
            "insecure auth allowed",
            |c| {
                c.auth = true;
                c.allow_insecure_auth = true;
            },
            &["AUTH PLAIN LOGIN"],
            &[],
        ),
        (
            "limits",
            |c| {
                c.max_recipients = 7;
                c.max_messages_per_session = Some(3);
            },
            &["LIMITS RCPTMAX=7 MAILMAX=3"],
            &["LIMITS RCPTMAX=100"],
        ),
    ];
    for (name, change, present, absent) in cases {
        let mut s = configured(change);
        let caps = capabilities(&mut s, "EHLO client.example");
        for want in *present {
            assert!(
                caps.iter().any(|c| c == want),
                "{name}: {want} missing from {caps:?}"
            );
        }
        for unwanted in *absent {
            assert!(
                !caps.iter().any(|c| c == unwanted),
                "{name}: {unwanted} in {caps:?}"
            );
        }
        for always in ["PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"] {
            assert!(caps.iter().any(|c| c == always), "{name}: {always} missing");
        }
    }
}

#[test]
fn ehlo_over_tls_offers_auth_but_not_starttls() {
    // 26, 31
    let mut s = configured(|c| {
        c.starttls = true;
        c.auth = true;
    });
    s.tls_established(tls_info());
    let caps = capabilities(&mut s, "EHLO client.example");
    assert!(!caps.iter().any(|c| c == "STARTTLS"), "{caps:?}");
    assert!(caps.iter().any(|c| c == "AUTH PLAIN LOGIN"), "{caps:?}");
    assert!(caps.iter().any(|c| c == "REQUIRETLS"), "{caps:?}");
}

#[test]
fn helo_is_a_single_line_and_greetings_need_a_name() {
    // 2
    let mut s = session();
    let r = reply_of(send(&mut s, "HELO client.example"));
    assert_eq!(r.to_string(), "250 localhost Hello client.example\r\n");
    assert_eq!(
        s.info().greeting(),
        Some(&Greeting::Helo("client.example".into()))
    );
    script(
        &mut s,
        &[
            ("EHLO", "501 5.5.2"),
            ("HELO", "501 5.5.2"),
            ("ehlo client.example", "250"),
        ],
    );
    assert_eq!(
        s.info().greeting(),
        Some(&Greeting::Ehlo("client.example".into()))
    );
}

#[test]
fn esmtp_parameters_after_helo_are_refused() {
    // 3
    let mut s = session();
    assert_eq!(say(&mut s, "HELO client.example"), "250");
    for line in [
        "MAIL FROM:<a@b.c> SIZE=10",
        "MAIL FROM:<a@b.c> BODY=8BITMIME",
        "MAIL FROM:<a@b.c> SMTPUTF8",
        "MAIL FROM:<a@b.c> RET=HDRS",
        "MAIL FROM:<> ENVID=x",
    ] {
        assert_eq!(say(&mut s, line), "555 5.5.4", "{line}");
    }
    script(
        &mut s,
        &[
            ("MAIL FROM:<a@b.c>", "250 2.1.0"),
            ("RCPT TO:<d@e.f> NOTIFY=SUCCESS", "555 5.5.4"),
            ("RCPT TO:<d@e.f>", "250 2.1.5"),
        ],
    );
}

#[test]
fn a_new_greeting_resets_the_transaction() {
    // 4
    for again in ["EHLO client.example", "HELO client.example"] {
        let mut s = session();
        in_transaction(&mut s);
        assert!(s.in_transaction());
        assert_eq!(say(&mut s, again), "250", "{again}");
        assert!(!s.in_transaction(), "{again}");
        script(
            &mut s,
            &[
                ("RCPT TO:<d@e.f>", "503 5.5.1"),
                ("DATA", "503 5.5.1"),
                ("MAIL FROM:<a@b.c>", "250 2.1.0"),
            ],
        );
    }
}

// ---------------------------------------------------------- sequence rules

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
fn sequence_errors_carry_5_5_1() {
    // 5
    let mut s = session();
    script(
        &mut s,
        &[
            ("MAIL FROM:<a@b.c>", "503 5.5.1"),
            ("RCPT TO:<d@e.f>", "503 5.5.1"),
            ("DATA", "503 5.5.1"),
            ("EHLO client.example", "250"),
            ("RCPT TO:<d@e.f>", "503 5.5.1"),
            ("DATA", "503 5.5.1"),
            ("MAIL FROM:<a@b.c>", "250 2.1.0"),
            ("MAIL FROM:<a@b.c>", "503 5.5.1"),
            ("DATA", "554 5.5.1"),
            ("RCPT TO:<d@e.f>", "250 2.1.5"),
            ("DATA", "receive 354"),
        ],
    );
}

#[test]
fn null_sender_and_postmaster_are_accepted() {
    // 6, 7
    let mut s = session();
    script(
        &mut s,
        &[
            ("EHLO client.example", "250"),
            ("MAIL FROM:<>", "250 2.1.0"),
            ("RCPT TO:<Postmaster>", "250 2.1.5"),
            ("RCPT TO:<postmaster>", "250 2.1.5"),
            ("RCPT TO:<POSTMASTER>", "250 2.1.5"),
            ("rcpt to:<PostMaster@localhost>", "250 2.1.5"),
            ("DATA", "receive 354"),
        ],
    );
    let ctx = delivered_context(s.received(complete("x\r\n")));
    assert!(ctx.envelope().is_null_sender());
    assert_eq!(ctx.reverse_path(), None);
    assert_eq!(ctx.recipients().len(), 4);
    assert!(
        ctx.recipients()[..3]
            .iter()
            .all(|r| r.address().is_postmaster())
    );
}

#[test]
fn a_streamed_message_ends_in_an_answer_for_its_context() {
    // The streaming context is the message's one context: the end of its
    // body asks for the handler's answer, with no second context, and the
    // next message gets the next number.
    let mut s = session();
    for round in 1..=2 {
        for line in ["MAIL FROM:<a@b.c>", "RCPT TO:<d@e.f>", "RCPT TO:<g@h.i>"] {
            if round == 1 && line.starts_with("MAIL") {
                assert!(code(&mut s, "EHLO x") < 400);
            }
            assert!(code(&mut s, line) < 400, "{line}");
        }
        assert_eq!(code(&mut s, "DATA"), 354);
        let ctx = s.streaming_context().expect("a transaction is in progress");
        assert!(
            ctx.id().as_str().ends_with(&format!(".{round}")),
            "{}",
            ctx.id()
        );
        assert_eq!(ctx.recipients().len(), 2);
        let action = s.received(Received::Complete(Bytes::new()));
        assert_eq!(summary(&action), "await 2");
        assert_eq!(s.delivered(Delivery::All(Reply::ok()), 2)[0].code(), 250);
    }
    // Without a streaming context, the same transaction is delivered.
    for line in ["MAIL FROM:<a@b.c>", "RCPT TO:<d@e.f>", "DATA"] {
        assert!(code(&mut s, line) < 400, "{line}");
    }
    let action = s.received(Received::Complete("hi\r\n".into()));
    assert_eq!(summary(&action), "deliver");
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
    assert_eq!(&ctx.message().unwrap()[..], b"Subject: x\r\n\r\nhi\r\n");
    assert_eq!(ctx.helo_name(), Some("x"));
    assert_eq!(s.delivered(Delivery::All(Reply::ok()), 2)[0].code(), 250);
    // 12: a new transaction needs no RSET.
    assert_eq!(code(&mut s, "MAIL FROM:<a@b.c>"), 250);
}

#[test]
fn hundred_recipients_then_452_at_the_limit() {
    // 8
    let mut s = session();
    script(
        &mut s,
        &[("EHLO c", "250"), ("MAIL FROM:<a@b.c>", "250 2.1.0")],
    );
    for i in 0..100 {
        assert_eq!(
            say(&mut s, &format!("RCPT TO:<u{i}@e.f>")),
            "250 2.1.5",
            "rcpt {i}"
        );
    }
    script(
        &mut s,
        &[
            ("RCPT TO:<u100@e.f>", "452 4.5.3"),
            ("RCPT TO:<Postmaster>", "452 4.5.3"),
            ("DATA", "receive 354"),
        ],
    );
    let ctx = delivered_context(s.received(complete("x\r\n")));
    assert_eq!(ctx.recipients().len(), 100);
    assert_eq!(ctx.recipients()[99].address().as_str(), "u99@e.f");

    let mut s = configured(|c| c.max_recipients = 3);
    in_transaction(&mut s);
    script(
        &mut s,
        &[
            ("RCPT TO:<x@e.f>", "250 2.1.5"),
            ("RCPT TO:<y@e.f>", "250 2.1.5"),
            ("RCPT TO:<z@e.f>", "452 4.5.3"),
        ],
    );
}

#[test]
fn recipients_over_the_limit_do_not_count_as_errors() {
    // Core fix: a pipelining client sends 150 recipients before it reads
    // the first 452; cutting it off after max_errors of them lost the
    // whole transaction.
    let mut s = configured(|c| c.max_errors = 5);
    in_transaction(&mut s);
    for i in 1..150 {
        let want = if i < 100 { "250 2.1.5" } else { "452 4.5.3" };
        assert_eq!(
            say(&mut s, &format!("RCPT TO:<u{i}@e.f>")),
            want,
            "rcpt {i}"
        );
    }
    assert_eq!(say(&mut s, "DATA"), "receive 354");
    assert_eq!(
        delivered_context(s.received(complete("x\r\n")))
            .recipients()
            .len(),
        100
    );
}

// ------------------------------------------------------------- plain verbs

#[test]
fn simple_verbs_answer_with_exact_codes() {
    // 9, 12, 14, 15
    let mut s = session();
    script(
        &mut s,
        &[
            ("EHLO client.example", "250"),
            ("RSET", "250 2.0.0"),
            ("RSET x", "501 5.5.2"),
            ("NOOP", "250 2.0.0"),
            ("NOOP anything at all", "250 2.0.0"),
            ("VRFY bob", "252 2.5.0"),
            ("VRFY", "501 5.5.2"),
            ("EXPN staff", "502 5.5.1"),
            ("HELP", "214 2.0.0"),
            ("HELP MAIL", "214 2.0.0"),
            ("FOO bar", "500 5.5.1"),
            ("MAILX FROM:<a@b.c>", "500 5.5.1"),
            ("mail from:<a@b.c>", "250 2.1.0"),
            ("Rcpt To:<d@e.f>", "250 2.1.5"),
            ("DATA x", "501 5.5.2"),
            ("QUIT x", "501 5.5.2"),
            ("QUIT", "close 221 2.0.0"),
        ],
    );
    assert!(s.is_closed());
}

#[test]
fn quit_names_the_host() {
    let mut s = configured(|c| c.hostname = "mx.example.com".into());
    let Action::Close(r) = send(&mut s, "QUIT") else {
        panic!("QUIT must close");
    };
    assert_eq!(
        r.to_string(),
        "221 2.0.0 mx.example.com Service closing transmission channel\r\n"
    );
}

#[test]
fn invalid_utf8_and_long_lines_are_500() {
    let mut s = session();
    assert_eq!(
        summary(&s.command(Command::parse(b"EHLO \xff\xfe"))),
        "500 5.5.2"
    );
    assert_eq!(summary(&s.line_too_long()), "500 5.5.2");
    assert_eq!(say(&mut s, "EHLO ok"), "250");
}

#[test]
fn rset_clears_the_transaction() {
    // 12
    let mut s = session();
    in_transaction(&mut s);
    script(
        &mut s,
        &[
            ("RSET", "250 2.0.0"),
            ("RCPT TO:<d@e.f>", "503 5.5.1"),
            ("DATA", "503 5.5.1"),
            ("MAIL FROM:<a@b.c>", "250 2.1.0"),
        ],
    );
    // The greeting survives RSET.
    assert_eq!(s.info().helo_name(), Some("client.example"));
}

// -------------------------------------------------------------- parameters

#[test]
fn size_parameter() {
    // 21
    let mut s = configured(|c| c.max_message_bytes = 1000);
    script(
        &mut s,
        &[
            ("EHLO c", "250"),
            ("MAIL FROM:<a@b.c> SIZE=1001", "552 5.3.4"),
            ("MAIL FROM:<a@b.c> SIZE=abc", "501 5.5.4"),
            ("MAIL FROM:<a@b.c> SIZE=", "501 5.5.4"),
            ("MAIL FROM:<a@b.c> SIZE=-1", "501 5.5.4"),
            (
                "MAIL FROM:<a@b.c> SIZE=99999999999999999999999",
                "501 5.5.4",
            ),
            ("MAIL FROM:<a@b.c> SIZE=1000", "250 2.1.0"),
        ],
    );
}

#[test]
fn utf8_addresses_need_smtputf8() {
    // 34
    let mut s = session();
    script(
        &mut s,
        &[
            ("EHLO c", "250"),
            ("MAIL FROM:<ü@example.com>", "553 5.6.7"),
            ("MAIL FROM:<a@b.c> SMTPUTF8=YES", "501 5.5.4"),
            ("MAIL FROM:<a@b.c>", "250 2.1.0"),
            ("RCPT TO:<ü@example.com>", "553 5.6.7"),
            ("RCPT TO:<d@bücher.example>", "553 5.6.7"),
            ("RSET", "250 2.0.0"),
            ("MAIL FROM:<ü@example.com> SMTPUTF8", "250 2.1.0"),
            ("RCPT TO:<ü@example.com>", "250 2.1.5"),
            ("RCPT TO:<d@bücher.example>", "250 2.1.5"),
        ],
    );
}

#[test]
fn body_parameter() {
    // 33
    let mut s = session();
    script(
        &mut s,
        &[
            ("EHLO c", "250"),
            ("MAIL FROM:<a@b.c> BODY=FOO", "501 5.5.4"),
            ("MAIL FROM:<a@b.c> BODY=7BIT", "250 2.1.0"),
            ("RSET", "250 2.0.0"),
            ("MAIL FROM:<a@b.c> BODY=8BITMIME", "250 2.1.0"),
            ("RSET", "250 2.0.0"),
            ("MAIL FROM:<a@b.c> BODY=BINARYMIME", "250 2.1.0"),
            ("RCPT TO:<d@e.f>", "250 2.1.5"),
            // BINARYMIME can only travel with BDAT (RFC 3030 3).
            ("DATA", "503 5.5.1"),
            ("BDAT 3 LAST", "receive"),
        ],
    );
    assert_eq!(received(&mut s, complete("a\0b")), "deliver");

    let mut s = configured(|c| c.chunking = false);
    script(
        &mut s,
        &[
            ("EHLO c", "250"),
            ("MAIL FROM:<a@b.c> BODY=BINARYMIME", "555 5.5.4"),
        ],
    );
}

#[test]
fn dsn_parameters() {
    // 36
    let mut s = session();
    script(
        &mut s,
        &[
            ("EHLO c", "250"),
            ("MAIL FROM:<a@b.c> RET=FOO", "501 5.5.4"),
            ("MAIL FROM:<a@b.c> RET=FULL RET=HDRS", "501 5.5.4"),
            ("MAIL FROM:<a@b.c> ENVID=", "501 5.5.4"),
            ("MAIL FROM:<a@b.c> X-FOO=1", "555 5.5.4"),
            ("MAIL FROM:<a@b.c> NOTIFY=SUCCESS", "555 5.5.4"),
            ("MAIL FROM:<a@b.c> RET=HDRS ENVID=QQ314159", "250 2.1.0"),
            ("RCPT TO:<d@e.f> NOTIFY=NEVER,SUCCESS", "501 5.5.4"),
            ("RCPT TO:<d@e.f> NOTIFY=SOMETIMES", "501 5.5.4"),
            ("RCPT TO:<d@e.f> NOTIFY=SUCCESS NOTIFY=FAILURE", "501 5.5.4"),
            ("RCPT TO:<d@e.f> RET=FULL", "555 5.5.4"),
            (
                "RCPT TO:<d@e.f> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;d@e.f",
                "250 2.1.5",
            ),
            ("RCPT TO:<g@h.i> NOTIFY=NEVER", "250 2.1.5"),
            ("DATA", "receive 354"),
        ],
    );
    let ctx = delivered_context(s.received(complete("x\r\n")));
    assert_eq!(ctx.mail_params().ret, Some(crate::proto::Ret::Headers));
    assert_eq!(ctx.mail_params().envid.as_deref(), Some("QQ314159"));
    let first = ctx.recipients()[0].params();
    let notify = first.notify.as_ref().unwrap();
    assert!(notify.success && notify.failure && !notify.delay);
    assert_eq!(first.orcpt.as_ref().unwrap().address, "d@e.f");
    assert!(
        ctx.recipients()[1]
            .params()
            .notify
            .as_ref()
            .unwrap()
            .is_never()
    );
}

#[test]
fn dsn_parameters_when_dsn_is_off() {
    // 36
    let mut s = configured(|c| c.dsn = false);
    script(
        &mut s,
        &[
            ("EHLO c", "250"),
            ("MAIL FROM:<a@b.c> RET=FULL", "555 5.5.4"),
            ("MAIL FROM:<a@b.c> ENVID=x", "555 5.5.4"),
            ("MAIL FROM:<a@b.c>", "250 2.1.0"),
            ("RCPT TO:<d@e.f> NOTIFY=SUCCESS", "555 5.5.4"),
            ("RCPT TO:<d@e.f> ORCPT=rfc822;d@e.f", "555 5.5.4"),
            ("RCPT TO:<d@e.f>", "250 2.1.5"),
        ],
    );
}

#[test]
fn auth_and_requiretls_mail_parameters() {
    // 32
    let mut s = session();
    script(
        &mut s,
        &[
            ("EHLO c", "250"),
            ("MAIL FROM:<a@b.c> AUTH=<>", "555 5.5.4"),
            ("MAIL FROM:<a@b.c> REQUIRETLS", "555 5.5.4"),
        ],
    );
    let mut s = configured(|c| {
        c.auth = true;
        c.starttls = true;
    });
    s.tls_established(tls_info());
    script(
        &mut s,
        &[
            ("EHLO c", "250"),
            ("MAIL FROM:<a@b.c> AUTH=<> REQUIRETLS", "250 2.1.0"),
        ],
    );
}

// ------------------------------------------------------------------- BDAT

#[test]
fn bdat_chunks_make_one_message() {
    // 37
    let mut s = configured(|c| c.max_message_bytes = 100);
    in_transaction(&mut s);
    assert_eq!(say(&mut s, "BDAT 5"), "receive");
    assert_eq!(
        s.input_mode(),
        InputMode::Bdat {
            size: 5,
            room: 100,
            discard: false,
            first: true
        }
    );
    let r = reply_of(s.received(Received::Complete(Bytes::new())));
    assert_eq!(r.to_string(), "250 2.0.0 5 octets received\r\n");
    assert!(s.in_transaction());
    // 38: no DATA or RCPT once BDAT has begun.
    script(
        &mut s,
        &[
            ("DATA", "503 5.5.1"),
            ("RCPT TO:<x@e.f>", "503 5.5.1"),
            ("BDAT 3 LAST", "receive"),
        ],
    );
    assert_eq!(
        s.input_mode(),
        InputMode::Bdat {
            size: 3,
            room: 95,
            discard: false,
            first: false
        }
    );
    let ctx = delivered_context(s.received(Received::Complete(Bytes::new())));
    assert_eq!(rcpt_addresses(&ctx), ["d@e.f"]);
    assert_eq!(s.input_mode(), InputMode::Command { max_line: 1024 });
    assert_eq!(
        codes(&s.delivered(Delivery::All(Reply::ok()), 1)),
        ["250 2.0.0"]
    );
    assert!(!s.in_transaction());
}

#[test]
fn bdat_zero_last_is_valid() {
    // 38
    let mut s = session();
    in_transaction(&mut s);
    script(&mut s, &[("BDAT 0 LAST", "receive")]);
    assert_eq!(
        received(&mut s, Received::Complete(Bytes::new())),
        "deliver"
    );

    // Also as the end of a chunked message.
    let mut s = session();
    in_transaction(&mut s);
    script(&mut s, &[("BDAT 2", "receive")]);
    assert_eq!(
        received(&mut s, Received::Complete(Bytes::new())),
        "250 2.0.0"
    );
    script(&mut s, &[("BDAT 0 LAST", "receive")]);
    assert_eq!(
        received(&mut s, Received::Complete(Bytes::new())),
        "deliver"
    );
}

#[test]
fn bdat_out_of_sequence_is_consumed_then_refused() {
    // 38: the chunk is drained (discard) and only then answered 503.
    // `first`: a transaction exists and has no chunk yet.
    let cases: &[(&str, &[&str], bool)] = &[
        ("before EHLO", &[], false),
        ("before MAIL", &["EHLO c"], false),
        ("before RCPT", &["EHLO c", "MAIL FROM:<a@b.c>"], true),
    ];
    for (name, setup, first) in cases {
        let mut s = session();
        for line in *setup {
            assert!(code(&mut s, line) < 400, "{name}: {line}");
        }
        assert_eq!(say(&mut s, "BDAT 4 LAST"), "receive", "{name}");
        assert_eq!(
            s.input_mode(),
            InputMode::Bdat {
                size: 4,
                room: 0,
                discard: true,
                first: *first
            },
            "{name}"
        );
        assert_eq!(
            received(&mut s, Received::Complete(Bytes::new())),
            "503 5.5.1",
            "{name}"
        );
        assert_eq!(
            s.input_mode(),
            InputMode::Command { max_line: 1024 },
            "{name}"
        );
    }
    let mut s = session();
    script(
        &mut s,
        &[
            ("EHLO c", "250"),
            ("BDAT x", "501 5.5.2"),
            ("BDAT 1 FIRST", "501 5.5.2"),
            ("BDAT", "501 5.5.2"),
        ],
    );
}

#[test]
fn bdat_chunk_too_large_ends_the_transaction() {
    let mut s = configured(|c| c.max_message_bytes = 10);
    in_transaction(&mut s);
    script(&mut s, &[("BDAT 8", "receive")]);
    assert_eq!(
        received(&mut s, Received::Complete(Bytes::new())),
        "250 2.0.0"
    );
    script(&mut s, &[("BDAT 8", "receive")]);
    assert!(matches!(
        s.input_mode(),
        InputMode::Bdat {
            room: 2,
            discard: false,
            ..
        }
    ));
    assert_eq!(received(&mut s, Received::TooLarge), "552 5.3.4");
    assert!(!s.in_transaction());
    // The rest of the pipelined message is drained and refused.
    script(&mut s, &[("BDAT 3 LAST", "receive")]);
    assert!(matches!(
        s.input_mode(),
        InputMode::Bdat { discard: true, .. }
    ));
    assert_eq!(
        received(&mut s, Received::Complete(Bytes::new())),
        "503 5.5.1"
    );
}

#[test]
fn bdat_without_chunking_is_drained_then_502() {
    // Core fix: BDAT was accepted although CHUNKING was not advertised.
    let mut s = configured(|c| c.chunking = false);
    in_transaction(&mut s);
    script(&mut s, &[("BDAT 3 LAST", "receive")]);
    assert!(matches!(
        s.input_mode(),
        InputMode::Bdat {
            size: 3,
            discard: true,
            ..
        }
    ));
    assert_eq!(
        received(&mut s, Received::Complete(Bytes::new())),
        "502 5.5.1"
    );
    // DATA still works for the same transaction.
    assert_eq!(say(&mut s, "DATA"), "receive 354");
}

// ---------------------------------------------------------------- STARTTLS

#[test]
fn starttls_not_configured_is_454() {
    // 24
    let mut s = session();
    script(
        &mut s,
        &[
            ("EHLO c", "250"),
            ("STARTTLS", "454 4.7.0"),
            ("STARTTLS now", "501 5.5.2"),
        ],
    );
}

#[test]
fn starttls_forgets_everything() {
    // 24, 26
    let mut s = configured(|c| c.starttls = true);
    script(
        &mut s,
        &[
            ("EHLO c", "250"),
            ("MAIL FROM:<a@b.c>", "250 2.1.0"),
            ("STARTTLS x", "501 5.5.2"),
            ("STARTTLS", "starttls 220 2.0.0"),
        ],
    );
    s.tls_established(tls_info());
    assert!(s.info().is_tls());
    assert_eq!(s.info().greeting(), None);
    assert!(!s.in_transaction());
    script(
        &mut s,
        &[
            ("MAIL FROM:<a@b.c>", "503 5.5.1"),
            ("RCPT TO:<d@e.f>", "503 5.5.1"),
            ("STARTTLS", "503 5.5.1"),
        ],
    );
    let caps = capabilities(&mut s, "EHLO c");
    assert!(!caps.iter().any(|c| c == "STARTTLS"), "{caps:?}");
    script(
        &mut s,
        &[
            ("STARTTLS", "503 5.5.1"),
            ("MAIL FROM:<a@b.c>", "250 2.1.0"),
        ],
    );
}

#[test]
fn require_tls_allows_only_a_few_verbs_before_tls() {
    // 27
    let mut s = configured(|c| {
        c.starttls = true;
        c.require_tls = true;
        c.auth = true;
        c.allow_insecure_auth = true;
    });
    script(
        &mut s,
        &[
            ("EHLO c", "250"),
            ("NOOP", "250 2.0.0"),
            ("MAIL FROM:<a@b.c>", "530 5.7.0"),
            ("RCPT TO:<d@e.f>", "530 5.7.0"),
            ("DATA", "530 5.7.0"),
            (&format!("AUTH PLAIN {PLAIN_ALICE}"), "530 5.7.0"),
            ("RSET", "530 5.7.0"),
            ("VRFY bob", "530 5.7.0"),
            ("HELO c", "250"),
            ("STARTTLS", "starttls 220 2.0.0"),
        ],
    );
    let r = reply_of(send(&mut s, "MAIL FROM:<a@b.c>"));
    assert_eq!(
        r.to_string(),
        "530 5.7.0 Must issue a STARTTLS command first\r\n"
    );
    s.tls_established(tls_info());
    script(
        &mut s,
        &[
            ("EHLO c", "250"),
            ("MAIL FROM:<a@b.c>", "250 2.1.0"),
            ("RCPT TO:<d@e.f>", "250 2.1.5"),
        ],
    );

    let mut s = configured(|c| c.require_tls = true);
    assert_eq!(say(&mut s, "QUIT"), "close 221 2.0.0");
}

// -------------------------------------------------------------------- AUTH

/// A session where AUTH works in plaintext, after EHLO.
fn auth_session(change: impl FnOnce(&mut Config)) -> Session {
    let mut s = configured(|c| {
        c.auth = true;
        c.allow_insecure_auth = true;
        change(c);
    });
    assert_eq!(say(&mut s, "EHLO c"), "250");
    s
}

#[test]
fn auth_refusals() {
    // 30, 31
    let mut s = session();
    script(&mut s, &[("EHLO c", "250"), ("AUTH PLAIN", "502 5.5.1")]);

    let mut s = configured(|c| c.auth = true);
    script(
        &mut s,
        &[
            ("AUTH PLAIN", "503 5.5.1"),
            ("HELO c", "250"),
            ("AUTH PLAIN", "503 5.5.1"),
            ("EHLO c", "250"),
            ("AUTH PLAIN", "538 5.7.11"),
            ("AUTH LOGIN", "538 5.7.11"),
            ("AUTH CRAM-MD5", "504 5.5.4"),
            ("AUTH", "501 5.5.2"),
        ],
    );

    let mut s = auth_session(|_| {});
    script(
        &mut s,
        &[
            ("AUTH GSSAPI", "504 5.5.4"),
            ("MAIL FROM:<a@b.c>", "250 2.1.0"),
            ("AUTH PLAIN", "503 5.5.1"),
        ],
    );
}

#[test]
fn auth_plain_with_initial_response() {
    // 28
    let mut s = auth_session(|_| {});
    let Action::Check(Check::Auth(req)) = send(&mut s, &format!("AUTH PLAIN {PLAIN_ALICE}")) else {
        panic!("expected an auth check");
    };
    assert_eq!((req.username(), req.password()), ("alice", "secret"));
    // Nothing else is served while the authenticator decides.
    assert_eq!(say(&mut s, "NOOP"), "503 5.5.1");
    let r = reply_of(s.authenticated(Ok(Identity::new("alice"))));
    assert_eq!(r.to_string(), "235 2.7.0 Authentication successful\r\n");
    assert_eq!(s.info().identity().map(Identity::as_str), Some("alice"));
    script(
        &mut s,
        &[
            (&format!("AUTH PLAIN {PLAIN_ALICE}"), "503 5.5.1"),
            ("MAIL FROM:<a@b.c> AUTH=alice@b.c", "250 2.1.0"),
            ("RCPT TO:<d@e.f>", "250 2.1.5"),
            ("DATA", "receive 354"),
        ],
    );
    let ctx = delivered_context(s.received(complete("x\r\n")));
    assert_eq!(ctx.identity().map(Identity::as_str), Some("alice"));
}

#[test]
fn auth_plain_without_initial_response() {
    // 28, 29
    let mut s = auth_session(|_| {});
    let r = reply_of(send(&mut s, "AUTH PLAIN"));
    assert_eq!(r.to_string(), "334 \r\n");
    assert_eq!(s.input_mode(), InputMode::AuthResponse { max_line: 12288 });
    assert_eq!(
        summary(&s.auth_response(PLAIN_ALICE.as_bytes())),
        "check auth"
    );
    let refusal = Reply::new(535, (5, 7, 8), "Authentication credentials invalid");
    assert_eq!(summary(&s.authenticated(Err(refusal))), "535 5.7.8");
    assert_eq!(s.auth_failures(), 1);
    assert_eq!(s.info().identity(), None);
    assert_eq!(s.input_mode(), InputMode::Command { max_line: 1024 });
    // A new attempt is allowed after a failure.
    assert_eq!(
        say(&mut s, &format!("AUTH PLAIN {PLAIN_ALICE}")),
        "check auth"
    );
    assert_eq!(
        summary(&s.authenticated(Ok(Identity::new("alice")))),
        "235 2.7.0"
    );
}

#[test]
fn auth_login_exchange() {
    let mut s = auth_session(|_| {});
    assert_eq!(
        reply_of(send(&mut s, "AUTH LOGIN")).to_string(),
        "334 VXNlcm5hbWU6\r\n"
    );
    let r = reply_of(s.auth_response(b"YWxpY2U="));
    assert_eq!(r.to_string(), "334 UGFzc3dvcmQ6\r\n");
    let Action::Check(Check::Auth(req)) = s.auth_response(b"c2VjcmV0") else {
        panic!("expected an auth check");
    };
    assert_eq!((req.username(), req.password()), ("alice", "secret"));
}

#[test]
fn auth_exchange_errors() {
    // 30
    let cases: &[(&[u8], &str)] = &[
        (b"*", "501 5.0.0"),
        (b"!!!not base64", "501 5.5.2"),
        // Valid base64 of `alice` without the NUL separators.
        (b"YWxpY2U=", "501 5.5.2"),
    ];
    for (line, want) in cases {
        let mut s = auth_session(|_| {});
        assert_eq!(say(&mut s, "AUTH PLAIN"), "334");
        assert_eq!(
            summary(&s.auth_response(line)),
            *want,
            "{:?}",
            String::from_utf8_lossy(line)
        );
        assert_eq!(s.input_mode(), InputMode::Command { max_line: 1024 });
        assert_eq!(s.auth_failures(), 0);
        assert_eq!(say(&mut s, "NOOP"), "250 2.0.0");
    }
    let mut s = auth_session(|_| {});
    assert_eq!(say(&mut s, "AUTH PLAIN *"), "501 5.0.0");
    assert_eq!(say(&mut s, "AUTH LOGIN"), "334");
    assert_eq!(summary(&s.line_too_long()), "500 5.5.6");
    assert_eq!(s.input_mode(), InputMode::Command { max_line: 1024 });
    // Out-of-turn answers are sequence errors.
    assert_eq!(summary(&s.auth_response(b"eA==")), "503 5.5.1");
    assert_eq!(
        summary(&s.authenticated(Ok(Identity::new("x")))),
        "503 5.5.1"
    );
    assert_eq!(s.info().identity(), None);
}

#[test]
fn require_auth_blocks_mail_until_authenticated() {
    // 31
    let mut s = auth_session(|c| c.require_auth = true);
    script(
        &mut s,
        &[
            ("MAIL FROM:<a@b.c>", "530 5.7.0"),
            (&format!("AUTH PLAIN {PLAIN_ALICE}"), "check auth"),
        ],
    );
    assert_eq!(
        summary(&s.authenticated(Ok(Identity::new("alice")))),
        "235 2.7.0"
    );
    script(&mut s, &[("MAIL FROM:<a@b.c>", "250 2.1.0")]);
}

#[test]
fn starttls_forgets_the_identity() {
    let mut s = configured(|c| {
        c.auth = true;
        c.allow_insecure_auth = true;
        c.starttls = true;
    });
    script(
        &mut s,
        &[
            ("EHLO c", "250"),
            (&format!("AUTH PLAIN {PLAIN_ALICE}"), "check auth"),
        ],
    );
    s.authenticated(Ok(Identity::new("alice")));
    assert!(s.info().identity().is_some());
    assert_eq!(say(&mut s, "STARTTLS"), "starttls 220 2.0.0");
    s.tls_established(tls_info());
    assert_eq!(s.info().identity(), None);
}

// ------------------------------------------------------------------- hooks

fn hooked() -> Session {
    configured(|c| {
        c.hooks = crate::config::HookFlags {
            connect: true,
            helo: true,
            mail: true,
            rcpt: true,
        }
    })
}

#[test]
fn hooks_are_asked_and_their_answers_applied() {
    let mut s = hooked();
    let Action::Check(Check::Helo(req)) = send(&mut s, "EHLO client.example") else {
        panic!("expected a HELO check");
    };
    assert_eq!(req.name(), "client.example");
    // Nothing else runs while a hook decides.
    assert_eq!(say(&mut s, "MAIL FROM:<a@b.c>"), "503 5.5.1");
    let caps = reply_of(s.checked(Reply::ok()));
    assert!(caps.text().contains("PIPELINING"), "{caps:?}");

    let Action::Check(Check::Mail(req)) = send(&mut s, "MAIL FROM:<a@b.c> SIZE=10") else {
        panic!("expected a MAIL check");
    };
    assert_eq!(req.reverse_path().map(Address::as_str), Some("a@b.c"));
    assert_eq!(req.params().size, Some(10));
    assert_eq!(
        reply_of(s.checked(Reply::ok())).to_string(),
        "250 2.1.0 Sender OK\r\n"
    );

    let Action::Check(Check::Rcpt(req)) = send(&mut s, "RCPT TO:<good@e.f>") else {
        panic!("expected a RCPT check");
    };
    assert_eq!(req.address().as_str(), "good@e.f");
    assert_eq!(req.reverse_path().map(Address::as_str), Some("a@b.c"));
    // A custom 2xx text is used.
    let custom = Reply::new(250, (2, 1, 5), "good@e.f is welcome");
    assert_eq!(reply_of(s.checked(custom.clone())), custom);

    // A refusal refuses this recipient only.
    assert_eq!(say(&mut s, "RCPT TO:<bad@e.f>"), "check rcpt");
    let refusal = Reply::new(550, (5, 1, 1), "No such user here");
    assert_eq!(reply_of(s.checked(refusal.clone())), refusal);
    assert_eq!(say(&mut s, "RCPT TO:<also@e.f>"), "check rcpt");
    assert_eq!(summary(&s.checked(Reply::ok())), "250 2.1.5");

    assert_eq!(say(&mut s, "DATA"), "receive 354");
    let ctx = delivered_context(s.received(complete("x\r\n")));
    assert_eq!(rcpt_addresses(&ctx), ["good@e.f", "also@e.f"]);
}

#[test]
fn hook_refusals() {
    // HELO refused: no greeting is recorded.
    let mut s = hooked();
    assert_eq!(say(&mut s, "EHLO c"), "check helo");
    assert_eq!(
        summary(&s.checked(Reply::new(550, (5, 7, 1), "Go away"))),
        "550 5.7.1"
    );
    assert_eq!(s.info().greeting(), None);
    assert_eq!(say(&mut s, "MAIL FROM:<a@b.c>"), "503 5.5.1");

    // MAIL refused: no transaction.
    let mut s = hooked();
    assert_eq!(say(&mut s, "HELO c"), "check helo");
    assert_eq!(summary(&s.checked(Reply::ok())), "250");
    assert_eq!(say(&mut s, "MAIL FROM:<spam@b.c>"), "check mail");
    assert_eq!(
        summary(&s.checked(Reply::new(450, (4, 7, 1), "Try later"))),
        "450 4.7.1"
    );
    assert!(!s.in_transaction());
    assert_eq!(say(&mut s, "RCPT TO:<d@e.f>"), "503 5.5.1");

    // Only RCPT refused: DATA has no recipients.
    assert_eq!(say(&mut s, "MAIL FROM:<a@b.c>"), "check mail");
    assert_eq!(summary(&s.checked(Reply::ok())), "250 2.1.0");
    assert_eq!(say(&mut s, "RCPT TO:<d@e.f>"), "check rcpt");
    assert_eq!(
        summary(&s.checked(Reply::new(550, (5, 1, 1), "No"))),
        "550 5.1.1"
    );
    assert_eq!(say(&mut s, "DATA"), "554 5.5.1");

    // An answer with nothing pending is a sequence error.
    assert_eq!(summary(&s.checked(Reply::ok())), "503 5.5.1");
}

#[test]
fn hook_answer_421_closes() {
    // Core fix: 421 means the server closes (RFC 5321 3.8).
    let mut s = hooked();
    assert_eq!(say(&mut s, "EHLO c"), "check helo");
    s.checked(Reply::ok());
    assert_eq!(say(&mut s, "MAIL FROM:<a@b.c>"), "check mail");
    let action = s.checked(Reply::new(421, (4, 7, 0), "Rate limit exceeded"));
    assert_eq!(summary(&action), "close 421 4.7.0");
    assert!(s.is_closed());
}

// ----------------------------------------------------------- error counter

#[test]
fn too_many_errors_close_with_421() {
    let mut s = configured(|c| c.max_errors = 3);
    script(
        &mut s,
        &[
            ("FOO", "500 5.5.1"),
            ("NOOP", "250 2.0.0"),
            ("MAIL FROM:<a@b.c>", "503 5.5.1"),
            ("EHLO c", "250"),
        ],
    );
    assert_eq!(summary(&s.line_too_long()), "500 5.5.2");
    let action = s.line_too_long();
    let Action::Close(r) = &action else {
        panic!("expected close, got {action:?}");
    };
    assert_eq!(
        r.to_string(),
        "421 4.7.0 Too many errors, closing connection\r\n"
    );
    assert!(s.is_closed());
}

// -------------------------------------------------------------------- LMTP

fn lmtp() -> Session {
    configured(|c| c.lmtp = true)
}

#[test]
fn lmtp_wants_lhlo() {
    // 39
    let mut s = lmtp();
    assert!(s.info().is_lmtp());
    script(
        &mut s,
        &[
            ("EHLO c", "500 5.5.1"),
            ("HELO c", "500 5.5.1"),
            ("MAIL FROM:<a@b.c>", "503 5.5.1"),
        ],
    );
    let caps = capabilities(&mut s, "LHLO c");
    assert!(caps.iter().any(|c| c == "PIPELINING"), "{caps:?}");
    assert!(caps.iter().any(|c| c == "ENHANCEDSTATUSCODES"), "{caps:?}");
    // LHLO in a plain SMTP session is not a command.
    assert_eq!(say(&mut session(), "LHLO c"), "500 5.5.1");
}

#[test]
fn lmtp_answers_once_per_recipient_in_order() {
    // 40
    let mut s = lmtp();
    script(
        &mut s,
        &[
            ("LHLO c", "250"),
            ("MAIL FROM:<a@b.c>", "250 2.1.0"),
            // Core fix: RFC 2033 4.2 wants 503 here, not 554.
            ("DATA", "503 5.5.1"),
            ("RCPT TO:<one@e.f>", "250 2.1.5"),
            ("RCPT TO:<two@e.f>", "250 2.1.5"),
            ("RCPT TO:<three@e.f>", "250 2.1.5"),
            ("DATA", "receive 354"),
        ],
    );
    let ctx = delivered_context(s.received(complete("x\r\n")));
    assert_eq!(rcpt_addresses(&ctx), ["one@e.f", "two@e.f", "three@e.f"]);
    let per = vec![
        Reply::ok(),
        Reply::new(550, (5, 1, 1), "No such user"),
        Reply::new(452, (4, 2, 2), "Mailbox full"),
    ];
    assert_eq!(
        codes(&s.delivered(Delivery::PerRecipient(per), 3)),
        ["250 2.0.0", "550 5.1.1", "452 4.2.2"]
    );
}

#[test]
fn lmtp_delivery_shapes() {
    let cases: &[(Delivery, usize, &[&str])] = &[
        (Delivery::All(Reply::ok()), 3, &["250 2.0.0"; 3]),
        (
            Delivery::All(Reply::new(451, (4, 3, 0), "Later")),
            2,
            &["451 4.3.0"; 2],
        ),
        // Too few answers: the last one stands for the rest.
        (
            Delivery::PerRecipient(vec![Reply::ok(), Reply::new(550, (5, 1, 1), "No")]),
            4,
            &["250 2.0.0", "550 5.1.1", "550 5.1.1", "550 5.1.1"],
        ),
        // Too many: cut to the recipients.
        (
            Delivery::PerRecipient(vec![Reply::ok(), Reply::new(550, (5, 1, 1), "No")]),
            1,
            &["250 2.0.0"],
        ),
        (
            Delivery::PerRecipient(Vec::new()),
            2,
            &["451 4.3.0", "451 4.3.0"],
        ),
    ];
    for (delivery, n, want) in cases {
        let mut s = lmtp();
        assert_eq!(
            codes(&s.delivered(delivery.clone(), *n)),
            *want,
            "{delivery:?}"
        );
    }
}

#[test]
fn smtp_delivery_sends_one_reply() {
    let cases: &[(Delivery, &str)] = &[
        (Delivery::All(Reply::ok()), "250 2.0.0"),
        (
            Delivery::All(Reply::new(554, (5, 7, 1), "Spam")),
            "554 5.7.1",
        ),
        // At least one recipient accepted: the message is taken.
        (
            Delivery::PerRecipient(vec![Reply::new(550, (5, 1, 1), "No"), Reply::ok()]),
            "250 2.0.0",
        ),
        (
            Delivery::PerRecipient(vec![
                Reply::new(550, (5, 1, 1), "No"),
                Reply::new(452, (4, 2, 2), "Full"),
            ]),
            "550 5.1.1",
        ),
        // Core fix: no answer at all is not an acceptance.
        (Delivery::PerRecipient(Vec::new()), "451 4.3.0"),
    ];
    for (delivery, want) in cases {
        let mut s = session();
        assert_eq!(
            codes(&s.delivered(delivery.clone(), 2)),
            [*want],
            "{delivery:?}"
        );
    }
}

// ------------------------------------------------------- message endings

#[test]
fn max_messages_per_session() {
    let mut s = configured(|c| c.max_messages_per_session = Some(2));
    assert_eq!(say(&mut s, "EHLO c"), "250");
    for n in 1..=2 {
        script(
            &mut s,
            &[
                ("MAIL FROM:<a@b.c>", "250 2.1.0"),
                ("RCPT TO:<d@e.f>", "250 2.1.5"),
                ("DATA", "receive 354"),
            ],
        );
        assert_eq!(
            received(&mut s, complete("x\r\n")),
            "deliver",
            "message {n}"
        );
        s.delivered(Delivery::All(Reply::ok()), 1);
    }
    script(
        &mut s,
        &[
            ("MAIL FROM:<a@b.c>", "452 4.5.3"),
            ("QUIT", "close 221 2.0.0"),
        ],
    );

    // Failed messages do not count.
    let mut s = configured(|c| c.max_messages_per_session = Some(1));
    in_transaction(&mut s);
    assert_eq!(say(&mut s, "DATA"), "receive 354");
    assert_eq!(received(&mut s, Received::TooLarge), "552 5.3.4");
    script(&mut s, &[("MAIL FROM:<a@b.c>", "250 2.1.0")]);
}

#[test]
fn failed_bodies_are_answered_and_clear_the_transaction() {
    // 10, 22
    type MakeOutcome = fn() -> Received;
    let cases: [(MakeOutcome, &str); 3] = [
        (|| Received::TooLarge, "552 5.3.4"),
        (|| Received::BareLineEnding, "550 5.5.2"),
        (|| Received::OverBudget, "452 4.3.1"),
    ];
    for (outcome, want) in cases {
        for bdat in [false, true] {
            let mut s = session();
            in_transaction(&mut s);
            let start = if bdat { "BDAT 10 LAST" } else { "DATA" };
            assert!(say(&mut s, start).starts_with("receive"));
            assert_eq!(received(&mut s, outcome()), want, "{start}");
            assert!(!s.in_transaction(), "{start}");
            assert_eq!(s.input_mode(), InputMode::Command { max_line: 1024 });
            script(
                &mut s,
                &[
                    ("RCPT TO:<d@e.f>", "503 5.5.1"),
                    ("MAIL FROM:<a@b.c>", "250 2.1.0"),
                ],
            );
        }
    }
}

#[test]
fn body_end_when_none_was_expected_is_503() {
    let mut s = session();
    in_transaction(&mut s);
    assert_eq!(received(&mut s, complete("x")), "503 5.5.1");
    assert!(s.in_transaction());
}

#[test]
fn in_transaction_tracks_the_whole_message() {
    let mut s = session();
    assert!(!s.in_transaction());
    in_transaction(&mut s);
    assert!(s.in_transaction());
    assert_eq!(say(&mut s, "DATA"), "receive 354");
    assert!(s.in_transaction());
    assert_eq!(received(&mut s, complete("x\r\n")), "deliver");
    assert!(s.in_transaction(), "still delivering");
    s.delivered(Delivery::All(Reply::ok()), 1);
    assert!(!s.in_transaction());
}

#[test]
fn memory_budget_refuses_what_it_cannot_hold() {
    let budget = MemoryBudget::new(1000);
    let mut s = Session::new(Arc::new(Config::default()), Some(budget), info());
    in_transaction(&mut s);
    // Without SIZE a first step of 64 KiB is wanted.
    assert_eq!(say(&mut s, "DATA"), "452 4.3.1");
    assert_eq!(say(&mut s, "BDAT 5000 LAST"), "receive");
    assert!(matches!(
        s.input_mode(),
        InputMode::Bdat { discard: true, .. }
    ));
    assert_eq!(
        received(&mut s, Received::Complete(Bytes::new())),
        "452 4.3.1"
    );
    // The transaction survives; a small declared size fits.
    script(&mut s, &[("BDAT 500 LAST", "receive")]);
    assert!(matches!(
        s.input_mode(),
        InputMode::Bdat { discard: false, .. }
    ));
    assert_eq!(
        received(&mut s, Received::Complete(Bytes::new())),
        "deliver"
    );
    s.delivered(Delivery::All(Reply::ok()), 1);
    script(
        &mut s,
        &[
            ("MAIL FROM:<a@b.c> SIZE=500", "250 2.1.0"),
            ("RCPT TO:<d@e.f>", "250 2.1.5"),
            ("DATA", "receive 354"),
        ],
    );
}

#[test]
fn every_reply_but_greetings_carries_a_matching_enhanced_status() {
    // 35: RFC 2034 exempts the greeting and the HELO/EHLO/LHLO replies;
    // 3xx (334, 354) are intermediate.
    let lines = [
        "NOOP",
        "MAIL FROM:<a@b.c>",
        "EHLO c",
        "FOO",
        "EHLO",
        "VRFY x",
        "EXPN x",
        "HELP",
        "RSET",
        "RSET x",
        "STARTTLS",
        "AUTH PLAIN",
        "AUTH PLAIN *",
        "AUTH FOO",
        "MAIL FROM:<a@b.c> SIZE=999999999",
        "MAIL FROM:<a@b.c> BODY=FOO",
        "MAIL FROM:<a@b.c> X-Y=z",
        "MAIL FROM:<ü@b.c>",
        "MAIL FROM:<a@b.c>",
        "MAIL FROM:<a@b.c>",
        "RCPT TO:<ü@b.c>",
        "RCPT TO:<bad address>",
        "DATA",
        "RCPT TO:<d@e.f>",
        "RCPT TO:<g@e.f>",
        "RCPT TO:<h@e.f>",
        "DATA",
        "BDAT x",
        "QUIT",
    ];
    type Change = fn(&mut Config);
    let configs: [Change; 5] = [
        |_| {},
        |c| c.starttls = true,
        |c| {
            c.auth = true;
            c.allow_insecure_auth = true;
            c.max_recipients = 2;
        },
        |c| {
            c.require_tls = true;
            c.dsn = false;
        },
        |c| c.max_errors = 5,
    ];
    for (n, change) in configs.iter().enumerate() {
        let mut s = configured(change);
        let mut checked = 0;
        for line in lines {
            if s.is_closed() {
                break;
            }
            let greeting = ["EHLO ", "HELO ", "LHLO "]
                .iter()
                .any(|g| line.starts_with(g));
            let r = match send(&mut s, line) {
                Action::Reply(r) | Action::Close(r) | Action::StartTls(r) => r,
                Action::Receive(Some(r)) => r,
                other => panic!("config {n}: {line}: {other:?}"),
            };
            if greeting && r.code() == 250 || (300..400).contains(&r.code()) {
                continue;
            }
            let status = r
                .status()
                .unwrap_or_else(|| panic!("config {n}: {line}: {r:?}"));
            assert_eq!(
                u16::from(status.class),
                r.code() / 100,
                "config {n}: {line}: {r:?}"
            );
            checked += 1;
        }
        assert!(checked >= 5, "config {n}: only {checked} replies checked");
    }
    // Replies after a body, and the refusals at connect and at the limit.
    let mut s = configured(|c| c.max_errors = 0);
    for r in [
        s.greeting(Some(Reply::new(554, (5, 7, 1), "No"))),
        send(&mut s, "NOOP"),
    ] {
        let (Action::Reply(r) | Action::Close(r)) = r else {
            panic!("{r:?}");
        };
        assert_eq!(r.status().map(|s| u16::from(s.class)), Some(r.code() / 100));
    }
}
