//! [`Body`]: the message a handler receives, in memory, on disk, or still
//! arriving.
//!
//! # Three shapes, one API
//!
//! - **In memory** (the default for messages up to
//!   [`Builder::spill_threshold`](crate::Builder::spill_threshold), 1 MiB
//!   unless changed): the zero-copy [`Bytes`] the connection received.
//! - **Spilled**: past the threshold the server writes the message to a
//!   temporary file in [`Builder::spill_dir`](crate::Builder::spill_dir)
//!   (default [`std::env::temp_dir`]) while it arrives, so a connection
//!   holds a few hundred KiB whatever the message size. The file is removed
//!   when the last clone of the body is dropped: after the handler returns,
//!   on panic (unwinding drops it) and on shutdown. Only a killed process
//!   leaves files behind; they are named `.smtpsrv-<pid>-*`, and the next
//!   server to start with that directory removes those of dead processes.
//! - **Streaming** (opt in with [`Builder::streaming`](crate::Builder::streaming)):
//!   the handler is called when `DATA` (or the first `BDAT`) starts, and the
//!   body yields chunks as they arrive. The socket is not read faster than
//!   the handler consumes (a bounded channel of a few chunks), so memory per
//!   connection is bounded by the read size, not the message size.
//!
//! Every shape reads the same way: [`Body::chunks`] (a [`Stream`] of
//! `Bytes`), [`Body::reader`] (an [`AsyncRead`]), or [`Body::bytes`] (the
//! whole message in memory). [`Body::prepend`] puts a header on top without
//! touching the disk or the stream. [`Context::message`](crate::Context::message)
//! and [`Context::parse`](crate::Context::parse) keep working for spilled
//! bodies: they read the file into memory once, on demand (blocking, a
//! short read from the page cache; prefer `chunks` in hot paths).
//!
//! Nothing here panics on any shape. The synchronous whole-message
//! accessors ([`Body::as_bytes`], `Context::message`, `Context::parse`) are
//! fallible: on a streaming body they return [`BodyError::NotBuffered`]
//! (a handler using `?` answers `451`, so a misconfigured server never
//! acknowledges a message it did not store), and a spilled file that cannot
//! be read is a [`BodyError::Io`].
//!
//! # Which mode to use
//!
//! Buffered (the default, with spilling) suits handlers that need the whole
//! message before deciding: parsing, DKIM/DMARC/SPF layers, webhooks
//! (`smtp2http`). Memory stays bounded by the threshold; the handler still
//! sees a complete message and may read it several times.
//!
//! Streaming suits handlers that store or forward bytes as they come: mail
//! to object storage, Maildir, archives, scanners that hash. The handler
//! works while the client sends, and nothing is held but the chunk in
//! flight. Code that needs the whole message ([`Context::message`](crate::Context::message))
//! gets [`BodyError::NotBuffered`] from a streaming body; [`Body::buffer`]
//! first turns it into what buffered mode would have produced (in memory
//! up to the spill threshold, spilled past it). The DKIM and DMARC layers
//! of `smtpsrv-middleware` read a streaming body to its end themselves
//! (into memory: mail-auth verifies one byte slice), so they work on a
//! streaming server, at the cost of streaming for the handler behind them;
//! the size layer caps a streaming body with [`Body::limit`] instead.
//!
//! # Failures never look like the end
//!
//! A streaming body ends (`None`) only after `CRLF.CRLF` or `BDAT LAST`
//! arrived within every limit. Anything else (the message grew past the
//! size limit, a bare CR or LF under the default policy, the client went
//! away, the data timeout, shutdown, `RSET` between `BDAT` chunks) yields a
//! [`BodyError`] instead. In that case the handler's answer is ignored and
//! the client gets the same reply as in buffered mode: nothing is ever
//! acknowledged that was not fully received. A handler that answers before
//! reading everything has its reply sent once the rest has been drained.
//!
//! # Examples
//!
//! Stream a message to a file as it arrives (streaming mode):
//!
//! ```
//! use futures_util::StreamExt;
//! use smtpsrv::{BoxError, Context, Reply};
//! use tokio::io::AsyncWriteExt;
//!
//! async fn store(ctx: Context, dir: std::path::PathBuf) -> Result<Reply, BoxError> {
//!     let path = dir.join(ctx.id().as_str());
//!     let mut file = tokio::fs::File::create(&path).await?;
//!     let mut chunks = ctx.body().chunks();
//!     while let Some(chunk) = chunks.next().await {
//!         match chunk {
//!             Ok(chunk) => file.write_all(&chunk).await?,
//!             Err(e) => {
//!                 // Not the end: the message failed; never keep it.
//!                 drop(file);
//!                 tokio::fs::remove_file(&path).await?;
//!                 return Err(e.into());
//!             }
//!         }
//!     }
//!     file.sync_all().await?;
//!     Ok(Reply::ok())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! # let dir = tempfile::tempdir()?;
//! # let session = std::sync::Arc::new(smtpsrv::SessionInfo::new(
//! #     "192.0.2.1:5000".parse()?, "127.0.0.1:25".parse()?));
//! # let ctx = Context::new(session, smtpsrv::Envelope::default(), "Subject: x\r\n\r\nhi\r\n".into());
//! # let id = ctx.id().clone();
//! assert_eq!(store(ctx, dir.path().into()).await?.code(), 250);
//! # assert_eq!(std::fs::read(dir.path().join(id.as_str()))?, b"Subject: x\r\n\r\nhi\r\n");
//! # Ok(())
//! # }
//! ```
//!
//! Hash a message while it arrives, through the [`AsyncRead`] side (any
//! mode; in streaming mode the hash is ready when the last chunk is):
//!
//! ```
//! use ring::digest::{Context as Digest, SHA256};
//! use smtpsrv::{BoxError, Context};
//! use tokio::io::AsyncReadExt;
//!
//! async fn digest(ctx: Context) -> Result<Vec<u8>, BoxError> {
//!     let mut reader = ctx.body().reader();
//!     let mut hasher = Digest::new(&SHA256);
//!     let mut buf = vec![0; 64 * 1024];
//!     loop {
//!         // An incomplete message is an error here, never a short read.
//!         let n = reader.read(&mut buf).await?;
//!         if n == 0 {
//!             break;
//!         }
//!         hasher.update(&buf[..n]);
//!     }
//!     Ok(hasher.finish().as_ref().to_vec())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! # let session = std::sync::Arc::new(smtpsrv::SessionInfo::new(
//! #     "192.0.2.1:5000".parse()?, "127.0.0.1:25".parse()?));
//! let ctx = Context::new(session, smtpsrv::Envelope::default(), "hi\r\n".into());
//! let expected = ring::digest::digest(&SHA256, b"hi\r\n");
//! assert_eq!(digest(ctx).await?, expected.as_ref());
//! # Ok(())
//! # }
//! ```

mod channel;
mod spill;

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context as TaskContext, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};
use tokio_util::io::{ReaderStream, StreamReader};

pub(crate) use channel::{BodySender, channel};
pub(crate) use spill::{Spill, remove_stale};

/// Why a message body could not be read to its end. The message was not
/// accepted: the client gets the same failure reply as without streaming.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The message grew past the size limit (`552 5.3.4`).
    #[error("message larger than the size limit")]
    TooLarge,
    /// A bare CR or LF under the rejecting policy (`550 5.5.2`).
    #[error("bare CR or LF in the message")]
    BareLineEnding,
    /// The server could not hold the message (memory budget or disk).
    #[error("insufficient storage for the message")]
    Storage,
    /// The transfer stopped before its end: client gone, data timeout,
    /// shutdown, or the transaction was reset between `BDAT` chunks.
    #[error("message transfer aborted before its end")]
    Aborted,
    /// A streaming body is read once; another reader already took it.
    #[error("the streaming body was already taken by another reader")]
    AlreadyTaken,
    /// Reading a spilled body from its temporary file failed.
    #[error("reading the spilled message: {0}")]
    Io(Arc<io::Error>),
    /// A streaming body asked for whole and synchronously
    /// ([`Body::as_bytes`], `Context::message`): read it with
    /// [`Body::chunks`], [`Body::reader`] or [`Body::bytes`], or call
    /// [`Body::buffer`] first.
    #[error("a streaming body is not held whole: read it as chunks, or call Body::buffer first")]
    NotBuffered,
}

impl BodyError {
    /// The reply for a message whose body failed this way; also what a
    /// handler returning the error (`body.bytes().await?`) is answered.
    pub fn reply(&self) -> crate::Reply {
        use crate::Reply;
        match self {
            BodyError::TooLarge => Reply::new(
                552,
                (5, 3, 4),
                "Message size exceeds fixed maximum message size",
            ),
            BodyError::BareLineEnding => Reply::new(
                550,
                (5, 5, 2),
                "Bare CR or LF in message not allowed (RFC 5321 2.3.8)",
            ),
            BodyError::Storage => Reply::new(
                452,
                (4, 3, 1),
                "Insufficient system storage, try again later",
            ),
            BodyError::Aborted
            | BodyError::AlreadyTaken
            | BodyError::Io(_)
            | BodyError::NotBuffered => {
                Reply::new(451, (4, 3, 0), "Temporary failure, try again later")
            }
        }
    }
}

impl From<BodyError> for io::Error {
    fn from(e: BodyError) -> io::Error {
        match e {
            BodyError::Io(inner) => io::Error::new(inner.kind(), BodyError::Io(inner)),
            other => io::Error::other(other),
        }
    }
}

/// A message body: in memory, spilled to a temporary file, or streaming.
/// Cheap to clone (shared); see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Body {
    /// Header fields put on top with [`Body::prepend`] (spilled and
    /// streaming bodies; an in-memory body is rewritten instead).
    prefix: Bytes,
    content: Content,
    /// A spilled body read into memory by [`Body::as_bytes`].
    loaded: OnceLock<Bytes>,
    /// Where [`Body::buffer`] puts a streaming body past the threshold.
    spill: Option<Arc<SpillPolicy>>,
    /// Most octets a reader gets before [`BodyError::TooLarge`]
    /// ([`Body::limit`]).
    limit: Option<u64>,
}

/// The server's spill settings, carried by a streaming body so that
/// [`Body::buffer`] keeps memory as bounded as buffered mode does.
#[derive(Debug)]
pub(crate) struct SpillPolicy {
    pub(crate) threshold: usize,
    pub(crate) dir: std::path::PathBuf,
}

#[derive(Debug, Clone)]
enum Content {
    Memory(Bytes),
    Spilled(Arc<SpillFile>),
    Streaming(Arc<Mutex<Option<channel::BodyReceiver>>>),
}

/// A complete spilled message; the file goes when the last clone does.
#[derive(Debug)]
pub(crate) struct SpillFile {
    path: tempfile::TempPath,
    len: u64,
}

impl Default for Body {
    fn default() -> Self {
        Body::from(Bytes::new())
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Body {
            prefix: Bytes::new(),
            content: Content::Memory(bytes),
            loaded: OnceLock::new(),
            spill: None,
            limit: None,
        }
    }
}

impl Body {
    fn with_content(content: Content) -> Self {
        Body {
            prefix: Bytes::new(),
            content,
            loaded: OnceLock::new(),
            spill: None,
            limit: None,
        }
    }

    /// The size in octets; `None` for a streaming body (not known before
    /// its end).
    pub fn len(&self) -> Option<u64> {
        let content = match &self.content {
            Content::Memory(b) => b.len() as u64,
            Content::Spilled(f) => f.len,
            Content::Streaming(_) => return None,
        };
        Some(self.prefix.len() as u64 + content)
    }

    /// Whether the body is known to be empty.
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// Whether the body lives in a temporary file.
    pub fn is_spilled(&self) -> bool {
        matches!(self.content, Content::Spilled(_))
    }

    /// Whether the body is still arriving (streaming mode).
    pub fn is_streaming(&self) -> bool {
        matches!(self.content, Content::Streaming(_))
    }

    /// The in-memory bytes, if the body is in memory (no load, no copy).
    pub fn in_memory(&self) -> Option<&Bytes> {
        match &self.content {
            Content::Memory(b) => Some(b),
            _ => self.loaded.get(),
        }
    }

    /// The whole message in memory. An in-memory body is returned as is;
    /// a spilled one is read from its file (once, blocking; the result is
    /// kept). Never panics: a streaming body, which cannot be had whole
    /// without waiting, is [`BodyError::NotBuffered`] (use [`Body::bytes`],
    /// or [`Body::buffer`] first), and an unreadable file is
    /// [`BodyError::Io`].
    pub fn as_bytes(&self) -> Result<&Bytes, BodyError> {
        if self.over_limit() {
            return Err(BodyError::TooLarge);
        }
        match &self.content {
            Content::Memory(b) => Ok(b),
            Content::Spilled(file) => {
                if let Some(loaded) = self.loaded.get() {
                    return Ok(loaded);
                }
                let content = std::fs::read(&file.path).map_err(io_error)?;
                Ok(self.loaded.get_or_init(|| concat(&self.prefix, &content)))
            }
            Content::Streaming(_) => Err(BodyError::NotBuffered),
        }
    }

    /// The whole message in memory, without blocking: reads a spilled file
    /// asynchronously and collects a streaming body.
    pub async fn bytes(&self) -> Result<Bytes, BodyError> {
        if self.over_limit() {
            return Err(BodyError::TooLarge);
        }
        if let Some(b) = self.in_memory() {
            return Ok(b.clone());
        }
        let mut out = BytesMut::with_capacity(self.len().unwrap_or(0) as usize);
        let mut chunks = self.chunks();
        while let Some(chunk) = futures_util::StreamExt::next(&mut chunks).await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out.freeze())
    }

    /// Reads a streaming body to its end and keeps it as buffered mode
    /// would have: in memory up to the server's spill threshold, in a
    /// temporary file past it, so that [`Body::as_bytes`] (and
    /// `Context::message`/`parse`) work. Other bodies are left as they are.
    /// The size is bounded by the server's size limit (the body fails with
    /// [`BodyError::TooLarge`] past it). A body made with
    /// `Context::with_body` outside a server has no spill settings and is
    /// collected in memory.
    pub async fn buffer(&mut self) -> Result<(), BodyError> {
        if !self.is_streaming() {
            return Ok(());
        }
        let policy = self.spill.clone();
        let mut held = BytesMut::new();
        let mut spill: Option<Spill> = None;
        let mut chunks = self.chunks();
        while let Some(chunk) = futures_util::StreamExt::next(&mut chunks).await {
            let chunk = chunk?;
            if let Some(file) = &mut spill {
                file.write(chunk).await.map_err(io_error)?;
                continue;
            }
            held.extend_from_slice(&chunk);
            if let Some(policy) = policy.as_deref().filter(|p| held.len() > p.threshold) {
                let mut file = Spill::create(&policy.dir).map_err(io_error)?;
                file.write(std::mem::take(&mut held).freeze())
                    .await
                    .map_err(io_error)?;
                spill = Some(file);
            }
        }
        *self = match spill {
            Some(file) => file.finish().await.map_err(io_error)?,
            None => Body::from(held.freeze()),
        };
        Ok(())
    }

    /// Caps the body at `max` octets (header fields put on top included): a
    /// reader going past it gets [`BodyError::TooLarge`], which a handler
    /// passing it on is answered `552 5.3.4` for. For a streaming body,
    /// whose size is known only at its end (per-policy size limits below
    /// the server's, as `smtpsrv-middleware`'s size layer sets); a body of
    /// known size can be compared with [`Body::len`] instead.
    pub fn limit(&mut self, max: u64) {
        self.limit = Some(self.limit.map_or(max, |old| old.min(max)));
    }

    fn over_limit(&self) -> bool {
        matches!((self.limit, self.len()), (Some(max), Some(len)) if len > max)
    }

    /// Puts `field` (one or more complete header fields, each ending in
    /// CRLF) on top of the message. An in-memory body is rewritten; a
    /// spilled or streaming one keeps it apart and yields it first.
    pub fn prepend(&mut self, field: &[u8]) {
        match &self.content {
            Content::Memory(b) => *self = Body::from(concat(field, b)),
            _ => {
                self.prefix = concat(field, &self.prefix);
                if let Some(loaded) = self.loaded.take() {
                    let _ = self.loaded.set(concat(field, &loaded));
                }
            }
        }
    }

    /// The body as a stream of chunks. A streaming body can be read this
    /// way once (its clones share it); a later reader gets
    /// [`BodyError::AlreadyTaken`]. Ends with `None` only after the whole
    /// message; a failed transfer yields a [`BodyError`] instead.
    pub fn chunks(&self) -> Chunks {
        let prefix = (!self.prefix.is_empty()).then(|| self.prefix.clone());
        let source = match &self.content {
            Content::Memory(b) => Source::Memory(Some(b.clone())),
            Content::Spilled(_) if self.loaded.get().is_some() => {
                return Chunks {
                    prefix: None,
                    source: Source::Memory(self.loaded.get().cloned()),
                    remaining: self.limit,
                };
            }
            Content::Spilled(file) => match std::fs::File::open(&file.path) {
                Ok(f) => Source::File {
                    _keep: file.clone(),
                    stream: ReaderStream::with_capacity(tokio::fs::File::from_std(f), CHUNK),
                },
                Err(e) => Source::Failed(Some(io_error(e))),
            },
            Content::Streaming(shared) => match shared.lock().map(|mut g| g.take()) {
                Ok(Some(rx)) => Source::Stream(rx),
                _ => Source::Failed(Some(BodyError::AlreadyTaken)),
            },
        };
        Chunks {
            prefix,
            source,
            remaining: self.limit,
        }
    }

    /// The body as an [`AsyncRead`] (and [`AsyncBufRead`]); a failed
    /// transfer is an `io::Error` wrapping the [`BodyError`], never a short
    /// read. Same single-reader rule as [`Body::chunks`].
    pub fn reader(&self) -> BodyReader {
        BodyReader(StreamReader::new(self.chunks()))
    }

    pub(crate) fn spilled(path: tempfile::TempPath, len: u64) -> Self {
        Body::with_content(Content::Spilled(Arc::new(SpillFile { path, len })))
    }

    pub(crate) fn streaming(rx: channel::BodyReceiver) -> Self {
        Body::with_content(Content::Streaming(Arc::new(Mutex::new(Some(rx)))))
    }

    /// Gives a streaming body the server's spill settings (for
    /// [`Body::buffer`]).
    pub(crate) fn with_spill_policy(mut self, policy: Arc<SpillPolicy>) -> Self {
        self.spill = Some(policy);
        self
    }
}

/// Chunks read from a spilled file.
const CHUNK: usize = 64 * 1024;

fn io_error(e: io::Error) -> BodyError {
    BodyError::Io(Arc::new(e))
}

fn concat(a: &[u8], b: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(a.len() + b.len());
    out.extend_from_slice(a);
    out.extend_from_slice(b);
    out.freeze()
}

/// A [`Body`] as a [`Stream`] of chunks; from [`Body::chunks`].
pub struct Chunks {
    prefix: Option<Bytes>,
    source: Source,
    /// Octets left under [`Body::limit`].
    remaining: Option<u64>,
}

enum Source {
    Memory(Option<Bytes>),
    File {
        /// Keeps the file from being removed while it is read.
        _keep: Arc<SpillFile>,
        stream: ReaderStream<tokio::fs::File>,
    },
    Stream(channel::BodyReceiver),
    Failed(Option<BodyError>),
}

impl std::fmt::Debug for Chunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunks").finish_non_exhaustive()
    }
}

impl Stream for Chunks {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let next = match this.prefix.take() {
            Some(prefix) => Poll::Ready(Some(Ok(prefix))),
            None => this.source.poll_next(cx),
        };
        match (next, &mut this.remaining) {
            (Poll::Ready(Some(Ok(chunk))), Some(remaining)) => {
                if chunk.len() as u64 > *remaining {
                    this.source = Source::Failed(None);
                    return Poll::Ready(Some(Err(BodyError::TooLarge)));
                }
                *remaining -= chunk.len() as u64;
                Poll::Ready(Some(Ok(chunk)))
            }
            (next, _) => next,
        }
    }
}

impl Source {
    fn poll_next(&mut self, cx: &mut TaskContext<'_>) -> Poll<Option<Result<Bytes, BodyError>>> {
        match self {
            Source::Memory(b) => Poll::Ready(b.take().filter(|b| !b.is_empty()).map(Ok)),
            Source::File { stream, .. } => Pin::new(stream)
                .poll_next(cx)
                .map(|r| r.map(|r| r.map_err(io_error))),
            Source::Stream(rx) => rx.poll_chunk(cx),
            Source::Failed(e) => Poll::Ready(e.take().map(Err)),
        }
    }
}

/// A [`Body`] as an [`AsyncRead`]; from [`Body::reader`].
#[derive(Debug)]
pub struct BodyReader(StreamReader<Chunks, Bytes>);

impl AsyncRead for BodyReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncBufRead for BodyReader {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<&[u8]>> {
        Pin::new(&mut self.get_mut().0).poll_fill_buf(cx)
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        Pin::new(&mut self.get_mut().0).consume(amt)
    }
}

#[cfg(test)]
mod tests;
