//! The bounded channel between the connection (sender) and a streaming
//! body (receiver): chunks as they arrive, back-pressure through its small
//! capacity, and an end that cannot be confused with a failure.
//!
//! The end is an explicit [`Piece::End`]; a channel that closes without it
//! is a failure, reported as the reason the sender left in the shared slot
//! (or [`BodyError::Aborted`] when it left none, e.g. when the connection
//! was dropped). Recording the reason needs no channel capacity, so the
//! connection can fail a body synchronously even when the channel is full.

use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::BodyError;

#[derive(Debug)]
enum Piece {
    Chunk(Bytes),
    End,
}

type Failure = Arc<Mutex<Option<BodyError>>>;

/// A new channel holding at most `capacity` chunks in flight.
pub(crate) fn channel(capacity: usize) -> (BodySender, super::Body) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let failure = Failure::default();
    let sender = BodySender {
        tx: Some(tx),
        failure: failure.clone(),
    };
    let receiver = BodyReceiver {
        rx,
        failure,
        done: false,
    };
    (sender, super::Body::streaming(receiver))
}

/// The connection's end.
#[derive(Debug)]
pub(crate) struct BodySender {
    tx: Option<mpsc::Sender<Piece>>,
    failure: Failure,
}

impl BodySender {
    /// Sends a chunk, waiting for room; false once the receiver is gone
    /// (the handler answered or dropped the body) or the body failed.
    pub(crate) async fn send(&mut self, chunk: Bytes) -> bool {
        let Some(tx) = &self.tx else {
            return false;
        };
        if chunk.is_empty() {
            return !tx.is_closed();
        }
        if tx.send(Piece::Chunk(chunk)).await.is_err() {
            self.tx = None;
            return false;
        }
        true
    }

    /// Ends the body successfully: after the last chunk was sent.
    pub(crate) async fn finish(mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Piece::End).await;
        }
    }

    /// Fails the body; the receiver yields `error` after the chunks already
    /// queued.
    pub(crate) fn fail(&mut self, error: BodyError) {
        if let Ok(mut slot) = self.failure.lock() {
            slot.get_or_insert(error);
        }
        self.tx = None;
    }
}

/// The handler's end, inside a streaming [`Body`](super::Body).
#[derive(Debug)]
pub(crate) struct BodyReceiver {
    rx: mpsc::Receiver<Piece>,
    failure: Failure,
    done: bool,
}

impl BodyReceiver {
    pub(crate) fn poll_chunk(
        &mut self,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Bytes, BodyError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Piece::Chunk(chunk))) => Poll::Ready(Some(Ok(chunk))),
            Poll::Ready(Some(Piece::End)) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                self.done = true;
                let error = self
                    .failure
                    .lock()
                    .ok()
                    .and_then(|mut slot| slot.take())
                    .unwrap_or(BodyError::Aborted);
                Poll::Ready(Some(Err(error)))
            }
        }
    }
}
