//! Writing a message that outgrew the in-memory threshold into a temporary
//! file, while it arrives.
//!
//! Each piece is handed to the blocking pool as the `Bytes` the connection
//! received (split off its read buffer), not copied into a file buffer
//! first; one write is in flight while the connection reads the next piece.

use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

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
    /// Creates `.smtpsrv-*` in `dir` (readable by the owner only).
    pub(crate) fn create(dir: &Path) -> io::Result<Spill> {
        let (file, path) = tempfile::Builder::new()
            .prefix(".smtpsrv-")
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
