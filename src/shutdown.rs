//! The server's graceful-shutdown signal, as each connection waits for it.
//!
//! A connection waits for input several times per message, and every wait
//! must also end on shutdown. `tokio_util`'s `CancellationToken` makes that
//! cost a mutex round per check and a waiter inserted into and removed from
//! a shared list per wait (about 5% of a W1 message's user-space time). Here
//! a wait costs one atomic load: each connection registers its task's waker
//! with the shared [`Notify`] once, keeps that registration across waits,
//! and registers again only when polled with another waker.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;

/// The sending side: signalled once, seen by every [`ShutdownWatch`].
#[derive(Clone, Default)]
pub(crate) struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    signalled: AtomicBool,
    notify: Arc<Notify>,
}

impl Shutdown {
    /// A signal not yet given.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Signals shutdown and wakes every waiting connection.
    pub(crate) fn signal(&self) {
        // Set before waking, so that a woken watch sees it.
        self.inner.signalled.store(true, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
    }

    fn is_signalled(&self) -> bool {
        self.inner.signalled.load(Ordering::SeqCst)
    }

    /// A task's view of the signal (a connection's, an accept loop's).
    pub(crate) fn watch(&self) -> ShutdownWatch {
        ShutdownWatch {
            shutdown: self.clone(),
            registration: None,
        }
    }
}

/// One task's wait for the shutdown signal, registered once and kept.
pub(crate) struct ShutdownWatch {
    shutdown: Shutdown,
    /// The waiter in the `Notify`'s list and the waker it will wake; boxed
    /// because a waiter must not move, and made at the first wait, so a
    /// connection that never waits never allocates it.
    registration: Option<(Pin<Box<OwnedNotified>>, Waker)>,
}

impl ShutdownWatch {
    /// Ready once shutdown is signalled; otherwise the task in `cx` is
    /// woken when it is.
    pub(crate) fn poll_signalled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.shutdown.is_signalled() {
            return Poll::Ready(());
        }
        if let Some((_, waker)) = &self.registration
            && waker.will_wake(cx.waker())
        {
            // Registered for this task already: `signal` wakes it.
            return Poll::Pending;
        }
        let (notified, waker) = self.registration.get_or_insert_with(|| {
            let notified = self.shutdown.inner.notify.clone().notified_owned();
            (Box::pin(notified), cx.waker().clone())
        });
        // Polling the waiter is what puts it in the list (or updates its
        // waker); a signal given meanwhile is seen by the check after it.
        if notified.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        waker.clone_from(cx.waker());
        if self.shutdown.is_signalled() {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_waiting_watch_wakes_on_signal() {
        let shutdown = Shutdown::new();
        let mut watch = shutdown.watch();
        let waiting = tokio::spawn(async move {
            // Several waits, as a connection makes: one registration.
            for _ in 0..3 {
                let wait = std::future::poll_fn(|cx| watch.poll_signalled(cx));
                if tokio::time::timeout(Duration::from_millis(10), wait)
                    .await
                    .is_ok()
                {
                    return true;
                }
            }
            std::future::poll_fn(|cx| watch.poll_signalled(cx)).await;
            true
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        shutdown.signal();
        let woke = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert!(matches!(woke, Ok(Ok(true))), "the watch did not wake");
    }

    #[tokio::test]
    async fn a_watch_made_after_the_signal_is_ready() {
        let shutdown = Shutdown::new();
        shutdown.signal();
        let mut watch = shutdown.watch();
        let wait = std::future::poll_fn(|cx| watch.poll_signalled(cx));
        let done = tokio::time::timeout(Duration::from_secs(1), wait).await;
        assert!(done.is_ok());
    }

    #[test]
    fn an_unsignalled_watch_is_pending() {
        let shutdown = Shutdown::new();
        let mut watch = shutdown.watch();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(watch.poll_signalled(&mut cx).is_pending());
        assert!(watch.poll_signalled(&mut cx).is_pending());
        shutdown.signal();
        assert!(watch.poll_signalled(&mut cx).is_ready());
    }
}
