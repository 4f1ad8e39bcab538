//! `mailin-sink ADDR [THREADS]`: accepts every message and drops it, on
//! mailin-embedded's blocking thread pool (64 threads unless told).
use mailin_embedded::{Handler, Server, SslConfig};

#[derive(Clone)]
struct Discard;

impl Handler for Discard {
    fn data(&mut self, _buf: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
}

fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:2552".into());
    let threads = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let mut server = Server::new(Discard);
    server
        .with_name("mailin-sink")
        .with_num_threads(threads)
        .with_ssl(SslConfig::None)
        .expect("no TLS")
        .with_addr(addr)
        .expect("address");
    server.serve().expect("serve");
}
