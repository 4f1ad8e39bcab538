//! The bounded channel between the connection (sender) and a streaming
//! body (receiver): chunks as they arrive, back-pressure through its small
//! capacity, and an end that cannot be confused with a failure.
//!
//! The end is explicit ([`BodySender::finish`]); a sender that goes away
//! without it is a failure, reported as the reason it left
//! ([`BodySender::fail`]) or [`BodyError::Aborted`] when it left none (e.g.
//! when the connection was dropped). Failing needs no room in the channel,
//! so the connection can fail a body synchronously even when it is full.
//!
//! Why not `tokio::sync::mpsc`: one producer, one consumer and two chunks
//! in flight need a queue behind a lock and two wakers, nothing more. A
//! tokio channel costs three allocations per message (its shared state, a
//! cache-aligned block of 32 slots, the failure slot) and its drop; this is
//! one, made once per streamed message, and a message whose handler answers
//! before reading (a sink, an early refusal) never allocates its queue.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context as TaskContext, Poll, Waker};

use bytes::Bytes;

use super::BodyError;

/// What both ends share.
#[derive(Debug, Default)]
struct Shared {
    chunks: VecDeque<Bytes>,
    /// The sender is gone: after [`BodySender::finish`] (`finished`), or
    /// without finishing (a failure, `failure` or aborted).
    sender_gone: bool,
    finished: bool,
    failure: Option<BodyError>,
    receiver_gone: bool,
    /// Who waits for a chunk, and who waits for room.
    receiver: Option<Waker>,
    sender: Option<Waker>,
}

type Link = Arc<Mutex<Shared>>;

/// The lock, also after a panic elsewhere: the state is a few flags and a
/// queue that every step leaves consistent.
fn lock(link: &Link) -> MutexGuard<'_, Shared> {
    link.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Stores `waker` in `slot` unless the one there wakes the same task.
fn register(slot: &mut Option<Waker>, waker: &Waker) {
    if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
        *slot = Some(waker.clone());
    }
}

/// Wakes `waker` after the guard is dropped (never wake under the lock:
/// the woken task may run at once on another thread and want it).
fn wake_after(guard: MutexGuard<'_, Shared>, waker: Option<Waker>) {
    drop(guard);
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// A new channel holding at most `capacity` chunks in flight.
pub(crate) fn channel(capacity: usize) -> (BodySender, super::Body) {
    let link = Link::default();
    let sender = BodySender {
        link: Some(link.clone()),
        capacity: capacity.max(1),
    };
    let receiver = BodyReceiver { link, done: false };
    (sender, super::Body::streaming(receiver))
}

/// The connection's end.
#[derive(Debug)]
pub(crate) struct BodySender {
    /// `None` once the body ended, failed or lost its receiver.
    link: Option<Link>,
    capacity: usize,
}

impl BodySender {
    /// Sends a chunk, waiting for room; false once the receiver is gone
    /// (the handler answered or dropped the body) or the body failed.
    /// Dropping the future before it is done drops the chunk.
    pub(crate) async fn send(&mut self, chunk: Bytes) -> bool {
        let Some(link) = &self.link else {
            return false;
        };
        if chunk.is_empty() {
            return !lock(link).receiver_gone;
        }
        let capacity = self.capacity;
        let mut chunk = Some(chunk);
        let sent = std::future::poll_fn(|cx| {
            let mut shared = lock(link);
            if shared.receiver_gone {
                return Poll::Ready(false);
            }
            if shared.chunks.len() < capacity {
                if let Some(chunk) = chunk.take() {
                    shared.chunks.push_back(chunk);
                }
                let receiver = shared.receiver.take();
                wake_after(shared, receiver);
                return Poll::Ready(true);
            }
            register(&mut shared.sender, cx.waker());
            Poll::Pending
        })
        .await;
        if !sent {
            self.link = None;
        }
        sent
    }

    /// Ends the body successfully: after the last chunk was sent. Needs no
    /// room: the receiver yields the chunks still queued, then the end.
    pub(crate) async fn finish(mut self) {
        self.close(|shared| shared.finished = true);
    }

    /// Fails the body; the receiver yields `error` after the chunks already
    /// queued.
    pub(crate) fn fail(&mut self, error: BodyError) {
        self.close(|shared| {
            shared.failure.get_or_insert(error);
        });
    }

    fn close(&mut self, how: impl FnOnce(&mut Shared)) {
        if let Some(link) = self.link.take() {
            let mut shared = lock(&link);
            how(&mut shared);
            shared.sender_gone = true;
            let receiver = shared.receiver.take();
            wake_after(shared, receiver);
        }
    }
}

impl Drop for BodySender {
    /// Gone without [`finish`](Self::finish): the body is aborted.
    fn drop(&mut self) {
        self.close(|_| {});
    }
}

/// The handler's end, inside a streaming [`Body`](super::Body).
#[derive(Debug)]
pub(crate) struct BodyReceiver {
    link: Link,
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
        let mut shared = lock(&self.link);
        if let Some(chunk) = shared.chunks.pop_front() {
            let sender = shared.sender.take();
            wake_after(shared, sender);
            return Poll::Ready(Some(Ok(chunk)));
        }
        if !shared.sender_gone {
            register(&mut shared.receiver, cx.waker());
            return Poll::Pending;
        }
        self.done = true;
        if shared.finished {
            return Poll::Ready(None);
        }
        let error = shared.failure.take().unwrap_or(BodyError::Aborted);
        Poll::Ready(Some(Err(error)))
    }
}

impl Drop for BodyReceiver {
    /// The handler is done with the body: the sender stops at once, and the
    /// chunks in flight are freed now rather than with the sender.
    fn drop(&mut self) {
        let mut shared = lock(&self.link);
        shared.receiver_gone = true;
        shared.chunks.clear();
        let sender = shared.sender.take();
        wake_after(shared, sender);
    }
}
