//! The SMTP protocol without IO: typed commands, replies, and resumable
//! receivers for command lines, DATA and BDAT. Depends on `bytes` only, so it
//! can be table-tested and fuzzed without a runtime.

pub mod bdat;
pub mod data;
pub mod line;
pub mod reply;

pub use bdat::{BdatOutcome, BdatReceiver};
pub use data::{DataOutcome, DataReceiver, LineEndings};
pub use line::{LineEvent, LineReader};
pub use reply::{EnhancedStatus, Reply};
