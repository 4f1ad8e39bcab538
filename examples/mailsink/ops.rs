//! What running mailsink in production adds: how the Maildir stores line
//! ends, Prometheus metrics (`--metrics`), and systemd (`--systemd`: socket
//! activation and readiness). Kept apart from `main.rs` so that its
//! options and their wiring stay in one place.

use smtpsrv::{BoxError, Builder, Server};
use smtpsrv_middleware::metrics::MetricsLayer;

use crate::common::maildir::LineEnds;
use crate::common::metrics::MetricsOption;

/// The operations options, flattened into mailsink's command line.
#[derive(clap::Args, Debug)]
pub struct OpsArgs {
    /// Store messages with the wire's CRLF line ends instead of the LF
    /// that Maildir readers expect (BODY=BINARYMIME messages are always
    /// stored exactly as received).
    #[arg(long)]
    pub keep_wire_bytes: bool,

    /// Serve Prometheus metrics on http://ADDR/metrics (and a health
    /// check on /healthz); `metrics on ADDR` goes to stdout after the
    /// `listening on` lines.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,

    /// Run under systemd: serve the sockets it passes (LISTEN_FDS; one
    /// named `smtps` or `submissions` in LISTEN_FDNAMES gets implicit
    /// TLS), and report READY=1 and STOPPING=1 to NOTIFY_SOCKET.
    /// --listen adds more addresses; without it only systemd's are served.
    #[arg(long)]
    pub systemd: bool,
}

impl OpsArgs {
    /// How the Maildir stores line ends.
    pub fn line_ends(&self) -> LineEnds {
        if self.keep_wire_bytes {
            LineEnds::Wire
        } else {
            LineEnds::Lf
        }
    }

    /// Installs the metrics recorder when asked for.
    pub fn start(&self) -> Result<Ops, BoxError> {
        Ok(Ops {
            metrics: MetricsOption::start(self.metrics.as_deref())?,
            systemd: self.systemd,
        })
    }
}

/// The operations side of one run.
pub struct Ops {
    metrics: MetricsOption,
    systemd: bool,
}

impl Ops {
    /// The server settings metrics need (the connection observer).
    pub fn configure(&self, builder: Builder) -> Builder {
        self.metrics.configure(builder)
    }

    /// The layer for the message service (off without `--metrics`).
    pub fn layer(&self) -> MetricsLayer {
        self.metrics.layer()
    }

    /// With `--systemd`, adds the sockets systemd passed.
    pub fn inherit_listeners(&self, mut server: Server) -> Result<Server, BoxError> {
        if !self.systemd {
            return Ok(server);
        }
        let sockets = systemd::listen_fds()?;
        if sockets.is_empty() {
            return Err("--systemd: no socket passed (LISTEN_FDS)".into());
        }
        for (name, tcp) in sockets {
            let addr = tcp.local_addr()?;
            if matches!(name.as_str(), "smtps" | "submissions") {
                println!("listening on {addr} (implicit TLS, from systemd)");
                server = server.std_implicit_tls_listener(tcp)?;
            } else {
                println!("listening on {addr} (from systemd)");
                server = server.std_listener(tcp)?;
            }
        }
        Ok(server)
    }

    /// Once listening: starts the metrics endpoint and tells systemd the
    /// service is ready.
    pub async fn ready(&self, server: &Server) -> Result<(), BoxError> {
        self.metrics.serve(server).await?;
        if self.systemd {
            systemd::notify("READY=1\nSTATUS=accepting mail")?;
        }
        Ok(())
    }

    /// `signal`, telling systemd `STOPPING=1` when it completes.
    pub fn stopping(
        &self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let systemd = self.systemd;
        async move {
            signal.await;
            if systemd && let Err(e) = systemd::notify("STOPPING=1") {
                tracing::warn!(error = %e, "cannot notify systemd");
            }
        }
    }
}

/// The two halves of systemd's protocol a daemon speaks, by hand: they are
/// a few lines each (sd_listen_fds(3), sd_notify(3)).
mod systemd {
    use std::io;
    use std::net::TcpListener;
    use std::os::fd::{FromRawFd, RawFd};
    use std::os::unix::net::UnixDatagram;

    /// The first passed descriptor (`SD_LISTEN_FDS_START`).
    const FIRST_FD: RawFd = 3;

    /// The listening sockets passed by socket activation, with their
    /// names (`LISTEN_FDNAMES`, empty when unnamed). Empty when the
    /// variables are missing or meant for another process (`LISTEN_PID`).
    /// The variables stay set (removing them is unsafe once threads run);
    /// mailsink starts no child process that could misread them.
    pub fn listen_fds() -> io::Result<Vec<(String, TcpListener)>> {
        let for_us = std::env::var("LISTEN_PID")
            .ok()
            .and_then(|pid| pid.parse::<u32>().ok())
            == Some(std::process::id());
        let count = std::env::var("LISTEN_FDS")
            .ok()
            .and_then(|n| n.parse::<RawFd>().ok())
            .unwrap_or(0);
        if !for_us || count <= 0 {
            return Ok(Vec::new());
        }
        let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
        let mut names = names.split(':');
        (FIRST_FD..FIRST_FD + count)
            .map(|fd| {
                // SAFETY: systemd hands descriptors 3.. over to this process
                // (LISTEN_PID checked above); nothing else in mailsink uses
                // them, so the listener is their only owner.
                let tcp = unsafe { TcpListener::from_raw_fd(fd) };
                // A descriptor that is not a bound socket fails here.
                tcp.local_addr()?;
                Ok((names.next().unwrap_or("").to_owned(), tcp))
            })
            .collect()
    }

    /// Sends `state` to `NOTIFY_SOCKET` (a path, or `@name` for the
    /// abstract namespace); nothing when it is not set.
    pub fn notify(state: &str) -> io::Result<()> {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(());
        };
        let socket = UnixDatagram::unbound()?;
        let path = path.to_string_lossy();
        match path.strip_prefix('@') {
            // Linux's abstract namespace (where systemd itself listens).
            #[cfg(target_os = "linux")]
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr)?;
            }
            _ => {
                socket.send_to(state.as_bytes(), path.as_ref())?;
            }
        }
        Ok(())
    }
}
