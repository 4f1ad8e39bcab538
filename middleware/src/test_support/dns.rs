//! A tiny authoritative DNS server on 127.0.0.1 for tests: answers from a
//! fixed zone, NXDOMAIN for unknown names, SERVFAIL for names told to fail.
//! Tests never reach the network.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use mail_auth::hickory_resolver::proto::op::{Message, ResponseCode};
use mail_auth::hickory_resolver::proto::rr::rdata::{A, AAAA, MX, SOA, TXT};
use mail_auth::hickory_resolver::proto::rr::{Name, RData, Record};
use tokio::net::UdpSocket;

/// Records by lower-case name without the final dot.
#[derive(Default, Clone)]
pub struct Zone {
    records: HashMap<String, Vec<RData>>,
    failing: HashSet<String>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn name(s: &str) -> Name {
    Name::from_ascii(format!("{}.", s.trim_end_matches('.'))).unwrap()
}

impl Zone {
    pub fn new() -> Self {
        Self::default()
    }

    fn add(mut self, owner: &str, data: RData) -> Self {
        self.records.entry(key(owner)).or_default().push(data);
        self
    }

    /// A TXT record; long values are split into 255-octet strings.
    pub fn txt(self, owner: &str, value: &str) -> Self {
        let parts = value
            .as_bytes()
            .chunks(255)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        self.add(owner, RData::TXT(TXT::new(parts)))
    }

    pub fn mx(self, owner: &str, preference: u16, exchange: &str) -> Self {
        let exchange = if exchange == "." {
            Name::root()
        } else {
            name(exchange)
        };
        self.add(owner, RData::MX(MX::new(preference, exchange)))
    }

    pub fn a(self, owner: &str, ip: Ipv4Addr) -> Self {
        self.add(owner, RData::A(A(ip)))
    }

    pub fn aaaa(self, owner: &str, ip: Ipv6Addr) -> Self {
        self.add(owner, RData::AAAA(AAAA(ip)))
    }

    /// Every query for this name gets SERVFAIL.
    pub fn servfail(mut self, owner: &str) -> Self {
        self.failing.insert(key(owner));
        self
    }

    fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        let request = Message::from_vec(query).ok()?;
        let question = request.queries.first()?.clone();
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.authoritative = true;
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.add_query(question.clone());
        let owner = key(&question.name().to_ascii());
        if self.failing.contains(&owner) {
            response.metadata.response_code = ResponseCode::ServFail;
            return response.to_vec().ok();
        }
        match self.records.get(&owner) {
            None => response.metadata.response_code = ResponseCode::NXDomain,
            Some(data) => {
                for d in data
                    .iter()
                    .filter(|d| d.record_type() == question.query_type())
                {
                    response.add_answer(Record::from_rdata(question.name().clone(), 60, d.clone()));
                }
            }
        }
        if response.answers.is_empty() {
            // Negative answers carry the zone's SOA (RFC 2308) for their TTL.
            let soa = SOA::new(name("ns.test"), name("hostmaster.test"), 1, 60, 60, 60, 60);
            response.add_authority(Record::from_rdata(name("test"), 60, RData::SOA(soa)));
        }
        response.to_vec().ok()
    }
}

/// Serves `zone` on a UDP port of 127.0.0.1 until the runtime ends.
pub async fn serve(zone: Zone) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let zone = Arc::new(zone);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            if let Some(reply) = zone.answer(&buf[..n]) {
                let _ = socket.send_to(&reply, peer).await;
            }
        }
    });
    addr
}
