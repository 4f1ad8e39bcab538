//! Delivery into a Maildir: write into `tmp/`, fsync, rename into `new/`,
//! fsync `new/`. A reader (an IMAP server, a test) only ever sees complete
//! messages in `new/`, and once `commit` (or `deliver`) returns `Ok` the
//! message survives a crash or power loss, so answering 250 after it is safe.
//!
//! Files are stored the way Maildir readers expect them (qmail, Dovecot,
//! mutt, maildrop): lines end with LF, and the name carries the Maildir++
//! sizes, `<unique>,S=<bytes on disk>,W=<bytes with CRLF line ends>`, so
//! that Dovecot need not read a message to know its size. The wire's CRLF
//! can be kept instead ([`LineEnds::Wire`]); a `BODY=BINARYMIME` message
//! should always be stored that way, since CR LF inside it is data.

// Each example that includes this module uses a part of it.
#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// How line ends are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEnds {
    /// CR LF becomes LF, as Maildir readers expect (a bare CR or LF stays).
    Lf,
    /// The bytes exactly as received.
    Wire,
}

/// A Maildir (`tmp/`, `new/`, `cur/` under one root).
pub struct Maildir {
    tmp: PathBuf,
    new: PathBuf,
    /// The host part of file names, with `/`, `:` and `,` escaped (`:`
    /// starts the flags, `,` the Maildir++ fields).
    host: String,
    pid: u32,
    deliveries: AtomicU64,
    line_ends: LineEnds,
}

impl Maildir {
    /// Opens the Maildir at `root`, creating its folders when missing;
    /// messages are stored with LF line ends.
    pub fn create(root: &Path, hostname: &str) -> io::Result<Arc<Self>> {
        Self::with_line_ends(root, hostname, LineEnds::Lf)
    }

    /// [`create`](Self::create), storing line ends as `line_ends` says.
    pub fn with_line_ends(
        root: &Path,
        hostname: &str,
        line_ends: LineEnds,
    ) -> io::Result<Arc<Self>> {
        for sub in ["tmp", "new", "cur"] {
            fs::create_dir_all(root.join(sub))?;
        }
        Ok(Arc::new(Maildir {
            tmp: root.join("tmp"),
            new: root.join("new"),
            host: hostname
                .replace('/', "\\057")
                .replace(':', "\\072")
                .replace(',', "\\054"),
            pid: std::process::id(),
            deliveries: AtomicU64::new(0),
            line_ends,
        }))
    }

    /// How to store the message of `ctx`: as received when it was sent
    /// with `BODY=BINARYMIME` (its CR LF are data), else this Maildir's way.
    pub fn line_ends_for(&self, ctx: &smtpsrv::Context) -> LineEnds {
        match ctx.mail_params().body {
            Some(smtpsrv::proto::BodyType::BinaryMime) => LineEnds::Wire,
            _ => self.line_ends,
        }
    }

    /// Starts a message: creates `tmp/<unique>`, written with
    /// [`MaildirFile::write`] and moved into `new/` by
    /// [`MaildirFile::commit`]. Blocking file work: call it off the async
    /// runtime (`spawn_blocking`) where that matters.
    pub fn begin(self: &Arc<Self>) -> io::Result<MaildirFile> {
        self.begin_with(self.line_ends)
    }

    /// [`begin`](Self::begin) with its own line ends (e.g.
    /// [`LineEnds::Wire`] for a `BODY=BINARYMIME` message).
    pub fn begin_with(self: &Arc<Self>, line_ends: LineEnds) -> io::Result<MaildirFile> {
        let unique = self.unique_name();
        let tmp_path = self.tmp.join(&unique);
        let file = File::create_new(&tmp_path)?;
        Ok(MaildirFile {
            maildir: Arc::clone(self),
            file: Some(file),
            tmp_path,
            unique,
            line_ends,
            pending_cr: false,
            size: 0,
            line_feeds: 0,
            last_cr: false,
            scratch: Vec::new(),
        })
    }

    /// Stores `header` followed by `body` as one message and returns its
    /// file name. The blocking file work runs off the async runtime.
    pub async fn deliver(self: &Arc<Self>, header: Vec<u8>, body: Bytes) -> io::Result<String> {
        self.deliver_with(self.line_ends, header, body).await
    }

    /// [`deliver`](Self::deliver) with its own line ends.
    pub async fn deliver_with(
        self: &Arc<Self>,
        line_ends: LineEnds,
        header: Vec<u8>,
        body: Bytes,
    ) -> io::Result<String> {
        let maildir = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut file = maildir.begin_with(line_ends)?;
            // Two writes instead of joining header and body: the body is
            // never copied (in wire mode).
            file.write(&header)?;
            file.write(&body)?;
            file.commit()
        })
        .await
        .map_err(io::Error::other)?
    }

    /// `seconds.MmicrosecondsPpidQn.host`: unique per process (the counter),
    /// per restart (time and pid) and per machine (host).
    fn unique_name(&self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let n = self.deliveries.fetch_add(1, Ordering::Relaxed);
        format!(
            "{}.M{}P{}Q{}.{}",
            now.as_secs(),
            now.subsec_micros(),
            self.pid,
            n,
            self.host
        )
    }
}

/// A message being written into `tmp/`. Dropped without
/// [`commit`](Self::commit), its file is removed: nothing half-written
/// stays behind.
pub struct MaildirFile {
    maildir: Arc<Maildir>,
    /// `None` once committed.
    file: Option<File>,
    tmp_path: PathBuf,
    unique: String,
    line_ends: LineEnds,
    /// The last chunk ended with CR: whether it is a line end depends on
    /// the next chunk's first byte.
    pending_cr: bool,
    /// Bytes written to the file.
    size: u64,
    /// LFs written that are not after a CR (each one is a CRLF on the wire).
    line_feeds: u64,
    /// The last byte written was a CR.
    last_cr: bool,
    /// The converted chunk, reused between writes.
    scratch: Vec<u8>,
}

impl MaildirFile {
    /// Appends `chunk` (blocking). In LF mode CR LF becomes LF, also when
    /// the CR ends one chunk and the LF starts the next.
    pub fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("message already committed"));
        };
        if self.line_ends == LineEnds::Wire {
            file.write_all(chunk)?;
            self.size += chunk.len() as u64;
            return Ok(());
        }
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        let mut rest = chunk;
        if self.pending_cr {
            self.pending_cr = false;
            if rest.first() != Some(&b'\n') {
                // A bare CR: data, kept.
                out.push(b'\r');
            }
        }
        while let Some(i) = memchr::memchr(b'\r', rest) {
            out.extend_from_slice(&rest[..i]);
            match rest.get(i + 1) {
                // CR LF: the LF alone is written with the next run.
                Some(b'\n') => {}
                Some(_) => out.push(b'\r'),
                None => self.pending_cr = true,
            }
            rest = &rest[i + 1..];
        }
        out.extend_from_slice(rest);
        let written = file.write_all(&out);
        self.size += out.len() as u64;
        // A reader takes an LF after a CR as that CR's line end.
        for i in memchr::memchr_iter(b'\n', &out) {
            let after_cr = match i {
                0 => self.last_cr,
                _ => out[i - 1] == b'\r',
            };
            self.line_feeds += u64::from(!after_cr);
        }
        if let Some(&last) = out.last() {
            self.last_cr = last == b'\r';
        }
        self.scratch = out;
        written
    }

    /// Makes the message durable and visible: fsync, rename into `new/`
    /// under its Maildir++ name, fsync `new/`. Returns the file name.
    pub fn commit(mut self) -> io::Result<String> {
        if self.pending_cr {
            self.pending_cr = false;
            self.write_raw(b"\r")?;
        }
        let Some(file) = self.file.take() else {
            return Err(io::Error::other("message already committed"));
        };
        let committed = (|| {
            file.sync_all()?;
            drop(file);
            let name = match self.line_ends {
                LineEnds::Lf => format!(
                    "{},S={},W={}",
                    self.unique,
                    self.size,
                    self.size + self.line_feeds
                ),
                LineEnds::Wire => format!("{},S={}", self.unique, self.size),
            };
            fs::rename(&self.tmp_path, self.maildir.new.join(&name))?;
            // Makes the rename itself durable.
            File::open(&self.maildir.new)?.sync_all()?;
            Ok(name)
        })();
        if committed.is_err() {
            // Leave no half-written file behind (harmless if already renamed).
            let _ = fs::remove_file(&self.tmp_path);
        }
        committed
    }

    fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("message already committed"));
        };
        file.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }
}

impl Drop for MaildirFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}
