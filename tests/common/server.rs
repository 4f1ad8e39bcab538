//! A real server on `127.0.0.1:0` for one test.

use std::future::IntoFuture;
use std::io;
use std::net::SocketAddr;

use smtpsrv::tls::tokio_rustls::client::TlsStream;
use smtpsrv::tower::Service;
use smtpsrv::{BoxError, Builder, Context, IntoDelivery, Server};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{Client, Pki, Recorder, Recording, accept_all, step, tls_handshake, within};

/// A running server on `127.0.0.1:0`, under `with_graceful_shutdown`.
/// [`TestServer::shutdown`] stops it gracefully; dropping it aborts it.
pub struct TestServer {
    /// Where it listens (the plain listener: STARTTLS when TLS is
    /// configured).
    pub addr: SocketAddr,
    /// The implicit-TLS listener, when one was asked for.
    pub tls_addr: Option<SocketAddr>,
    /// What the message service received: every message for a server from
    /// [`TestServer::start`] or [`TestServer::start_with`], nothing for one
    /// whose service keeps its own record ([`TestServer::serve`]).
    pub recorder: Recorder,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<io::Result<()>>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

impl TestServer {
    /// Starts a server built from `builder` that records and accepts every
    /// message.
    pub async fn start(builder: Builder) -> TestServer {
        Self::start_with(builder, accept_all()).await
    }

    /// Starts a server built from `builder` whose messages go (after being
    /// recorded in [`TestServer::recorder`]) to `service`.
    pub async fn start_with<S>(builder: Builder, service: S) -> TestServer
    where
        S: Service<Context> + Clone + Send + 'static,
        S::Response: IntoDelivery,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let recorder = Recorder::default();
        let service = Recording {
            recorder: recorder.clone(),
            inner: service,
        };
        Self::launch(builder, service, recorder, false).await
    }

    /// Serves `service` as it is, on a plain listener. The harness keeps no
    /// copy of the messages, so a spilled body's file goes and a streaming
    /// body ends when the service drops them.
    pub async fn serve<S>(builder: Builder, service: S) -> TestServer
    where
        S: Service<Context> + Clone + Send + 'static,
        S::Response: IntoDelivery,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        Self::launch(builder, service, Recorder::default(), false).await
    }

    /// Serves `service` as it is, on a plain listener and an implicit-TLS
    /// listener ([`TestServer::tls_addr`]).
    pub async fn start_with_implicit_tls<S>(builder: Builder, service: S) -> TestServer
    where
        S: Service<Context> + Clone + Send + 'static,
        S::Response: IntoDelivery,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        Self::launch(builder, service, Recorder::default(), true).await
    }

    async fn launch<S>(
        builder: Builder,
        service: S,
        recorder: Recorder,
        implicit_tls: bool,
    ) -> TestServer
    where
        S: Service<Context> + Clone + Send + 'static,
        S::Response: IntoDelivery,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let mut server: Server = within("bind", builder.build().bind("127.0.0.1:0"))
            .await
            .expect("bind 127.0.0.1:0");
        let addr = server.local_addrs()[0];
        let mut tls_addr = None;
        if implicit_tls {
            server = within("bind", server.bind_implicit_tls("127.0.0.1:0"))
                .await
                .expect("bind the implicit-TLS listener on 127.0.0.1:0");
            tls_addr = Some(server.local_addrs()[1]);
        }
        let (tx, rx) = oneshot::channel::<()>();
        let serve = server.serve(service).with_graceful_shutdown(async move {
            // A dropped sender counts as a signal too: no server outlives its test.
            let _ = rx.await;
        });
        let handle = tokio::spawn(serve.into_future());
        TestServer {
            addr,
            tls_addr,
            recorder,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// A scripted client on the plain listener, greeting (220) already read.
    pub async fn connect(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// A scripted client on the implicit-TLS listener, greeting (220) read.
    pub async fn connect_implicit(&self, pki: &Pki) -> Client<TlsStream<TcpStream>> {
        let tcp = step(TcpStream::connect(
            self.tls_addr.expect("no implicit TLS listener"),
        ))
        .await
        .unwrap();
        let mut client = Client::new(tls_handshake(tcp, pki, "localhost").await);
        client.reply().await.expect(220, "");
        client
    }

    /// Fires the graceful-shutdown signal without waiting for the server.
    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits (bounded) for the server future to resolve, returning its result.
    pub async fn join(&mut self) -> io::Result<()> {
        let handle = self.handle.take().expect("server already joined");
        within("server future to resolve", handle)
            .await
            .expect("server task panicked")
    }

    /// Whether the server future has resolved.
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Triggers graceful shutdown and waits for the server to resolve.
    pub async fn shutdown(mut self) {
        self.trigger_shutdown();
        self.join().await.expect("server ended with an error");
    }
}
