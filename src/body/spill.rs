//! Writing a message that outgrew the in-memory threshold into a temporary
//! file, while it arrives.

use std::io;
use std::path::Path;

use tokio::io::AsyncWriteExt;

use super::Body;

/// A temporary file being filled; removed on drop unless finished.
#[derive(Debug)]
pub(crate) struct Spill {
    file: tokio::fs::File,
    path: tempfile::TempPath,
    len: u64,
}

impl Spill {
    /// Creates `.smtpsrv-*` in `dir` (readable by the owner only).
    pub(crate) fn create(dir: &Path) -> io::Result<Spill> {
        let (file, path) = tempfile::Builder::new()
            .prefix(".smtpsrv-")
            .tempfile_in(dir)?
            .into_parts();
        Ok(Spill {
            file: tokio::fs::File::from_std(file),
            path,
            len: 0,
        })
    }

    /// Appends `data` (the write runs on the blocking pool; the next call
    /// waits for it, so one write is in flight while the socket is read).
    pub(crate) async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data).await?;
        self.len += data.len() as u64;
        Ok(())
    }

    /// The complete message, once every write has landed.
    pub(crate) async fn finish(mut self) -> io::Result<Body> {
        self.file.flush().await?;
        drop(self.file);
        Ok(Body::spilled(self.path, self.len))
    }
}
