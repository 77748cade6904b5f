//! A DNS server of the test's own: answers A, AAAA and SRV questions from
//! records the test sets and changes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

/// Records by name and type.
type Zone = HashMap<(String, RecordType), Vec<RData>>;

/// A UDP DNS server on 127.0.0.1 answering from records the test sets
/// ([`set_ips`](Self::set_ips), [`set_srv`](Self::set_srv)); a name it
/// has nothing for is `NXDOMAIN`. TTL 1 s. It counts the questions.
#[derive(Clone, Debug)]
pub struct DnsServer {
    /// Where it listens (UDP).
    pub addr: SocketAddr,
    records: Arc<Mutex<Zone>>,
    asked: Arc<Mutex<usize>>,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl DnsServer {
    /// Start one on a free port.
    pub async fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server = Self {
            addr: socket.local_addr().unwrap(),
            records: Arc::default(),
            asked: Arc::default(),
            failing: Arc::default(),
        };
        let this = server.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                if let Some(answer) = this.answer(&buf[..n]) {
                    let _ = socket.send_to(&answer, from).await;
                }
            }
        });
        server
    }

    /// `name`'s A and AAAA records become `ips` (none: the name is gone).
    pub fn set_ips(&self, name: &str, ips: &[IpAddr]) {
        let mut records = self.records.lock().unwrap();
        let (v4, v6): (Vec<_>, Vec<_>) = ips.iter().partition(|ip| ip.is_ipv4());
        let key = |t| (canonical(name), t);
        records.insert(
            key(RecordType::A),
            v4.into_iter()
                .map(|ip| match ip {
                    IpAddr::V4(ip) => RData::A(A(ip)),
                    IpAddr::V6(_) => unreachable!(),
                })
                .collect(),
        );
        records.insert(
            key(RecordType::AAAA),
            v6.into_iter()
                .map(|ip| match ip {
                    IpAddr::V6(ip) => RData::AAAA(AAAA(ip)),
                    IpAddr::V4(_) => unreachable!(),
                })
                .collect(),
        );
    }

    /// `name`'s SRV records become `(priority, weight, port, target)`.
    pub fn set_srv(&self, name: &str, srv: &[(u16, u16, u16, &str)]) {
        let records = srv
            .iter()
            .map(|(priority, weight, port, target)| {
                RData::SRV(SRV::new(
                    *priority,
                    *weight,
                    *port,
                    Name::from_str(&canonical(target)).unwrap(),
                ))
            })
            .collect();
        self.records
            .lock()
            .unwrap()
            .insert((canonical(name), RecordType::SRV), records);
    }

    /// Answer every question with `SERVFAIL` (a name server in trouble),
    /// or stop.
    pub fn set_failing(&self, failing: bool) {
        self.failing
            .store(failing, std::sync::atomic::Ordering::SeqCst);
    }

    /// Questions answered so far.
    pub fn asked(&self) -> usize {
        *self.asked.lock().unwrap()
    }

    fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        let query = Message::from_vec(query).ok()?;
        *self.asked.lock().unwrap() += 1;
        let mut response = Message::new();
        response
            .set_id(query.id())
            .set_message_type(MessageType::Response)
            .set_op_code(query.op_code())
            .set_authoritative(true)
            .set_recursion_desired(query.recursion_desired())
            .set_recursion_available(true);
        response.add_queries(query.queries().to_vec());
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            response.set_response_code(ResponseCode::ServFail);
            return response.to_vec().ok();
        }
        let records = self.records.lock().unwrap();
        let mut known = false;
        for question in query.queries() {
            let name = canonical(&question.name().to_ascii());
            known |= records.keys().any(|(n, _)| *n == name);
            if let Some(data) = records.get(&(name, question.query_type())) {
                response
                    .add_answers(data.iter().map(|rdata| {
                        Record::from_rdata(question.name().clone(), 1, rdata.clone())
                    }));
            }
        }
        if !known {
            response.set_response_code(ResponseCode::NXDomain);
        }
        response.to_vec().ok()
    }
}

/// `name.` in lower case.
fn canonical(name: &str) -> String {
    let name = name.to_ascii_lowercase();
    if name.ends_with('.') {
        name
    } else {
        format!("{name}.")
    }
}
