//! maildir_consumer: reads the JetStream stream that `mailsink --nats`
//! fills and delivers every message into a Maildir, exactly once per
//! message id, with explicit acks (a message is acked only once its file
//! is on disk; a redelivered one finds its file and is acked again).
//!
//! ```text
//! cargo run --release -p smtpsrv-cluster --example maildir_consumer -- \
//!     --nats nats://127.0.0.1:4222 --stream SMTP --maildir ./maildir
//! ```
//!
//! Prints `consuming STREAM` on stdout once subscribed; logs go to stderr.
//! Ctrl-C or SIGTERM stops it (what was not acked comes again next time).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use smtpsrv::BoxError;
use smtpsrv_cluster::async_nats;
use smtpsrv_cluster::consumer::{self, ConsumerConfig, IdMaildir};
use tracing_subscriber::EnvFilter;

/// Delivers a JetStream stream of SMTP messages into a Maildir.
#[derive(Parser, Debug)]
#[command(name = "maildir_consumer")]
struct Args {
    /// The NATS server.
    #[arg(long, value_name = "URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// The stream mailsink --nats-stream publishes into.
    #[arg(long, value_name = "NAME", default_value = "SMTP")]
    stream: String,
    /// The durable consumer (its acks are kept by the stream: a restart
    /// resumes where it stopped).
    #[arg(long, value_name = "NAME", default_value = "maildir")]
    durable: String,
    /// Seconds a message may stay unacked before it is delivered again.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    ack_wait: u64,
    /// The Maildir (created if missing).
    #[arg(long, value_name = "DIR", default_value = "./maildir")]
    maildir: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("maildir_consumer: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), BoxError> {
    let maildir = Arc::new(IdMaildir::create(&args.maildir)?);
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(|n| Duration::from_millis((100 * n as u64).min(1000)))
        .connect(args.nats.as_str())
        .await?;
    let js = async_nats::jetstream::new(client);
    let config = ConsumerConfig {
        stream: args.stream.clone(),
        durable: args.durable,
        ack_wait: Duration::from_secs(args.ack_wait),
    };
    println!("consuming {}", args.stream);
    consumer::run(&js, &config, maildir, shutdown()).await
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
    tracing::info!("stopping");
}
