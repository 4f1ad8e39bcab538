//! Delivery into a Maildir: write into `tmp/`, fsync, rename into `new/`,
//! fsync `new/`. A reader (an IMAP server, a test) only ever sees complete
//! messages in `new/`, and once `deliver` returns `Ok` the message survives
//! a crash or power loss, so answering 250 after it is safe.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// A Maildir (`tmp/`, `new/`, `cur/` under one root).
pub struct Maildir {
    tmp: PathBuf,
    new: PathBuf,
    /// The host part of file names, with `/` and `:` escaped as the spec asks.
    host: String,
    pid: u32,
    deliveries: AtomicU64,
}

impl Maildir {
    /// Opens the Maildir at `root`, creating its folders when missing.
    pub fn create(root: &Path, hostname: &str) -> io::Result<Arc<Self>> {
        for sub in ["tmp", "new", "cur"] {
            fs::create_dir_all(root.join(sub))?;
        }
        Ok(Arc::new(Maildir {
            tmp: root.join("tmp"),
            new: root.join("new"),
            host: hostname.replace('/', "\\057").replace(':', "\\072"),
            pid: std::process::id(),
            deliveries: AtomicU64::new(0),
        }))
    }

    /// Starts a message in `tmp/`: write it with [`MaildirFile::write`]
    /// while it arrives, then [`MaildirFile::commit`]; dropped without a
    /// commit, the file is removed (a failed or aborted message leaves
    /// nothing behind).
    pub fn begin(self: &Arc<Self>) -> io::Result<MaildirFile> {
        let name = self.unique_name();
        let tmp_path = self.tmp.join(&name);
        let file = File::create_new(&tmp_path)?;
        Ok(MaildirFile {
            maildir: Arc::clone(self),
            name,
            tmp_path,
            file: Some(file),
        })
    }

    /// Stores `header` followed by `body` as one message and returns its
    /// file name. The blocking file work runs off the async runtime.
    // mailsink streams through `begin` instead; submission uses this.
    #[allow(dead_code)]
    pub async fn deliver(self: &Arc<Self>, header: Vec<u8>, body: Bytes) -> io::Result<String> {
        let maildir = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            // Two writes instead of joining header and body: the body is
            // never copied.
            let mut file = maildir.begin()?;
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

/// A message being written into `tmp/`; removed on drop unless committed.
pub struct MaildirFile {
    maildir: Arc<Maildir>,
    name: String,
    tmp_path: PathBuf,
    file: Option<File>,
}

impl MaildirFile {
    /// Appends `chunk` (blocking: call it from `spawn_blocking`).
    pub fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        match &mut self.file {
            Some(file) => file.write_all(chunk),
            None => Err(io::Error::other("message already committed")),
        }
    }

    /// Makes the message durable and visible: fsync, rename into `new/`,
    /// fsync `new/`. Returns the file name. Blocking.
    pub fn commit(mut self) -> io::Result<String> {
        let Some(file) = self.file.take() else {
            return Err(io::Error::other("message already committed"));
        };
        file.sync_all()?;
        drop(file);
        let new = &self.maildir.new;
        fs::rename(&self.tmp_path, new.join(&self.name))?;
        // Renamed: nothing left in tmp/ for Drop to remove.
        self.tmp_path = PathBuf::new();
        // Makes the rename itself durable.
        File::open(new)?.sync_all()?;
        Ok(std::mem::take(&mut self.name))
    }
}

impl Drop for MaildirFile {
    fn drop(&mut self) {
        if !self.tmp_path.as_os_str().is_empty() {
            // Leave no half-written file behind.
            self.file = None;
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}
