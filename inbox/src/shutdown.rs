//! A cloneable "shutdown has begun" signal shared by the SMTP server, the
//! HTTP server and the event streams (which must end for HTTP to drain).

use std::sync::Arc;

use tokio::sync::watch;

/// Completes [`CancelSignal::cancelled`] once [`CancelSignal::cancel`] was called.
#[derive(Clone, Debug)]
pub struct CancelSignal {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for CancelSignal {
    fn default() -> Self {
        CancelSignal {
            tx: Arc::new(watch::channel(false).0),
        }
    }
}

impl CancelSignal {
    /// Signals every waiter, now and later.
    pub fn cancel(&self) {
        self.tx.send_replace(true);
    }

    /// Resolves once cancelled.
    pub async fn cancelled(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }
}
