//! Starts the real gateway from the library on port 0 and drives it with a raw client built on
//! the project's wire codec (the same codec the loadgen uses).

use bytes::BytesMut;
use corecast_gateway::config::Config;
use corecast_gateway::server::Gateway;
use corecast_storage::{Group, GroupId, UserId};
use corecast_wire::packet;
use corecast_wire::ws::{self, Decoder, Message, Role};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const SECRET: &str = "gateway-test-secret-0123456789abcdef";

fn start(shards: usize, dir: &std::path::Path) -> Gateway {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.server.internal_listen = "127.0.0.1:0".parse().unwrap();
    c.server.shards = shards;
    c.auth.jwt_secret = Some(SECRET.into());
    c.store.data_dir = dir.to_path_buf();
    c.limits.rate_limit_per_min = 0;
    Gateway::start(c).expect("gateway starts")
}

struct Client {
    s: TcpStream,
    buf: BytesMut,
    dec: Decoder,
}

impl Client {
    fn connect(addr: SocketAddr, user: u64) -> Client {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        let mut c = Client {
            s,
            buf: BytesMut::new(),
            dec: Decoder::new(Role::Client, 1 << 20),
        };
        assert!(c.recv().starts_with('0'), "open packet first");
        let token = corecast_gateway::auth::mint(SECRET, UserId(user), 60).unwrap();
        let mut p = Vec::new();
        packet::write_connect_request(
            &mut p,
            Some(format!("{{\"token\":\"{token}\"}}").as_bytes()),
        );
        c.send(&p);
        let answer = c.recv();
        assert!(answer.starts_with("40{\"sid\""), "{answer}");
        c
    }

    fn send(&mut self, payload: &[u8]) {
        self.s
            .write_all(&ws::text_frame(Role::Client, payload))
            .unwrap();
    }

    /// The next Engine.IO text payload, answering pings on the way.
    fn recv(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            while let Some(m) = self.dec.decode(&mut self.buf).unwrap() {
                if let Message::Text(t) = m {
                    let t = String::from_utf8(t.to_vec()).unwrap();
                    if t == "2" {
                        self.send(b"3");
                        continue;
                    }
                    return t;
                }
            }
            assert!(Instant::now() < deadline, "nothing received in time");
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk).expect("read within the timeout");
            assert!(n > 0, "server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Waits for the named event and returns its payload.
    fn event(&mut self, name: &str) -> serde_json::Value {
        loop {
            let t = self.recv();
            if let Some(json) = t.strip_prefix("42") {
                let v: serde_json::Value = serde_json::from_str(json).unwrap();
                if v[0] == name {
                    return v[1].clone();
                }
            }
        }
    }

    fn ack(&mut self, id: u64) -> serde_json::Value {
        let prefix = format!("43{id}");
        loop {
            let t = self.recv();
            if let Some(json) = t.strip_prefix(&prefix) {
                let v: serde_json::Value = serde_json::from_str(json).unwrap();
                return v[0].clone();
            }
        }
    }
}

#[test]
fn messages_cross_shards_in_one_order_for_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(4, dir.path());
    let members: Vec<UserId> = (1..=6).map(UserId).collect();
    gw.store()
        .blocking()
        .put_group(Group {
            id: GroupId::new("7"),
            name: "g".into(),
            members: members.clone(),
        })
        .unwrap();
    // Enough connections that the kernel spreads them over several shards.
    let mut clients: Vec<Client> = members
        .iter()
        .map(|u| Client::connect(gw.public_addr, u.0))
        .collect();

    let per_sender = 20;
    for i in 0..per_sender {
        for (k, c) in clients.iter_mut().enumerate().take(3) {
            let ack_id = (k * 1000 + i) as u64;
            c.send(
                format!("42{ack_id}[\"sendMessage\",{{\"groupId\":7,\"text\":\"m{k}-{i}\"}}]")
                    .as_bytes(),
            );
        }
    }
    let mut orders = Vec::new();
    for c in clients.iter_mut() {
        let mut ids: Vec<u64> = Vec::new();
        for _ in 0..3 * per_sender {
            let m = c.event("newMessage");
            ids.push(m["id"].as_str().unwrap().parse().unwrap());
        }
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(
            ids, sorted,
            "a member saw the group's messages out of id order"
        );
        orders.push(ids);
    }
    assert!(
        orders.windows(2).all(|w| w[0] == w[1]),
        "members saw different orders"
    );
    // Every message was acknowledged only after it was stored.
    let history = gw
        .store()
        .blocking()
        .history(GroupId::new("7"), 500, None)
        .unwrap();
    assert_eq!(history.len(), 3 * per_sender);
    gw.stop();
}

#[test]
fn a_non_member_is_refused_and_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(2, dir.path());
    gw.store()
        .blocking()
        .put_group(Group {
            id: GroupId::new("1"),
            name: "g".into(),
            members: vec![UserId(1)],
        })
        .unwrap();
    let mut c = Client::connect(gw.public_addr, 2);
    c.send(br#"425["sendMessage",{"groupId":1,"text":"hi"}]"#);
    let ack = c.ack(5);
    assert_eq!(ack["ok"], false);
    assert_eq!(ack["error"]["code"], "not_member");
    c.send(br#"42["nope",{}]"#);
    assert_eq!(c.event("error")["code"], "unknown_event");
    gw.stop();
}
