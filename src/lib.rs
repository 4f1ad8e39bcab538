//! smtpsrv: write SMTP servers like a boss.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod proto;
pub mod proxy;
pub mod sasl;
pub mod tls;
