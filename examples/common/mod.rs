//! Parts the storing examples (mailsink, submission) share: the Maildir,
//! the trace header fields and the `--user` accounts. Not an example
//! itself; each one includes it with `#[path = ".../common/mod.rs"]`.

pub mod accounts;
pub mod maildir;
pub mod metrics;
pub mod trace;
