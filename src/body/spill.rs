//! Writing a message that outgrew the in-memory threshold into a temporary
//! file, while it arrives; removing the files a killed process left.
//!
//! Files are named `.smtpsrv-<pid>-<random>`: the process id says whose a
//! file is, so a server starting can remove what dead processes left
//! without touching the live files of other servers sharing the directory
//! (the default is the system's temporary directory).
//!
//! Each piece is handed to the blocking pool as the `Bytes` the connection
//! received (split off its read buffer), not copied into a file buffer
//! first; one write is in flight while the connection reads the next piece.

use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio::task::JoinHandle;

use super::Body;

/// A temporary file being filled; removed on drop unless finished.
#[derive(Debug)]
pub(crate) struct Spill {
    file: Arc<std::fs::File>,
    path: tempfile::TempPath,
    len: u64,
    /// The write in flight, if any.
    writing: Option<JoinHandle<io::Result<()>>>,
}

impl Spill {
    /// Creates `.smtpsrv-<pid>-*` in `dir` (readable by the owner only).
    pub(crate) fn create(dir: &Path) -> io::Result<Spill> {
        static PREFIX: OnceLock<String> = OnceLock::new();
        let prefix = PREFIX.get_or_init(|| format!("{PREFIX_BASE}{}-", std::process::id()));
        let (file, path) = tempfile::Builder::new()
            .prefix(prefix)
            .tempfile_in(dir)?
            .into_parts();
        Ok(Spill {
            file: Arc::new(file),
            path,
            len: 0,
            writing: None,
        })
    }

    /// Appends `data`: waits for the previous write to land, then starts
    /// this one on the blocking pool and returns.
    pub(crate) async fn write(&mut self, data: Bytes) -> io::Result<()> {
        self.landed().await?;
        if data.is_empty() {
            return Ok(());
        }
        self.len += data.len() as u64;
        let file = self.file.clone();
        self.writing = Some(tokio::task::spawn_blocking(move || {
            (&*file).write_all(&data)
        }));
        Ok(())
    }

    /// Waits for the write in flight.
    async fn landed(&mut self) -> io::Result<()> {
        match self.writing.take() {
            Some(write) => write.await.map_err(io::Error::other)?,
            None => Ok(()),
        }
    }

    /// The complete message, once every write has landed.
    pub(crate) async fn finish(mut self) -> io::Result<Body> {
        self.landed().await?;
        Ok(Body::spilled(self.path, self.len))
    }
}

const PREFIX_BASE: &str = ".smtpsrv-";

/// Removes the spill files in `dir` whose process is gone (a crash, a
/// `kill -9`: nothing else leaves them); returns how many. Files of live
/// processes, this one included, and every other file are kept. Knowing
/// whether a process lives needs `/proc`; elsewhere nothing is removed.
/// Processes in another PID namespace (a container sharing the directory)
/// look dead: give each instance its own spill directory.
pub(crate) fn remove_stale(dir: &Path) -> usize {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX_BASE))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if !is_file || pid == std::process::id() || proc.join(pid.to_string()).exists() {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove a stale spill file")
            }
        }
    }
    if removed > 0 {
        tracing::info!(dir = %dir.display(), removed, "removed spill files left by a dead process");
    }
    removed
}
