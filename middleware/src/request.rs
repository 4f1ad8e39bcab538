//! [`StageData`]: kept as another name of [`smtpsrv::Stage`], which now
//! carries the recipient, the message and `prepend_header` itself (so a
//! layer generic over every stage needs only `smtpsrv`).

use smtpsrv::Stage;

/// Another name of [`smtpsrv::Stage`], kept so that code written against
/// earlier versions of this crate (`R: StageData` bounds, `use
/// smtpsrv_middleware::StageData` for `message()`/`prepend_header()`)
/// still builds.
///
/// What `StageData` had (`recipient`, `message`, `message_id`,
/// `prepend_header`) are provided methods of `Stage` now, with the same
/// meaning; `Stage` adds `body`/`body_mut` for spilled and streaming
/// bodies. The one change: a request type of your own no longer writes
/// `impl StageData for MyRequest {}`; its `impl Stage` is all it needs.
pub use smtpsrv::Stage as StageData;

/// The address a stage's reverse-path is checked as: `None` before `MAIL`,
/// `Some(None)` for the null sender.
pub(crate) fn sender<R: Stage>(req: &R) -> Option<Option<&smtpsrv::Address>> {
    req.envelope().map(|e| e.reverse_path())
}

/// The client's IP address, with IPv4-mapped IPv6 addresses (what a
/// dual-stack socket reports for IPv4 clients) turned back into IPv4.
pub(crate) fn client_ip<R: Stage>(req: &R) -> std::net::IpAddr {
    req.client_ip()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{context, session};
    use smtpsrv::{Connect, Helo};

    #[test]
    fn prepend_header_only_changes_messages() {
        let mut ctx = context(
            session(),
            Some("a@example.org"),
            &["b@example.net"],
            "Subject: x\r\n\r\nhi\r\n",
        );
        assert!(ctx.prepend_header("X-Test: 1\r\n"));
        assert_eq!(
            &ctx.message().unwrap()[..],
            b"X-Test: 1\r\nSubject: x\r\n\r\nhi\r\n"
        );
        let mut helo = Helo::new(session(), smtpsrv::Greeting::Ehlo("c.example".into()));
        assert!(!helo.prepend_header("X-Test: 1\r\n"));
        assert!(StageData::body(&helo).is_none());
    }

    #[test]
    fn mapped_ipv4_is_canonical() {
        let s = std::sync::Arc::new(smtpsrv::SessionInfo::new(
            "[::ffff:192.0.2.7]:4000".parse().unwrap(),
            "[::]:25".parse().unwrap(),
        ));
        let c = Connect::new(s);
        assert_eq!(
            client_ip(&c),
            "192.0.2.7".parse::<std::net::IpAddr>().unwrap()
        );
    }
}
