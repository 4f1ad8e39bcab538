//! The SMTP protocol without IO: typed commands, replies, and resumable
//! receivers for command lines, DATA and BDAT. Depends on `bytes` only, so it
//! can be table-tested and fuzzed without a runtime.

pub mod address;
pub mod command;
pub mod params;
pub mod reply;

pub use address::{Address, AddressError, split_address};
pub use command::{Command, CommandError};
pub use params::{BodyType, MailParams, Notify, Orcpt, RcptParams, Ret, decode_xtext};
pub use reply::{EnhancedStatus, Reply};
