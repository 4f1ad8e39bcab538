//! The futures and helpers of refusing layers, from the core's
//! [`smtpsrv::layer`] (where a layer written against `smtpsrv` alone finds
//! them); re-exported here so this crate's API stays as it was.

pub use smtpsrv::layer::{BoxResponseFuture, ResponseFuture};
pub(crate) use smtpsrv::layer::{pass_through, refuse, take_ready};
