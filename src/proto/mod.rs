//! The SMTP protocol without IO: typed commands, replies, and resumable
//! receivers for command lines, DATA and BDAT. Depends on `bytes` only, so it
//! can be table-tested and fuzzed without a runtime.

pub mod reply;

pub use reply::{EnhancedStatus, Reply};
