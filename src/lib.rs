//! smtpsrv: write SMTP servers like a boss.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod email;
pub mod proto;
