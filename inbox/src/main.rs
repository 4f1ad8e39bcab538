//! `smtpsrv-inbox`: SMTP on 127.0.0.1:1025, web UI and API on
//! http://127.0.0.1:8025 — Mailpit's defaults and option names.
//!
//! ```text
//! cargo run --release -p smtpsrv-inbox
//! cargo run --release -p smtpsrv-inbox -- --database inbox.db --max 5000
//! cargo run --release -p smtpsrv-inbox -- --smtp-tls-cert cert.pem --smtp-tls-key key.pem --smtp-auth-accept-any
//! ```

use std::{path::PathBuf, sync::Arc, time::Duration};

use clap::Parser;
use smtpsrv::{Authenticate, BoxError, Identity, Server, tls::TlsConfig};

/// A test inbox: SMTP, a web UI and a Mailpit-compatible REST API.
///
/// These options are a stable interface (Mailpit's names where both have the option).
#[derive(Parser, Debug)]
#[command(name = "smtpsrv-inbox", version)]
struct Args {
    /// SMTP bind interface and port.
    #[arg(
        short = 's',
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:1025"
    )]
    smtp: String,
    /// HTTP bind interface and port for the web UI and API.
    #[arg(
        short = 'l',
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:8025"
    )]
    listen: String,
    /// Database file for persistent storage (default: a temporary database, removed on exit).
    #[arg(short = 'd', long, visible_alias = "db-file", value_name = "FILE")]
    database: Option<PathBuf>,
    /// Maximum number of messages to keep (the oldest are pruned); 0 keeps all.
    #[arg(short = 'm', long, value_name = "N", default_value_t = 500)]
    max: usize,
    /// TLS certificate (PEM) for SMTP STARTTLS; requires --smtp-tls-key.
    #[arg(long, value_name = "FILE", requires = "smtp_tls_key")]
    smtp_tls_cert: Option<PathBuf>,
    /// TLS key (PEM) for SMTP STARTTLS; requires --smtp-tls-cert.
    #[arg(long, value_name = "FILE", requires = "smtp_tls_cert")]
    smtp_tls_key: Option<PathBuf>,
    /// Require STARTTLS before MAIL (needs --smtp-tls-cert/--smtp-tls-key).
    #[arg(long, requires = "smtp_tls_cert")]
    smtp_require_starttls: bool,
    /// Accept any SMTP username and password, including none.
    #[arg(long, conflicts_with_all = ["smtp_auth", "smtp_auth_file"])]
    smtp_auth_accept_any: bool,
    /// SMTP credentials as "user:password" pairs separated by spaces; AUTH becomes required.
    #[arg(long, value_name = "CREDENTIALS")]
    smtp_auth: Option<String>,
    /// A file of "user:password" lines (plain text); AUTH becomes required.
    #[arg(long, value_name = "FILE")]
    smtp_auth_file: Option<PathBuf>,
    /// Offer AUTH PLAIN/LOGIN without TLS.
    #[arg(long)]
    smtp_auth_allow_insecure: bool,
    /// Maximum recipients per message.
    #[arg(long, value_name = "N", default_value_t = 100)]
    smtp_max_recipients: usize,
    /// Largest message accepted, in bytes (advertised as SIZE).
    #[arg(long, value_name = "BYTES", default_value_t = 25 * 1024 * 1024)]
    smtp_max_message_size: usize,
    /// Only log errors.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Log every message and connection.
    #[arg(short = 'v', long)]
    verbose: bool,
}

fn credentials(args: &Args) -> Result<Option<Vec<(String, String)>>, BoxError> {
    let mut text = args.smtp_auth.clone().unwrap_or_default();
    if let Some(file) = &args.smtp_auth_file {
        let content = std::fs::read_to_string(file)
            .map_err(|e| format!("--smtp-auth-file {}: {e}", file.display()))?;
        text.push('\n');
        text.push_str(&content);
    }
    if args.smtp_auth.is_none() && args.smtp_auth_file.is_none() {
        return Ok(None);
    }
    let mut users = Vec::new();
    for item in text.split_whitespace() {
        let (user, password) = item
            .split_once(':')
            .ok_or_else(|| format!("credentials must be user:password, got {item:?}"))?;
        users.push((user.to_owned(), password.to_owned()));
    }
    if users.is_empty() {
        return Err("no SMTP credentials given".into());
    }
    Ok(Some(users))
}

fn smtp_builder(args: &Args) -> Result<smtpsrv::Builder, BoxError> {
    let mut builder = Server::builder()
        .hostname("smtpsrv-inbox")
        .max_recipients(args.smtp_max_recipients)
        .max_message_bytes(args.smtp_max_message_size)
        // A test inbox is fed by scripts in loops: no per-IP cap to trip over.
        .auth_failure_delay(Duration::from_millis(250));
    if let (Some(cert), Some(key)) = (&args.smtp_tls_cert, &args.smtp_tls_key) {
        let tls = TlsConfig::from_pem_files(cert, key).map_err(|e| format!("SMTP TLS: {e}"))?;
        builder = builder.tls(tls).require_tls(args.smtp_require_starttls);
    }
    if args.smtp_auth_accept_any {
        builder = builder
            .authenticator(tower::service_fn(|req: Authenticate| async move {
                Ok::<_, BoxError>(Some(Identity::new(req.username())))
            }))
            .allow_insecure_auth(args.smtp_auth_allow_insecure);
    } else if let Some(users) = credentials(args)? {
        let users = Arc::new(users);
        builder = builder
            .authenticator(tower::service_fn(move |req: Authenticate| {
                let users = users.clone();
                async move {
                    let ok = users
                        .iter()
                        .any(|(u, p)| u == req.username() && p == req.password());
                    Ok::<_, BoxError>(ok.then(|| Identity::new(req.username())))
                }
            }))
            .allow_insecure_auth(args.smtp_auth_allow_insecure)
            .require_auth(true);
    }
    Ok(builder)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let level = if args.quiet {
        "error"
    } else if args.verbose {
        "debug"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("smtpsrv-inbox: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let builder = smtp_builder(&args)?;
        let options = smtpsrv_inbox::Options {
            smtp: args.smtp.clone(),
            listen: args.listen.clone(),
            database: args.database.clone(),
            max: args.max,
        };
        smtpsrv_inbox::run(builder, options, shutdown_signal()).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smtpsrv-inbox: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
