//! What running mailsink in production adds: how the Maildir stores line
//! ends, Prometheus metrics, and systemd (socket activation, readiness).
//! Kept apart from `main.rs` so that its options stay in one place.

use crate::common::maildir::LineEnds;

/// The operations options, flattened into mailsink's command line.
#[derive(clap::Args, Debug)]
pub struct OpsArgs {
    /// Store messages with the wire's CRLF line ends instead of the LF
    /// that Maildir readers expect (BODY=BINARYMIME messages are always
    /// stored exactly as received).
    #[arg(long)]
    pub keep_wire_bytes: bool,
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
}
