//! The smallest useful server: prints every message it receives.
//!
//! `cargo run --example hello`, then e.g. `swaks --server 127.0.0.1:2525 --to you@example.com`.

use smtpsrv::{BoxError, Context, Server};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let handler = tower::service_fn(|ctx: Context| async move {
        println!(
            "{} from {:?} to {:?}: {} bytes",
            ctx.id(),
            ctx.reverse_path().map(|a| a.as_str()),
            ctx.recipients()
                .iter()
                .map(|r| r.address().as_str())
                .collect::<Vec<_>>(),
            ctx.size()
        );
        println!("{}", String::from_utf8_lossy(ctx.message()?));
        Ok::<_, BoxError>(())
    });
    let server = Server::builder().build().bind("127.0.0.1:2525").await?;
    println!("listening on {:?}", server.local_addrs());
    server.serve(handler).await
}
