//! The SMTP side: the inbox as a `tower::Service<Context>`.

use std::{
    future::Future,
    pin::Pin,
    task::{Context as TaskContext, Poll},
};

use smtpsrv::{BoxError, Context};

use crate::{mime, store::Store};

/// Stores every message it is given; answers once the message is committed
/// (so `250` means stored and searchable) or fails (the server answers a
/// temporary `451` and the client retries).
///
/// ```no_run
/// # async fn run() -> Result<(), smtpsrv::BoxError> {
/// let store = smtpsrv_inbox::store::Store::open(None, 500)?;
/// smtpsrv::Server::builder()
///     .build()
///     .bind("127.0.0.1:1025")
///     .await?
///     .serve(smtpsrv_inbox::service::Inbox::new(store))
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Inbox {
    store: Store,
}

impl Inbox {
    /// An inbox storing into `store`.
    pub fn new(store: Store) -> Self {
        Inbox { store }
    }
}

impl tower::Service<Context> for Inbox {
    type Response = ();
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, ctx: Context) -> Self::Future {
        let store = self.store.clone();
        Box::pin(async move {
            let recipients: Vec<String> = ctx
                .recipients()
                .iter()
                .map(|r| r.address().to_string())
                .collect();
            let return_path = ctx
                .reverse_path()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let created = ctx
                .received_at()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or_else(|_| crate::time::now_ms());
            let raw = ctx.body().bytes().await?;
            let message = mime::extract(raw, return_path, &recipients, created);
            store.insert(message).await?;
            Ok(())
        })
    }
}
