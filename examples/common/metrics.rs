//! `--metrics ADDR` for the examples: Prometheus metrics of the
//! connections (an observer), of the message service (a layer) and of the
//! memory budget, served on `http://ADDR/metrics`, with `/healthz`.

use std::sync::Arc;

use smtpsrv::{BoxError, Builder, Server};
use smtpsrv_middleware::metrics::{Metrics, MetricsLayer};

/// Metrics when `--metrics` was given; inert otherwise.
pub struct MetricsOption {
    metrics: Option<(Arc<Metrics>, String)>,
}

impl MetricsOption {
    /// Installs the recorder when `addr` is given.
    pub fn start(addr: Option<&str>) -> Result<Self, BoxError> {
        let metrics = match addr {
            Some(addr) => Some((Metrics::install()?, addr.to_owned())),
            None => None,
        };
        Ok(MetricsOption { metrics })
    }

    /// Adds the connection observer.
    pub fn configure(&self, builder: Builder) -> Builder {
        match &self.metrics {
            Some((metrics, _)) => builder.observer(metrics.observer()),
            None => builder,
        }
    }

    /// The layer for the message service (and hooks); off without metrics.
    pub fn layer(&self) -> MetricsLayer {
        MetricsLayer::enabled(self.metrics.is_some())
    }

    /// Once listening: serves the endpoint and prints `metrics on ADDR`.
    pub async fn serve(&self, server: &Server) -> Result<(), BoxError> {
        let Some((metrics, addr)) = &self.metrics else {
            return Ok(());
        };
        metrics.watch_memory(server.memory_gauge());
        let endpoint = tokio::net::TcpListener::bind(addr.as_str())
            .await
            .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
        println!("metrics on {}", endpoint.local_addr()?);
        tokio::spawn(Arc::clone(metrics).serve(endpoint));
        Ok(())
    }
}
