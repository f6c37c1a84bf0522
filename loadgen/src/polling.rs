//! The client side of Engine.IO v4 HTTP long-polling, sans-IO: the requests a browser's
//! engine.io-client makes (the handshake GET, the long-poll GET that the server holds until
//! it has packets, the POST that carries the client's packets) and a minimal HTTP/1.1
//! response parser for their answers.
//!
//! Why not an HTTP client crate: the loadgen's event loop owns its non-blocking sockets (one
//! `mio` poll per thread, one read buffer per thread), and every long-polling answer is a
//! small `Content-Length` body on a keep-alive connection. What that needs is a head parser
//! (httparse) and a body length, which fits the loop as the WebSocket decoder does; a client
//! crate would bring its own runtime or its own blocking I/O.
//!
//! What it never does: chunked bodies or bodies delimited by the connection's end (neither
//! corecast nor the Node.js server answers polling that way; such an answer is an error, not a
//! guess), and it never copies a body: [`parse_response`] says where the body lies in the
//! caller's buffer. The packets inside a body are split by the one codec,
//! [`corecast_wire::packet::polling_packets`].

use std::fmt::Write as _;
use std::ops::Range;

use bytes::BytesMut;

/// A response head longer than this is refused (polling answers carry a handful of headers).
pub const MAX_HEAD: usize = 16 * 1024;

/// A long-polling answer's head, and where its body lies in the buffer it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The server closes the connection after this answer (`Connection: close`, or HTTP/1.0
    /// without keep-alive): the next request needs a new connection.
    pub close: bool,
    /// The body's bytes in the parsed buffer; the whole response ends at `body.end`.
    pub body: Range<usize>,
}

/// Why an answer could not be read; each has the stable code the loadgen counts it under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    Malformed,
    HeadTooBig,
    BodyTooBig,
    /// No `Content-Length` (a chunked body, or one that ends with the connection).
    NoLength,
}

impl HttpError {
    pub fn code(self) -> &'static str {
        match self {
            HttpError::Malformed => "http_malformed_response",
            HttpError::HeadTooBig => "http_head_too_big",
            HttpError::BodyTooBig => "http_body_too_big",
            HttpError::NoLength => "http_no_content_length",
        }
    }
}

/// Parses the response at the front of `buf`: `Ok(None)` until all of it (head and body) has
/// arrived. Bodies over `max_body` bytes are refused.
pub fn parse_response(buf: &[u8], max_body: usize) -> Result<Option<Response>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let head_len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(HttpError::HeadTooBig),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HttpError::Malformed),
    };
    let status = r.code.unwrap_or(0);
    // HTTP/1.0 closes unless asked to keep alive; HTTP/1.1 keeps alive unless asked to close.
    let mut close = r.version == Some(0);
    let mut len = None;
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).map_err(|_| HttpError::Malformed)?;
            len = Some(
                v.trim()
                    .parse::<usize>()
                    .map_err(|_| HttpError::Malformed)?,
            );
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::NoLength);
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let t = token.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                }
            }
        }
    }
    // Answers that never have a body (RFC 9112 §6.3).
    let len = match (status, len) {
        (100..=199 | 204 | 304, _) => 0,
        (_, Some(n)) => n,
        (_, None) => return Err(HttpError::NoLength),
    };
    if len > max_body {
        return Err(HttpError::BodyTooBig);
    }
    if buf.len() < head_len + len {
        return Ok(None);
    }
    Ok(Some(Response {
        status,
        close,
        body: head_len..head_len + len,
    }))
}

/// `GET <path>?EIO=4&transport=polling`: opens a session; the answer is the open packet.
pub fn write_handshake(out: &mut BytesMut, path: &str, host: &str) {
    let _ = write!(
        out,
        "GET {path}?EIO=4&transport=polling HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n\r\n"
    );
}

/// The long-poll `GET` of session `sid`. The same bytes every time, so the loadgen builds
/// them once per session.
pub fn write_get(out: &mut BytesMut, path: &str, host: &str, sid: &str) {
    let _ = write!(
        out,
        "GET {path}?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n\r\n"
    );
}

/// A `POST` of session `sid` carrying `payload` (packets joined by the record separator).
pub fn write_post(out: &mut BytesMut, path: &str, host: &str, sid: &str, payload: &[u8]) {
    let _ = write!(
        out,
        "POST {path}?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: {host}\r\n\
         Accept: */*\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n",
        payload.len()
    );
    out.extend_from_slice(payload);
}

/// The `sid` of an open packet's JSON (`{"sid":"…",…}`); sids are URL-safe, without escapes.
pub fn open_sid(json: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"\"sid\":\"";
    let at = memchr::memmem::find(json, KEY)? + KEY.len();
    let len = json[at..].iter().position(|&b| b == b'"' || b == b'\\')?;
    let sid = std::str::from_utf8(&json[at..at + len]).ok()?;
    let url_safe = sid
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'));
    (!sid.is_empty() && url_safe).then_some(sid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use corecast_wire::packet::{self, EioPacket};

    /// corecast's answer to a long-poll GET (gateway/src/http.rs), with two packets.
    const CORECAST_GET: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=UTF-8\r\n\
        Content-Length: 9\r\n\r\n2\x1e42[\"a\"]";

    #[test]
    fn a_complete_answer_and_its_packets() {
        let r = parse_response(CORECAST_GET, 1 << 20).unwrap().unwrap();
        assert_eq!(r.status, 200);
        assert!(!r.close);
        assert_eq!(r.body.end, CORECAST_GET.len());
        let body = &CORECAST_GET[r.body.clone()];
        let packets: Vec<_> = packet::polling_packets(body).collect();
        assert_eq!(packets, vec![&b"2"[..], &b"42[\"a\"]"[..]]);
        assert!(matches!(
            packet::parse_eio(packets[0]),
            Ok(EioPacket::Ping(_))
        ));
        assert!(matches!(
            packet::parse_eio(packets[1]),
            Ok(EioPacket::Message(_))
        ));
    }

    #[test]
    fn incomplete_until_the_last_byte() {
        for cut in 0..CORECAST_GET.len() {
            assert_eq!(
                parse_response(&CORECAST_GET[..cut], 1 << 20),
                Ok(None),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn pipelined_answers_are_read_one_at_a_time() {
        let mut two = CORECAST_GET.to_vec();
        let post_ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 2\r\n\r\nok";
        two.extend_from_slice(post_ok);
        let first = parse_response(&two, 1 << 20).unwrap().unwrap();
        let rest = &two[first.body.end..];
        let second = parse_response(rest, 1 << 20).unwrap().unwrap();
        assert_eq!(&rest[second.body.clone()], b"ok");
        assert_eq!(second.body.end, rest.len());
    }

    /// The Node.js server's answer (engine.io 6 on Node's http module).
    #[test]
    fn node_answer_with_keep_alive_headers() {
        let a = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Length: 1\r\n\
            Date: Tue, 02 Dec 2026 04:00:00 GMT\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n6";
        let r = parse_response(a, 1 << 20).unwrap().unwrap();
        assert!(!r.close);
        assert_eq!(&a[r.body.clone()], b"6");
    }

    #[test]
    fn connection_close_and_http_1_0() {
        let a = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
        let r = parse_response(a, 1 << 20).unwrap().unwrap();
        assert_eq!((r.status, r.close), (400, true));
        let a = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert!(parse_response(a, 1 << 20).unwrap().unwrap().close);
        let a = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: Keep-Alive\r\n\r\n";
        assert!(!parse_response(a, 1 << 20).unwrap().unwrap().close);
    }

    #[test]
    fn refusals() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n6\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked, 1 << 20), Err(HttpError::NoLength));
        let no_len = b"HTTP/1.1 200 OK\r\n\r\n6";
        assert_eq!(parse_response(no_len, 1 << 20), Err(HttpError::NoLength));
        let no_content = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(
            parse_response(no_content, 1 << 20).unwrap().unwrap().body,
            27..27
        );
        let big = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n";
        assert_eq!(parse_response(big, 10), Err(HttpError::BodyTooBig));
        let bad_len = b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n";
        assert_eq!(parse_response(bad_len, 10), Err(HttpError::Malformed));
        assert_eq!(
            parse_response(b"HTTP/1.1 2x0\r\n\r\n", 10),
            Err(HttpError::Malformed)
        );
        let endless = vec![b'a'; MAX_HEAD + 1];
        let mut head = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        head.extend_from_slice(&endless);
        assert_eq!(parse_response(&head, 10), Err(HttpError::HeadTooBig));
    }

    #[test]
    fn requests_as_a_browser_sends_them() {
        let mut out = BytesMut::new();
        write_handshake(&mut out, "/socket.io/", "127.0.0.1:3000");
        assert_eq!(
            &out[..],
            b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: 127.0.0.1:3000\r\nAccept: */*\r\n\r\n"
        );
        out.clear();
        let mut payload = Vec::new();
        packet::push_polling_packet(&mut payload, b"3");
        packet::push_polling_packet(&mut payload, b"42[\"x\"]");
        write_post(&mut out, "/socket.io/", "h", "abc", &payload);
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut req = httparse::Request::new(&mut headers);
        let httparse::Status::Complete(n) = req.parse(&out).unwrap() else {
            panic!("incomplete request")
        };
        assert_eq!(req.method, Some("POST"));
        assert_eq!(
            req.path,
            Some("/socket.io/?EIO=4&transport=polling&sid=abc")
        );
        assert_eq!(&out[n..], b"3\x1e42[\"x\"]");
        let len = req
            .headers
            .iter()
            .find(|h| h.name == "Content-Length")
            .unwrap();
        assert_eq!(len.value, b"9");
    }

    #[test]
    fn sid_of_an_open_packet() {
        let open = br#"{"sid":"AbC-d_9","upgrades":["websocket"],"pingInterval":25000}"#;
        assert_eq!(open_sid(open), Some("AbC-d_9"));
        assert_eq!(open_sid(br#"{"sid":""}"#), None);
        assert_eq!(open_sid(br#"{"sid":"a b"}"#), None);
        assert_eq!(open_sid(br#"{"upgrades":[]}"#), None);
    }
}
