//! The SMTP protocol without IO: typed commands, replies, and resumable
//! receivers for command lines, DATA and BDAT. Depends on `bytes` only, so it
//! can be table-tested and fuzzed without a runtime.

pub mod address;
pub mod bdat;
pub mod command;
pub mod data;
mod error;
pub mod line;
pub mod params;
pub mod reply;
#[cfg(test)]
mod test_rng;

pub use address::{Address, AddressError, split_address};
pub use bdat::{BdatOutcome, BdatReceiver};
pub use command::{Command, CommandError};
pub use data::{DataOutcome, DataReceiver, LineEndings};
pub use line::{LineEvent, LineReader};
pub use params::{BodyType, MailParams, Notify, Orcpt, RcptParams, Ret, decode_xtext};
pub use reply::{EnhancedStatus, Reply};
