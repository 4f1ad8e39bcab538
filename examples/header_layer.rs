//! A tower layer of your own, in a few lines: stamp every message with an
//! `X-Received-By` header before the handler sees it. Layers written this
//! way stack with tower's own (here a timeout) in a `ServiceBuilder`.
//!
//! `cargo run --example header_layer -- --listen 127.0.0.1:2525`; each
//! message is printed to stdout, header first.

use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use smtpsrv::{BoxError, Context, Server};
use tower::{Layer, Service, ServiceBuilder};

/// Adds one header line on top of every message.
#[derive(Clone)]
struct AddHeaderLayer {
    line: Bytes,
}

impl AddHeaderLayer {
    fn new(name: &str, value: &str) -> Self {
        AddHeaderLayer {
            line: format!("{name}: {value}\r\n").into(),
        }
    }
}

impl<S> Layer<S> for AddHeaderLayer {
    type Service = AddHeader<S>;

    fn layer(&self, inner: S) -> AddHeader<S> {
        AddHeader {
            inner,
            line: self.line.clone(),
        }
    }
}

/// The service [`AddHeaderLayer`] wraps around the next one.
#[derive(Clone)]
struct AddHeader<S> {
    inner: S,
    line: Bytes,
}

impl<S: Service<Context>> Service<Context> for AddHeader<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut ctx: Context) -> S::Future {
        // Any body shape: a spilled or streaming body keeps the field apart
        // and yields it first, without loading the message.
        ctx.prepend(&self.line);
        self.inner.call(ctx)
    }
}

/// Prints every message, stamped with an X-Received-By header.
#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:2525")]
    listen: String,
    /// The value of the X-Received-By header.
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    hostname: String,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let handler = ServiceBuilder::new()
        .timeout(Duration::from_secs(30))
        .layer(AddHeaderLayer::new("X-Received-By", &args.hostname))
        .service_fn(|ctx: Context| async move {
            println!("message {}", ctx.id());
            println!("{}", String::from_utf8_lossy(ctx.message()?));
            Ok::<_, BoxError>(())
        });
    let server = Server::builder()
        .hostname(&args.hostname)
        .build()
        .bind(&args.listen)
        .await?;
    for addr in server.local_addrs() {
        println!("listening on {addr}");
    }
    server.serve(handler).await
}
