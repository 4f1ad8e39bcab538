//! Reads the hand-off stream and delivers into a Maildir, exactly once per
//! message id.
//!
//! JetStream delivers at least once: a message whose ack was lost (the
//! consumer died between storing and acking, or was slower than
//! `ack_wait`) comes again. [`IdMaildir`] makes the delivery idempotent: a
//! message's Maildir file name is its `Nats-Msg-Id`, and the file is put
//! in `new/` with a hard link, which fails when the name exists. So a
//! redelivered message finds its file and is only acked again.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures_util::StreamExt;
use smtpsrv::BoxError;

use crate::handoff::header;

/// A Maildir whose file names are message ids.
#[derive(Debug)]
pub struct IdMaildir {
    root: PathBuf,
    tmp_counter: AtomicU64,
}

/// What [`IdMaildir::deliver`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// The message is now in `new/`.
    Stored,
    /// A file with this id was already there (a redelivery).
    AlreadyThere,
}

impl IdMaildir {
    /// Opens the Maildir at `root`, creating `tmp/`, `new/` and `cur/`.
    pub fn create(root: &Path) -> io::Result<Self> {
        for sub in ["tmp", "new", "cur"] {
            fs::create_dir_all(root.join(sub))?;
        }
        Ok(IdMaildir {
            root: root.to_owned(),
            tmp_counter: AtomicU64::new(0),
        })
    }

    /// The file name for `id`: `/` and `:` are not allowed in Maildir
    /// names, so they (and anything outside printable ASCII) are escaped.
    pub fn file_name(id: &str) -> String {
        let mut out = String::with_capacity(id.len());
        for c in id.chars() {
            match c {
                '/' | ':' | '\\' => out.push_str(&format!("\\{:03o}", c as u32)),
                c if c.is_ascii_graphic() => out.push(c),
                _ => out.push('_'),
            }
        }
        out
    }

    /// Whether `name` is in `new/` or, moved there by a reader, in `cur/`
    /// (as `name:2,FLAGS`).
    fn exists(&self, name: &str) -> io::Result<bool> {
        if self.root.join("new").join(name).exists() {
            return Ok(true);
        }
        let prefix = format!("{name}:");
        for entry in fs::read_dir(self.root.join("cur"))? {
            let entry = entry?;
            let file = entry.file_name();
            let file = file.to_string_lossy();
            if file == name || file.starts_with(&prefix) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Stores `header` then `body` as the message `id`, durably (fsync of
    /// the file and of `new/`), unless it is there already. Blocking: call
    /// it off the async runtime.
    pub fn deliver(&self, id: &str, header: &[u8], body: &[u8]) -> io::Result<Delivered> {
        let name = Self::file_name(id);
        if self.exists(&name)? {
            return Ok(Delivered::AlreadyThere);
        }
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{name}.{}.{n}", std::process::id()));
        let result = (|| {
            let mut file = File::create(&tmp)?;
            file.write_all(header)?;
            file.write_all(body)?;
            file.sync_all()?;
            // link, not rename: it fails when the name exists, so two
            // deliveries of one id racing cannot both succeed.
            match fs::hard_link(&tmp, self.root.join("new").join(&name)) {
                Ok(()) => {
                    File::open(self.root.join("new"))?.sync_all()?;
                    Ok(Delivered::Stored)
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Delivered::AlreadyThere),
                Err(e) => Err(e),
            }
        })();
        let _ = fs::remove_file(&tmp);
        result
    }
}

/// `Return-Path` and `Received` for a message from the stream, built from
/// its headers (the Received line names the instance that took it).
pub fn trace_header(headers: Option<&async_nats::HeaderMap>) -> Vec<u8> {
    let get = |name: &str| {
        headers
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    let from = get(header::MAIL_FROM).unwrap_or_else(|| "<>".into());
    let helo = get(header::HELO).unwrap_or_else(|| "unknown".into());
    let peer = get(header::PEER).unwrap_or_default();
    let ip = peer
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or(peer);
    let host = get(header::HOST).unwrap_or_else(|| "localhost".into());
    let id = get(header::MESSAGE_ID).unwrap_or_default();
    let at = get(header::RECEIVED_AT)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    format!(
        "Return-Path: {from}\r\nReceived: from {helo} ([{ip}])\r\n\tby {host} (smtpsrv) with ESMTP id {id};\r\n\t{}\r\n",
        rfc5322_date(at)
    )
    .into_bytes()
}

/// `Tue, 01 Jul 2025 10:52:37 +0000` (RFC 5322 3.3) for Unix time `secs`.
fn rfc5322_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    // Howard Hinnant's civil_from_days, for dates from 1970 on.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let rem = secs % 86_400;
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize], // 1970-01-01 was a Thursday
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            super::rfc5322_date(1_751_367_157),
            "Tue, 01 Jul 2025 10:52:37 +0000"
        );
    }
}

/// How [`run`] reads the stream.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// The stream (default `SMTP`).
    pub stream: String,
    /// The durable consumer's name (default `maildir`): the stream
    /// remembers what it acked, so a restart resumes where it stopped.
    pub durable: String,
    /// How long a delivered message may stay unacked before it is sent
    /// again (default 30 s).
    pub ack_wait: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            stream: "SMTP".into(),
            durable: "maildir".into(),
            ack_wait: Duration::from_secs(30),
        }
    }
}

/// Delivers the stream into `maildir` until `shutdown` completes: each
/// message is stored (or found already stored) and only then acked; a
/// message that cannot be stored is nacked and comes again. A message
/// without `Nats-Msg-Id` is stored under `seq-<stream sequence>`.
pub async fn run(
    js: &jetstream::Context,
    config: &ConsumerConfig,
    maildir: std::sync::Arc<IdMaildir>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), BoxError> {
    let stream = js.get_stream(&config.stream).await?;
    let consumer = stream
        .get_or_create_consumer(
            &config.durable,
            pull::Config {
                durable_name: Some(config.durable.clone()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                ..Default::default()
            },
        )
        .await?;
    let mut messages = consumer.messages().await?;
    tokio::pin!(shutdown);
    loop {
        let message = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            next = messages.next() => match next {
                None => return Ok(()),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "stream read failed; continuing");
                    continue;
                }
                Some(Ok(m)) => m,
            },
        };
        let id = match message
            .headers
            .as_ref()
            .and_then(|h| h.get(header::MESSAGE_ID))
        {
            Some(id) => id.as_str().to_owned(),
            None => format!("seq-{}", message.info().map_or(0, |i| i.stream_sequence)),
        };
        let header = trace_header(message.headers.as_ref());
        let payload = message.payload.clone();
        let dir = std::sync::Arc::clone(&maildir);
        let id2 = id.clone();
        let stored =
            tokio::task::spawn_blocking(move || dir.deliver(&id2, &header, &payload)).await;
        match stored {
            Ok(Ok(done)) => {
                tracing::info!(id = %id, ?done, "delivered");
                if let Err(e) = message.ack().await {
                    // Redelivered later and found already there.
                    tracing::warn!(id = %id, error = %e, "ack failed");
                }
            }
            Ok(Err(e)) => {
                tracing::error!(id = %id, error = %e, "cannot store; will retry");
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
