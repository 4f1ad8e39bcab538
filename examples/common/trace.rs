//! The trace fields a delivering server adds on top of a message
//! (RFC 5321 4.4): `Return-Path` with the envelope sender and a `Received`
//! line saying from where, by whom, how and when; and `Received-SPF` when
//! an SPF layer checked the sender.

use std::fmt::Write;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use smtpsrv::{Context, Greeting};
use smtpsrv_middleware::spf::SpfOutcome;

/// `Return-Path:`, `Received-SPF:` (if an [`SpfOutcome`] is on `ctx`) and
/// `Received:` for `ctx`, CRLF-terminated, ready to be written in front of
/// the message.
///
/// ```text
/// Return-Path: <ann@example.org>
/// Received-SPF: pass (mx.example.com: domain of ann@example.org designates 192.0.2.1 as permitted sender)
///     receiver=mx.example.com; client-ip=192.0.2.1; envelope-from="ann@example.org"; helo=client.example;
/// Received: from client.example ([192.0.2.1])
///     (using TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384)
///     by mx.example.com (smtpsrv) with ESMTPS id 18c2f0a1b2c3d00.1
///     for <bob@example.com>; Tue, 01 Jul 2025 10:52:37 +0000
/// ```
pub fn trace_header(ctx: &Context, hostname: &str) -> Vec<u8> {
    let mut out = String::with_capacity(320);
    let sender = ctx.reverse_path().map_or("", |a| a.as_str());
    let _ = write!(out, "Return-Path: <{sender}>\r\n");
    // Above our Received field, as RFC 7208 9.1 asks. Written here rather
    // than by the SPF layer at DATA, which would copy the whole message to
    // put one line in front of it.
    if let Some(spf) = ctx.extensions().get::<SpfOutcome>() {
        out.push_str(&spf.received_spf(hostname));
    }

    let helo = ctx
        .helo_name()
        .map_or_else(|| "unknown".into(), header_safe);
    let _ = write!(
        out,
        "Received: from {helo} ({})\r\n",
        address_literal(ctx.peer_addr().ip())
    );
    if let Some(tls) = ctx.tls() {
        let _ = write!(
            out,
            "\t(using {} with cipher {})\r\n",
            tls.version,
            header_safe(&tls.cipher)
        );
    }
    let _ = write!(
        out,
        "\tby {hostname} (smtpsrv) with {} id {}",
        protocol(ctx),
        ctx.id()
    );
    // Naming the recipient only when there is one: with several, it would
    // tell each of them who else (Bcc included) got the message.
    match ctx.recipients() {
        [only] => {
            let _ = write!(out, "\r\n\tfor <{}>; ", only.address());
        }
        _ => out.push_str(";\r\n\t"),
    }
    write_rfc5322_date(&mut out, ctx.received_at());
    out.push_str("\r\n");
    out.into_bytes()
}

/// The "with" protocol, as registered by RFC 3848 (S for TLS, A for AUTH)
/// and RFC 6531 (UTF8 for SMTPUTF8).
fn protocol(ctx: &Context) -> String {
    let session = ctx.session();
    let utf8 = ctx.mail_params().smtputf8;
    let base = match session.greeting() {
        Some(Greeting::Lhlo(_)) => "LMTP",
        Some(Greeting::Ehlo(_)) if utf8 => "SMTP",
        Some(Greeting::Ehlo(_)) => "ESMTP",
        // HELO has no extensions, so no TLS or AUTH either.
        Some(Greeting::Helo(_)) | None => return "SMTP".into(),
    };
    let mut with = String::with_capacity(12);
    if utf8 {
        with.push_str("UTF8");
    }
    with.push_str(base);
    if session.is_tls() {
        with.push('S');
    }
    if session.identity().is_some() {
        with.push('A');
    }
    with
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]` (RFC 5321 4.1.3).
fn address_literal(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    }
}

/// The client chose its HELO name: keep it from breaking out of the header
/// line or the comment it sits next to.
fn header_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() || c.is_whitespace() || matches!(c, '(' | ')' | ';' | '\\') {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// `Tue, 01 Jul 2025 10:52:37 +0000` (RFC 5322 3.3), in UTC.
fn write_rfc5322_date(out: &mut String, at: SystemTime) {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let (year, month, day) = civil_from_days(days);
    let rem = secs % 86_400;
    let _ = write!(
        out,
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize], // 1970-01-01 was a Thursday
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31), for dates from
/// 1970 on (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}
