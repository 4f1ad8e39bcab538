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

    /// Stores `header` followed by `body` as one message and returns its
    /// file name. The blocking file work runs off the async runtime.
    pub async fn deliver(self: &Arc<Self>, header: Vec<u8>, body: Bytes) -> io::Result<String> {
        let name = self.unique_name();
        let maildir = Arc::clone(self);
        tokio::task::spawn_blocking(move || maildir.write(&name, &header, &body).map(|()| name))
            .await
            .map_err(io::Error::other)?
    }

    fn write(&self, name: &str, header: &[u8], body: &[u8]) -> io::Result<()> {
        let tmp_path = self.tmp.join(name);
        let written = (|| {
            // Two writes instead of joining header and body: the body is
            // never copied.
            let mut file = File::create_new(&tmp_path)?;
            file.write_all(header)?;
            file.write_all(body)?;
            file.sync_all()?;
            fs::rename(&tmp_path, self.new.join(name))?;
            // Makes the rename itself durable.
            File::open(&self.new)?.sync_all()
        })();
        if written.is_err() {
            // Leave no half-written file behind (harmless if already renamed).
            let _ = fs::remove_file(&tmp_path);
        }
        written
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
