//! Set-up through the server's admin API (corecast's internal listener, or the baseline's
//! copy of it) and token minting. Blocking, on the main thread, before any load starts:
//! never used while measuring.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::config::Config;

/// A keep-alive HTTP/1.1 client for `PUT` requests; reconnects when the server closes.
struct AdminClient {
    addr: SocketAddr,
    token: String,
    stream: Option<TcpStream>,
}

impl AdminClient {
    fn put(&mut self, path: &str, body: &str) -> anyhow::Result<()> {
        for attempt in 0..3 {
            match self.try_put(path, body) {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 2 && e.downcast_ref::<std::io::Error>().is_some() => {
                    self.stream = None;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the last attempt returns")
    }

    fn try_put(&mut self, path: &str, body: &str) -> anyhow::Result<()> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
        }
        let stream = self.stream.as_mut().expect("invariant: connected above");
        let req = format!(
            "PUT {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            self.token,
            body.len()
        );
        stream.write_all(req.as_bytes())?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            let httparse::Status::Complete(head_len) = resp.parse(&buf)? else {
                continue;
            };
            let mut content_len = 0usize;
            let mut close = false;
            for h in resp.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    content_len = std::str::from_utf8(h.value)?.trim().parse()?;
                } else if h.name.eq_ignore_ascii_case("connection") {
                    close = h.value.eq_ignore_ascii_case(b"close");
                }
            }
            let code = resp.code.unwrap_or(0);
            while buf.len() < head_len + content_len {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            if close {
                self.stream = None;
            }
            if !(200..300).contains(&code) {
                let end = buf.len().min(head_len + content_len);
                bail!(
                    "admin API PUT {path} answered {code}: {} (check --admin and --admin-token)",
                    String::from_utf8_lossy(&buf[head_len..end])
                );
            }
            return Ok(());
        }
    }
}

/// `GET path` on the internal listener, on a connection of its own: the status and the body.
/// Used for `/metrics` at the phase boundaries, never while measuring.
pub fn get(addr: SocketAddr, token: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Connection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head_len) = resp.parse(&buf)? else {
        bail!("GET {path}: incomplete answer");
    };
    let code = resp.code.unwrap_or(0);
    Ok((code, String::from_utf8_lossy(&buf[head_len..]).into_owned()))
}

/// Creates the users (unless `--no-users`) and the groups of this run.
pub fn set_up(cfg: &Config) -> anyhow::Result<()> {
    let mut client = AdminClient {
        addr: cfg.args.admin,
        token: cfg.args.admin_token.clone(),
        stream: None,
    };
    let members_total = cfg.nr_groups * cfg.group_size;
    if !cfg.args.no_users {
        let offline = (0..cfg.nr_groups)
            .flat_map(|g| (0..cfg.args.offline_members).map(move |k| cfg.offline_user_id(g, k)));
        for uid in (0..cfg.args.conns).map(|i| cfg.user_id(i)).chain(offline) {
            let body =
                format!(r#"{{"email":"bench{uid}@example.test","name":"bench user {uid}"}}"#);
            client
                .put(&format!("/api/users/{uid}"), &body)
                .with_context(|| format!("creating user {uid}"))?;
        }
    }
    for g in 0..cfg.nr_groups {
        let gid = cfg.group_id(g);
        let mut body = format!(r#"{{"name":"bench group {gid}","members":["#);
        let first = g * cfg.group_size;
        for i in first..(first + cfg.group_size).min(members_total) {
            if i > first {
                body.push(',');
            }
            body.push_str(&cfg.user_id(i).to_string());
        }
        for k in 0..cfg.args.offline_members {
            body.push(',');
            body.push_str(&cfg.offline_user_id(g, k).to_string());
        }
        body.push_str("]}");
        client
            .put(&format!("/api/groups/{gid}"), &body)
            .with_context(|| format!("creating group {gid}"))?;
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct Claims {
    sub: u64,
    exp: u64,
    iat: u64,
}

/// Mints HS256 tokens for users, valid for a day.
pub struct TokenMinter {
    key: jsonwebtoken::EncodingKey,
    header: jsonwebtoken::Header,
    now: u64,
}

impl TokenMinter {
    pub fn new(secret: &str) -> TokenMinter {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        TokenMinter {
            key: jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
            header: jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            now,
        }
    }

    /// The Socket.IO CONNECT auth object: `{"token":"<jwt>"}`.
    pub fn auth_json(&self, user_id: u64) -> Vec<u8> {
        let claims = Claims {
            sub: user_id,
            exp: self.now + 86_400,
            iat: self.now,
        };
        let token = jsonwebtoken::encode(&self.header, &claims, &self.key)
            .expect("invariant: HS256 signing of plain claims cannot fail");
        format!(r#"{{"token":"{token}"}}"#).into_bytes()
    }
}
