//! The connection's side of streaming mode (see [`crate::body`]): the
//! message service is called when the body starts, runs in its own task
//! while the connection feeds it chunks through a bounded channel, and is
//! answered for only once the body has ended.
//!
//! Its own task, rather than a future polled next to the socket, because the
//! handler must make progress while the connection waits for room in the
//! channel, and the connection's other state stays borrowable. The task is
//! never left running unbounded: a call given up (failed transfer, closed
//! connection) gets the handler deadline to notice its body's error and
//! return, then it is aborted.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use tokio::task::JoinHandle;
use tower::{Service, ServiceExt};
use tracing::Instrument;

use crate::body::{BodyError, BodySender};
use crate::context::Context;
use crate::proto::Reply;
use crate::reply_conv::{BoxError, Delivery, IntoDelivery};

type Answer = Result<Delivery, BoxError>;

enum Fed {
    Sent(bool),
    Answered(Answer),
    Stalled,
}

/// One message handler call in progress.
pub(crate) struct StreamingCall {
    sender: Option<BodySender>,
    task: Option<JoinHandle<Answer>>,
    /// The answer, once known before the end (early answer, failure to
    /// start, the handler too slow to take chunks).
    answer: Option<Answer>,
    limit: Duration,
    /// Octets handed to the handler.
    pub(crate) fed: u64,
}

impl StreamingCall {
    /// Waits for the service to be ready and calls it with `ctx` (whose
    /// body is the receiving end of `sender`), within `limit`.
    pub(crate) async fn start<S>(
        service: &mut S,
        ctx: Context,
        sender: BodySender,
        limit: Duration,
        span: tracing::Span,
    ) -> StreamingCall
    where
        S: Service<Context>,
        S::Response: IntoDelivery,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let mut call = StreamingCall {
            sender: Some(sender),
            task: None,
            answer: None,
            limit,
            fed: 0,
        };
        let ready = AssertUnwindSafe(service.ready()).catch_unwind();
        let started = match tokio::time::timeout(limit, ready).await {
            Ok(Ok(Ok(_))) => AssertUnwindSafe(|| service.call(ctx))(),
            Ok(Ok(Err(e))) => return call.answered(Err(e.into())),
            Ok(Err(_panic)) => return call.answered(Err(panicked())),
            Err(_) => return call.answered(Err(elapsed())),
        };
        let mut future = Box::pin(
            async move {
                match AssertUnwindSafe(started).catch_unwind().await {
                    Ok(Ok(response)) => Ok(response.into_delivery()),
                    Ok(Err(e)) => Err(e.into()),
                    Err(_panic) => Err(panicked()),
                }
            }
            .instrument(span),
        );
        // Polled once here: a handler that answers at once (one that
        // discards, or refuses before reading) needs no task, no wake-up
        // and no join (per message, the cost of a spawn). One that is not
        // done goes to its own task, which polls it again at once (with
        // its own waker).
        let mut cx = TaskContext::from_waker(Waker::noop());
        if let Poll::Ready(answer) = future.as_mut().poll(&mut cx) {
            return call.answered(answer);
        }
        call.task = Some(tokio::spawn(future));
        call
    }

    fn answered(mut self, answer: Answer) -> Self {
        self.sender = None;
        self.answer = Some(answer);
        self
    }

    /// Hands a chunk to the handler, waiting at most `wait` for room. A
    /// handler that answered or stopped reading gets no more; the chunk is
    /// dropped (the rest of the message is drained by the connection).
    pub(crate) async fn feed(&mut self, chunk: Bytes, wait: Duration) {
        if chunk.is_empty() {
            return;
        }
        let Some(sender) = &mut self.sender else {
            return;
        };
        let len = chunk.len() as u64;
        let send = sender.send(chunk);
        let outcome = match &mut self.task {
            Some(task) => tokio::select! {
                sent = send => Fed::Sent(sent),
                done = task => Fed::Answered(joined(done)),
                _ = tokio::time::sleep(wait) => Fed::Stalled,
            },
            None => Fed::Sent(send.await),
        };
        match outcome {
            Fed::Sent(true) => self.fed += len,
            Fed::Sent(false) => self.sender = None,
            Fed::Answered(answer) => {
                self.task = None;
                self.sender = None;
                self.answer = Some(answer);
            }
            Fed::Stalled => {
                tracing::warn!("message handler takes no data; giving up on it");
                self.abandon(Err(elapsed()));
            }
        }
    }

    fn abandon(&mut self, answer: Answer) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.sender = None;
        self.answer = Some(answer);
    }

    /// The body failed: the handler reads `error` after what it has; its
    /// answer will be ignored (dropping the call bounds its task).
    pub(crate) fn fail(mut self, error: BodyError) {
        if let Some(sender) = &mut self.sender {
            sender.fail(error);
        }
    }

    /// The body ended within every limit: feeds `last`, marks the end and
    /// waits (at most the handler deadline) for the answer.
    pub(crate) async fn finish(mut self, last: Bytes, wait: Duration) -> Answer {
        self.feed(last, wait).await;
        if let Some(sender) = self.sender.take() {
            let answered = match &mut self.task {
                Some(task) => tokio::select! {
                    () = sender.finish() => None,
                    done = task => Some(joined(done)),
                },
                None => {
                    sender.finish().await;
                    None
                }
            };
            if let Some(answer) = answered {
                self.task = None;
                self.answer = Some(answer);
            }
        }
        if let Some(answer) = self.answer.take() {
            return answer;
        }
        let Some(task) = &mut self.task else {
            return Err(elapsed());
        };
        match tokio::time::timeout(self.limit, task).await {
            Ok(done) => {
                self.task = None;
                joined(done)
            }
            Err(_) => {
                self.abandon(Err(elapsed()));
                Err(elapsed())
            }
        }
    }
}

impl Drop for StreamingCall {
    fn drop(&mut self) {
        // A call given up on: the handler reads an error from its body; give
        // it the deadline to clean up and return, then stop it.
        let Some(mut task) = self.task.take() else {
            return;
        };
        let limit = self.limit;
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if tokio::time::timeout(limit, &mut task).await.is_err() {
                        task.abort();
                    }
                });
            }
            Err(_) => task.abort(),
        }
    }
}

fn joined(done: Result<Answer, tokio::task::JoinError>) -> Answer {
    done.unwrap_or_else(|e| {
        if e.is_panic() {
            Err(panicked())
        } else {
            Err(elapsed())
        }
    })
}

fn panicked() -> BoxError {
    tracing::error!("service panicked; answering 451");
    Box::new(Reply::try_again_later().with_text("Internal error, try again later"))
}

/// The handler deadline passed (answered like a buffered call's).
fn elapsed() -> BoxError {
    Box::new(crate::reply_conv::HandlerTimeout)
}
