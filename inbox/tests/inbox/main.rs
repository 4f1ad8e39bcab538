//! One harness for the inbox: the binary is started on loopback ports and
//! driven over real SMTP and HTTP (and, in `browser`, by headless Chromium
//! through chromedriver).

mod api;
mod browser;
mod ingest;
mod support;
mod webdriver;
