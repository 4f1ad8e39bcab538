//! Server settings and their defaults (see the table in DESIGN.md).

use std::time::Duration;

use crate::proto::LineEndings;
use crate::proxy::TrustedProxies;

/// Every setting of a server; built by [`Builder`](crate::Builder).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub hostname: String,
    pub max_message_bytes: usize,
    pub max_recipients: usize,
    pub max_messages_per_session: Option<u32>,
    pub max_line_len: usize,
    pub max_auth_line_len: usize,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    /// Longest time one call into the user's services (message handler,
    /// hook, authenticator) may take, readiness included.
    pub handler_timeout: Duration,
    /// Longest time a write of replies may take; the command timeout when unset.
    pub write_timeout: Option<Duration>,
    pub handshake_timeout: Duration,
    pub max_errors: usize,
    pub line_endings: LineEndings,
    pub starttls: bool,
    pub require_tls: bool,
    pub auth: bool,
    pub allow_insecure_auth: bool,
    pub require_auth: bool,
    pub auth_failure_delay: Duration,
    pub lmtp: bool,
    pub dsn: bool,
    pub chunking: bool,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub memory_budget: usize,
    pub spill_threshold: usize,
    pub spill_dir: Option<std::path::PathBuf>,
    pub streaming: bool,
    pub proxy: Option<TrustedProxies>,
    pub proxy_timeout: Duration,
    pub shutdown_grace: Duration,
    pub hooks: HookFlags,
    pub observer: Option<crate::observe::SharedObserver>,
    /// What is made from the settings above once, when first needed (not
    /// per connection or message).
    pub made: Made,
}

/// Values made from a [`Config`]'s settings once, when first needed: the
/// spill policy streaming bodies carry, the greeting, the QUIT reply, the
/// EHLO keywords (`fmt` per connection cost ~2,000 instructions, a tenth of
/// a connection's work). A clone starts empty: a config cloned to change a
/// setting (the implicit-TLS listener's) must not inherit what was made
/// from the old one.
#[derive(Debug, Default)]
pub(crate) struct Made {
    spill_policy: std::sync::OnceLock<std::sync::Arc<crate::body::SpillPolicy>>,
    greeting: std::sync::OnceLock<String>,
    closing: std::sync::OnceLock<String>,
    /// Without and with TLS.
    ehlo_keywords: [std::sync::OnceLock<String>; 2],
}

impl Clone for Made {
    fn clone(&self) -> Self {
        Made::default()
    }
}

impl Config {
    /// Where spilled messages go.
    pub fn spill_dir(&self) -> std::path::PathBuf {
        self.spill_dir.clone().unwrap_or_else(std::env::temp_dir)
    }

    /// The spill settings a streaming body carries (shared by every message).
    pub fn spill_policy(&self) -> std::sync::Arc<crate::body::SpillPolicy> {
        self.made
            .spill_policy
            .get_or_init(|| {
                std::sync::Arc::new(crate::body::SpillPolicy {
                    threshold: self.spill_threshold,
                    dir: self.spill_dir(),
                })
            })
            .clone()
    }

    /// The 220 greeting's text.
    pub fn greeting(&self) -> &str {
        self.made.greeting.get_or_init(|| {
            let protocol = if self.lmtp { "LMTP" } else { "ESMTP" };
            format!("{} {protocol} Service ready", self.hostname)
        })
    }

    /// The 221 reply's text (QUIT).
    pub fn closing(&self) -> &str {
        self.made
            .closing
            .get_or_init(|| format!("{} Service closing transmission channel", self.hostname))
    }

    /// The EHLO keywords offered in a session with or without TLS, one a
    /// line, each line starting with `\n` (they follow the `Hello` line).
    pub fn ehlo_keywords(&self, tls: bool) -> &str {
        self.made.ehlo_keywords[usize::from(tls)].get_or_init(|| {
            use std::fmt::Write as _;
            let mut text = String::with_capacity(256);
            let _ = write!(
                text,
                "\nPIPELINING\nSIZE {}\n8BITMIME\nSMTPUTF8\nENHANCEDSTATUSCODES",
                self.max_message_bytes
            );
            if self.chunking {
                text.push_str("\nCHUNKING\nBINARYMIME");
            }
            if self.dsn {
                text.push_str("\nDSN");
            }
            if self.starttls && !tls {
                text.push_str("\nSTARTTLS");
            }
            if self.auth_offered(tls) {
                text.push_str("\nAUTH PLAIN LOGIN");
            }
            if tls {
                text.push_str("\nREQUIRETLS");
            }
            let _ = write!(text, "\nLIMITS RCPTMAX={}", self.max_recipients);
            if let Some(n) = self.max_messages_per_session {
                let _ = write!(text, " MAILMAX={n}");
            }
            text.push_str("\nHELP");
            text
        })
    }

    /// Whether AUTH is offered in a session with or without TLS.
    pub fn auth_offered(&self, tls: bool) -> bool {
        self.auth && (tls || self.allow_insecure_auth)
    }

    /// The most message octets one transfer holds in memory: a buffered
    /// message up to the spill threshold; a streaming one a few reads.
    pub fn message_memory(&self) -> usize {
        let most = if self.streaming {
            1024 * 1024
        } else {
            self.spill_threshold
        };
        most.min(self.max_message_bytes)
    }
}

/// Which early-decision hooks are installed (the session asks only those).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HookFlags {
    pub connect: bool,
    pub helo: bool,
    pub mail: bool,
    pub rcpt: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hostname: "localhost".into(),
            max_message_bytes: 25 * 1024 * 1024,
            max_recipients: 100,
            max_messages_per_session: None,
            // RFC 5321 4.5.3.1.4 says 512; slack for long SMTPUTF8 paths and
            // parameter lists, as Postfix and others allow.
            max_line_len: 1024,
            // RFC 4954 4: AUTH lines may be up to 12288 octets.
            max_auth_line_len: 12288,
            command_timeout: Duration::from_secs(5 * 60),
            data_timeout: Duration::from_secs(10 * 60),
            // Half the 10 minutes RFC 5321 4.5.3.2.6 has the client wait for
            // the reply to the end of data: we answer (451) well before a
            // client gives up on a message we may have stored (a duplicate).
            handler_timeout: Duration::from_secs(5 * 60),
            write_timeout: None,
            handshake_timeout: Duration::from_secs(10),
            max_errors: 20,
            line_endings: LineEndings::Reject,
            starttls: false,
            require_tls: false,
            auth: false,
            allow_insecure_auth: false,
            require_auth: false,
            auth_failure_delay: Duration::from_secs(1),
            lmtp: false,
            dsn: true,
            chunking: true,
            max_connections: 10_000,
            max_connections_per_ip: 100,
            memory_budget: 1024 * 1024 * 1024,
            spill_threshold: 1024 * 1024,
            spill_dir: None,
            streaming: false,
            proxy: None,
            proxy_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(60),
            hooks: HookFlags::default(),
            observer: None,
            made: Made::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_clone_makes_its_own_texts() {
        let config = Config {
            hostname: "old.example".into(),
            ..Config::default()
        };
        assert!(config.greeting().starts_with("old.example "));
        assert_eq!(
            config.ehlo_keywords(false).contains("\nSTARTTLS"),
            config.starttls
        );
        let changed = Config {
            hostname: "new.example".into(),
            starttls: !config.starttls,
            ..config.clone()
        };
        assert!(changed.greeting().starts_with("new.example "));
        assert!(changed.closing().starts_with("new.example "));
        assert_eq!(
            changed.ehlo_keywords(false).contains("\nSTARTTLS"),
            changed.starttls
        );
    }
}
