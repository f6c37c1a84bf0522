//! The HTTP part of a connection's life: reading the upgrade request, checking path, Engine.IO
//! query, origin and WebSocket headers, and writing the answer. Sans-IO: bytes in, decision out.

use tungstenite::handshake::derive_accept_key;

/// Largest upgrade request accepted (request line plus headers).
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// What to do with an upgrade request.
#[derive(Debug, PartialEq, Eq)]
pub enum Upgrade {
    /// Switch protocols with this response.
    Accept { response: Vec<u8> },
    /// Refuse with this complete HTTP response, then close.
    Refuse { response: Vec<u8>, status: u16 },
}

/// Looks for the end of the request head; `Ok(None)` means "read more".
pub fn parse(buf: &[u8], path: &str, allowed_origins: &[String]) -> Option<Upgrade> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    let status = match req.parse(buf) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => {
            return Some(refuse(
                431,
                "Request Header Fields Too Large",
                0,
                "too many headers",
            ))
        }
        Err(_) => return Some(refuse(400, "Bad Request", 0, "malformed HTTP request")),
    };
    if status.is_partial() {
        return if buf.len() >= MAX_REQUEST_BYTES {
            Some(refuse(
                431,
                "Request Header Fields Too Large",
                0,
                "request head too large",
            ))
        } else {
            None
        };
    }
    Some(decide(&req, path, allowed_origins))
}

fn header<'a>(req: &'a httparse::Request<'_, '_>, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

fn decide(req: &httparse::Request<'_, '_>, path: &str, allowed_origins: &[String]) -> Upgrade {
    let target = req.path.unwrap_or("");
    let (req_path, query) = target.split_once('?').unwrap_or((target, ""));
    if req_path != path && req_path.trim_end_matches('/') != path.trim_end_matches('/') {
        return refuse(404, "Not Found", 0, "not found");
    }
    if req.method != Some("GET") {
        return refuse(400, "Bad Request", 2, "Bad handshake method");
    }
    if query_param(query, "EIO") != Some("4") {
        return refuse(400, "Bad Request", 5, "Unsupported protocol version");
    }
    if query_param(query, "transport") != Some("websocket") {
        // Only the WebSocket transport is served; clients connect with
        // `transports: ['websocket']`.
        return refuse(400, "Bad Request", 0, "Transport unknown");
    }
    if query_param(query, "sid").is_some() {
        return refuse(400, "Bad Request", 1, "Session ID unknown");
    }
    if !allowed_origins.is_empty() {
        let ok = header(req, "origin").is_some_and(|o| allowed_origins.iter().any(|a| a == o));
        if !ok {
            return refuse(403, "Forbidden", 4, "Origin not allowed");
        }
    }
    let upgrade = header(req, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let connection = header(req, "connection").is_some_and(|v| {
        v.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
    });
    if !upgrade || !connection {
        return refuse(
            400,
            "Bad Request",
            3,
            "Bad request: not a WebSocket upgrade",
        );
    }
    if header(req, "sec-websocket-version") != Some("13") {
        return refuse(
            400,
            "Bad Request",
            3,
            "Bad request: Sec-WebSocket-Version must be 13",
        );
    }
    let Some(key) = header(req, "sec-websocket-key") else {
        return refuse(
            400,
            "Bad Request",
            3,
            "Bad request: missing Sec-WebSocket-Key",
        );
    };
    let accept = derive_accept_key(key.trim().as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    Upgrade::Accept {
        response: response.into_bytes(),
    }
}

/// An Engine.IO-style error response: `{"code":N,"message":"..."}`.
fn refuse(status: u16, reason: &str, code: u8, message: &str) -> Upgrade {
    let body = format!("{{\"code\":{code},\"message\":\"{message}\"}}");
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    Upgrade::Refuse {
        response: response.into_bytes(),
        status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str, extra: &str) -> Vec<u8> {
        format!(
            "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
        )
        .into_bytes()
    }

    fn status(u: Option<Upgrade>) -> u16 {
        match u.unwrap() {
            Upgrade::Accept { .. } => 101,
            Upgrade::Refuse { status, .. } => status,
        }
    }

    #[test]
    fn accepts_a_socket_io_websocket_upgrade() {
        let r = parse(
            &req("/socket.io/?EIO=4&transport=websocket", ""),
            "/socket.io/",
            &[],
        );
        match r.unwrap() {
            Upgrade::Accept { response } => {
                let s = String::from_utf8(response).unwrap();
                assert!(s.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{s}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusals() {
        let allowed = vec!["http://good.example".to_string()];
        let p = "/socket.io/";
        assert_eq!(status(parse(&req("/other", ""), p, &[])), 404);
        assert_eq!(
            status(parse(
                &req("/socket.io/?EIO=3&transport=websocket", ""),
                p,
                &[]
            )),
            400
        );
        assert_eq!(
            status(parse(
                &req("/socket.io/?EIO=4&transport=polling", ""),
                p,
                &[]
            )),
            400
        );
        let q = "/socket.io/?EIO=4&transport=websocket";
        assert_eq!(
            status(parse(
                &req(q, "Origin: http://evil.example\r\n"),
                p,
                &allowed
            )),
            403
        );
        assert_eq!(status(parse(&req(q, ""), p, &allowed)), 403);
        assert_eq!(
            status(parse(
                &req(q, "Origin: http://good.example\r\n"),
                p,
                &allowed
            )),
            101
        );
        assert_eq!(
            parse(b"GET /socket.io/ HTTP/1.1\r\nHost: x\r\n", p, &[]),
            None
        );
        assert_eq!(status(parse(b"G\x01T / HTTP/1.1\r\n\r\n", p, &[])), 400);
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_REQUEST_BYTES + 10, b'a');
        assert_eq!(status(parse(&huge, p, &[])), 431);
    }
}
