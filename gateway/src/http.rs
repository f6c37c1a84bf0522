//! The HTTP side of the public port, sans-IO: a request head in, a [`Route`] out.
//!
//! Every request to the Engine.IO path is one of: a WebSocket upgrade (new, or the upgrade of a
//! long-polling session named by `sid`), a long-polling handshake, GET or POST, a CORS
//! preflight, or something refused. The checks and their order follow the reference server
//! (engine.io's `verify`), and refusals are its error answers: status 400 (403 for a refused
//! origin) with `{"code":N,"message":"..."}`, where N is Engine.IO's error code:
//!
//! | code | message | when |
//! |---|---|---|
//! | 0 | Transport unknown | `transport` missing, unknown, or turned off (`CORECAST_TRANSPORTS`) |
//! | 1 | Session ID unknown | `sid` names no session (answered where the session would live) |
//! | 2 | Bad handshake method | a handshake that is not a GET |
//! | 3 | Bad request | transport mismatch, a WebSocket request that is no upgrade, a bad method |
//! | 4 | Forbidden / Origin not allowed | an `Origin` header not in `CORECAST_ALLOWED_ORIGINS` (403) |
//! | 5 | Unsupported protocol version | `EIO` other than 4 |
//!
//! CORS: a request without an `Origin` header is not cross-origin (native and server clients
//! send none) and is accepted. An allowed origin (any origin while the list is empty) gets
//! `Access-Control-Allow-Origin: <origin>` with credentials on every polling answer, and its
//! preflight (`OPTIONS`) is answered with GET and POST and the headers it asked for.
//! Nothing here does I/O; the caller reads and writes.

use crate::engine::Sid;
use tungstenite::handshake::derive_accept_key;

/// Largest request head accepted (request line plus headers).
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// What the server accepts, from its configuration.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// The Engine.IO path, e.g. `/socket.io/`.
    pub path: &'a str,
    /// Allowed `Origin`s; empty allows any.
    pub allowed_origins: &'a [String],
    pub polling: bool,
    pub websocket: bool,
}

/// The origin a polling answer names in its CORS headers; `None` for a request that sent no
/// `Origin` (no CORS headers then).
pub type Cors = Option<String>;

/// What to do with one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Answer with this complete response; then close the TCP connection if `close`.
    Respond {
        response: Vec<u8>,
        status: u16,
        close: bool,
    },
    /// Switch to WebSocket with this 101 response: a new session (`sid: None`), or the
    /// upgrade of the long-polling session `sid`. `offsets`: a new session's client keeps
    /// recovery offsets (`recovery::takes_offsets`).
    WebSocket {
        sid: Option<Sid>,
        response: Vec<u8>,
        offsets: bool,
    },
    /// Long-polling handshake: a new session, answered with the open packet.
    PollOpen {
        cors: Cors,
        close: bool,
        offsets: bool,
    },
    /// Long-polling GET of session `sid`: answered when it has packets.
    PollGet { sid: Sid, cors: Cors, close: bool },
    /// Long-polling POST of session `sid` with a body of `content_length` bytes.
    PollPost {
        sid: Sid,
        cors: Cors,
        close: bool,
        content_length: usize,
    },
}

impl Route {
    /// The session this request is for, if it names one.
    pub fn sid(&self) -> Option<Sid> {
        match self {
            Route::WebSocket { sid, .. } => *sid,
            Route::PollGet { sid, .. } | Route::PollPost { sid, .. } => Some(*sid),
            Route::Respond { .. } | Route::PollOpen { .. } => None,
        }
    }
}

/// Engine.IO's error codes (see the module table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EioError {
    UnknownTransport = 0,
    UnknownSid = 1,
    BadHandshakeMethod = 2,
    BadRequest = 3,
    Forbidden = 4,
    UnsupportedProtocolVersion = 5,
}

impl EioError {
    pub fn message(self) -> &'static str {
        match self {
            EioError::UnknownTransport => "Transport unknown",
            EioError::UnknownSid => "Session ID unknown",
            EioError::BadHandshakeMethod => "Bad handshake method",
            EioError::BadRequest => "Bad request",
            EioError::Forbidden => "Origin not allowed",
            EioError::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }

    /// The complete answer, CORS headers included for an allowed origin (so that a browser
    /// script can read why it was refused).
    pub fn response(self, cors: &Cors) -> Vec<u8> {
        let (status, reason) = match self {
            EioError::Forbidden => (403, "Forbidden"),
            _ => (400, "Bad Request"),
        };
        let body = format!(
            "{{\"code\":{},\"message\":\"{}\"}}",
            self as u8,
            self.message()
        );
        response(
            status,
            reason,
            "application/json",
            cors,
            false,
            body.as_bytes(),
        )
    }

    pub fn status(self) -> u16 {
        if self == EioError::Forbidden {
            403
        } else {
            400
        }
    }
}

/// Looks for the end of the request head in `buf`: `None` means "read more"; otherwise the
/// route and the head's length (the body, or a pipelined request, follows it).
pub fn parse(buf: &[u8], policy: &Policy<'_>) -> Option<(Route, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    let status = match req.parse(buf) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => {
            return Some((plain_refusal(431, "too many headers"), buf.len()))
        }
        Err(_) => return Some((plain_refusal(400, "malformed HTTP request"), buf.len())),
    };
    match status {
        httparse::Status::Partial if buf.len() >= MAX_REQUEST_BYTES => {
            Some((plain_refusal(431, "request head too large"), buf.len()))
        }
        httparse::Status::Partial => None,
        httparse::Status::Complete(len) => Some((decide(&req, policy), len)),
    }
}

fn header<'a>(req: &'a httparse::Request<'_, '_>, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
}

fn has_token(req: &httparse::Request<'_, '_>, name: &str, token: &str) -> bool {
    req.headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

fn decide(req: &httparse::Request<'_, '_>, policy: &Policy<'_>) -> Route {
    let target = req.path.unwrap_or("");
    let (req_path, query) = target.split_once('?').unwrap_or((target, ""));
    if req_path != policy.path
        && req_path.trim_end_matches('/') != policy.path.trim_end_matches('/')
    {
        return plain_refusal(404, "not found");
    }
    let method = req.method.unwrap_or("");
    // HTTP/1.0 closes unless asked to keep alive; HTTP/1.1 keeps alive unless asked to close.
    let close = if req.version == Some(0) {
        !has_token(req, "connection", "keep-alive")
    } else {
        has_token(req, "connection", "close")
    };

    // The origin first: a refused origin learns nothing about sessions.
    let cors: Cors = match header(req, "origin") {
        None => None,
        Some(o)
            if policy.allowed_origins.is_empty()
                || policy.allowed_origins.iter().any(|a| a == o) =>
        {
            Some(o.to_string())
        }
        Some(_) => return refuse(EioError::Forbidden, &None),
    };
    if method == "OPTIONS" {
        return preflight(req, &cors, close);
    }

    let transport = query_param(query, "transport");
    let enabled = match transport {
        Some("polling") => policy.polling,
        Some("websocket") => policy.websocket,
        _ => false,
    };
    if !enabled {
        return refuse(EioError::UnknownTransport, &cors);
    }
    if query_param(query, "EIO") != Some("4") {
        return refuse(EioError::UnsupportedProtocolVersion, &cors);
    }
    let sid = match query_param(query, "sid") {
        None => None,
        Some(s) => match Sid::parse(s) {
            Some(sid) => Some(sid),
            None => return refuse(EioError::UnknownSid, &cors),
        },
    };
    let is_upgrade =
        has_token(req, "upgrade", "websocket") && has_token(req, "connection", "upgrade");

    if transport == Some("websocket") {
        if method != "GET" {
            return refuse(
                if sid.is_none() {
                    EioError::BadHandshakeMethod
                } else {
                    EioError::BadRequest
                },
                &cors,
            );
        }
        if !is_upgrade {
            return refuse(EioError::BadRequest, &cors);
        }
        if header(req, "sec-websocket-version") != Some("13") {
            return refuse(EioError::BadRequest, &cors);
        }
        let Some(key) = header(req, "sec-websocket-key") else {
            return refuse(EioError::BadRequest, &cors);
        };
        let accept = derive_accept_key(key.trim().as_bytes());
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        return Route::WebSocket {
            sid,
            response: response.into_bytes(),
            offsets: crate::recovery::takes_offsets(query),
        };
    }

    // Long-polling.
    let Some(sid) = sid else {
        if method != "GET" {
            return refuse(EioError::BadHandshakeMethod, &cors);
        }
        return Route::PollOpen {
            cors,
            close,
            offsets: crate::recovery::takes_offsets(query),
        };
    };
    match method {
        "GET" => Route::PollGet { sid, cors, close },
        "POST" => {
            if header(req, "transfer-encoding").is_some() {
                // Browsers and the official clients always send a Content-Length for these
                // small text bodies; a chunked body is not worth a second body parser.
                return Route::Respond {
                    response: response(411, "Length Required", "text/plain", &cors, true, b""),
                    status: 411,
                    close: true,
                };
            }
            match header(req, "content-length").map(|v| v.trim().parse::<usize>()) {
                Some(Ok(content_length)) => Route::PollPost {
                    sid,
                    cors,
                    close,
                    content_length,
                },
                _ => Route::Respond {
                    response: response(411, "Length Required", "text/plain", &cors, true, b""),
                    status: 411,
                    close: true,
                },
            }
        }
        _ => refuse(EioError::BadRequest, &cors),
    }
}

/// The answer to a CORS preflight from an allowed origin (or from no origin at all).
fn preflight(req: &httparse::Request<'_, '_>, cors: &Cors, close: bool) -> Route {
    let mut extra = String::from("Access-Control-Allow-Methods: GET, POST\r\n");
    if let Some(h) = header(req, "access-control-request-headers") {
        // Header names only: anything else would let the request smuggle a header of its own.
        if h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_, ".contains(&b))
        {
            extra.push_str("Access-Control-Allow-Headers: ");
            extra.push_str(h);
            extra.push_str("\r\n");
        }
    }
    let mut out = format!("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n{extra}").into_bytes();
    push_cors(&mut out, cors);
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Route::Respond {
        response: out,
        status: 204,
        close,
    }
}

fn push_cors(out: &mut Vec<u8>, cors: &Cors) {
    if let Some(origin) = cors {
        out.extend_from_slice(b"Access-Control-Allow-Origin: ");
        out.extend_from_slice(origin.as_bytes());
        out.extend_from_slice(b"\r\nAccess-Control-Allow-Credentials: true\r\nVary: Origin\r\n");
    }
}

/// A complete HTTP/1.1 response.
pub fn response(
    status: u16,
    reason: &str,
    content_type: &str,
    cors: &Cors,
    close: bool,
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + body.len());
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
            body.len()
        )
        .as_bytes(),
    );
    push_cors(&mut out, cors);
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// A long-polling answer carrying `payload` (packets joined by the record separator).
pub fn polling_response(cors: &Cors, close: bool, payload: &[u8]) -> Vec<u8> {
    response(200, "OK", "text/plain; charset=UTF-8", cors, close, payload)
}

/// The answer to a long-polling POST that was taken in.
pub fn post_ok(cors: &Cors, close: bool) -> Vec<u8> {
    response(200, "OK", "text/html", cors, close, b"ok")
}

/// An Engine.IO error answer; the connection closes after it.
fn refuse(e: EioError, cors: &Cors) -> Route {
    Route::Respond {
        response: e.response(cors),
        status: e.status(),
        close: true,
    }
}

/// A refusal of something that is not an Engine.IO request at all (bad HTTP, another path).
fn plain_refusal(status: u16, message: &str) -> Route {
    let reason = match status {
        404 => "Not Found",
        431 => "Request Header Fields Too Large",
        _ => "Bad Request",
    };
    let body = format!("{{\"code\":3,\"message\":\"{message}\"}}");
    Route::Respond {
        response: response(
            status,
            reason,
            "application/json",
            &None,
            true,
            body.as_bytes(),
        ),
        status,
        close: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANY: Policy<'static> = Policy {
        path: "/socket.io/",
        allowed_origins: &[],
        polling: true,
        websocket: true,
    };

    fn ws_req(target: &str, extra: &str) -> Vec<u8> {
        format!(
            "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
        )
        .into_bytes()
    }

    fn req(method: &str, target: &str, extra: &str) -> Vec<u8> {
        format!("{method} {target} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").into_bytes()
    }

    fn route(buf: &[u8], policy: &Policy<'_>) -> Route {
        parse(buf, policy).expect("a complete head").0
    }

    /// The status and, for Engine.IO refusals, the error code.
    fn status(r: Route) -> (u16, Option<u8>) {
        match r {
            Route::Respond {
                response, status, ..
            } => {
                let s = String::from_utf8(response).unwrap();
                let code = s
                    .split("\"code\":")
                    .nth(1)
                    .and_then(|c| c[..1].parse().ok());
                (status, code)
            }
            Route::WebSocket { .. } => (101, None),
            Route::PollOpen { .. } | Route::PollGet { .. } | Route::PollPost { .. } => (200, None),
        }
    }

    const SID: &str = "0123456789abcdef00000000000100000002";

    #[test]
    fn accepts_a_websocket_upgrade_with_the_accept_key() {
        match route(&ws_req("/socket.io/?EIO=4&transport=websocket", ""), &ANY) {
            Route::WebSocket {
                sid: None,
                response,
                offsets: true,
            } => {
                let s = String::from_utf8(response).unwrap();
                assert!(s.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{s}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_python_engineio_handshake_is_routed_without_offsets() {
        let python = "/socket.io/?transport=polling&EIO=4&t=1764750000.1234";
        assert!(matches!(
            route(&req("GET", python, ""), &ANY),
            Route::PollOpen { offsets: false, .. }
        ));
        let python = "/socket.io/?transport=websocket&EIO=4&t=1764750000.1234";
        assert!(matches!(
            route(&ws_req(python, ""), &ANY),
            Route::WebSocket { offsets: false, .. }
        ));
    }

    #[test]
    fn routes_polling_requests_and_the_upgrade_of_a_session() {
        let q = format!("/socket.io/?EIO=4&transport=polling&sid={SID}");
        let sid = Sid::parse(SID).unwrap();
        assert_eq!(
            route(
                &req("GET", "/socket.io/?EIO=4&transport=polling&t=x1", ""),
                &ANY
            ),
            Route::PollOpen {
                cors: None,
                close: false,
                offsets: true,
            }
        );
        assert_eq!(
            route(&req("GET", &q, ""), &ANY),
            Route::PollGet {
                sid,
                cors: None,
                close: false
            }
        );
        assert_eq!(
            route(
                &req("POST", &q, "Content-Length: 5\r\nConnection: close\r\n"),
                &ANY
            ),
            Route::PollPost {
                sid,
                cors: None,
                close: true,
                content_length: 5
            }
        );
        let up = ws_req(
            &format!("/socket.io/?EIO=4&transport=websocket&sid={SID}"),
            "",
        );
        assert!(matches!(route(&up, &ANY), Route::WebSocket { sid: Some(s), .. } if s == sid));
    }

    #[test]
    fn engine_io_error_answers() {
        let p = "/socket.io/";
        let _ = p;
        assert_eq!(
            status(route(&req("GET", "/other", ""), &ANY)),
            (404, Some(3))
        );
        assert_eq!(
            status(route(
                &req("GET", "/socket.io/?EIO=4&transport=carrier-pigeon", ""),
                &ANY
            )),
            (400, Some(0))
        );
        assert_eq!(
            status(route(&req("GET", "/socket.io/?EIO=4", ""), &ANY)),
            (400, Some(0))
        );
        assert_eq!(
            status(route(
                &req("GET", "/socket.io/?EIO=3&transport=polling", ""),
                &ANY
            )),
            (400, Some(5))
        );
        assert_eq!(
            status(route(
                &req(
                    "POST",
                    "/socket.io/?EIO=4&transport=polling",
                    "Content-Length: 0\r\n"
                ),
                &ANY
            )),
            (400, Some(2))
        );
        assert_eq!(
            status(route(
                &req("GET", "/socket.io/?EIO=4&transport=polling&sid=nope", ""),
                &ANY
            )),
            (400, Some(1))
        );
        assert_eq!(
            status(route(
                &req(
                    "PUT",
                    &format!("/socket.io/?EIO=4&transport=polling&sid={SID}"),
                    ""
                ),
                &ANY
            )),
            (400, Some(3))
        );
        assert_eq!(
            status(route(
                &req(
                    "POST",
                    &format!("/socket.io/?EIO=4&transport=polling&sid={SID}"),
                    ""
                ),
                &ANY
            )),
            (411, None)
        );
        // A WebSocket transport request that is no upgrade.
        assert_eq!(
            status(route(
                &req("GET", "/socket.io/?EIO=4&transport=websocket", ""),
                &ANY
            )),
            (400, Some(3))
        );
        assert_eq!(
            status(route(
                &req("POST", "/socket.io/?EIO=4&transport=websocket", ""),
                &ANY
            )),
            (400, Some(2))
        );
        assert_eq!(
            parse(b"GET /socket.io/ HTTP/1.1\r\nHost: x\r\n", &ANY),
            None
        );
        assert_eq!(status(route(b"G\x01T / HTTP/1.1\r\n\r\n", &ANY)).0, 400);
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_REQUEST_BYTES + 10, b'a');
        assert_eq!(status(route(&huge, &ANY)).0, 431);
    }

    #[test]
    fn transports_can_be_turned_off() {
        let ws_only = Policy {
            polling: false,
            ..ANY
        };
        let polling_only = Policy {
            websocket: false,
            ..ANY
        };
        let open = req("GET", "/socket.io/?EIO=4&transport=polling", "");
        assert_eq!(status(route(&open, &ws_only)), (400, Some(0)));
        assert!(matches!(
            route(&open, &polling_only),
            Route::PollOpen { .. }
        ));
        let ws = ws_req("/socket.io/?EIO=4&transport=websocket", "");
        assert_eq!(status(route(&ws, &polling_only)), (400, Some(0)));
        assert!(matches!(route(&ws, &ws_only), Route::WebSocket { .. }));
    }

    #[test]
    fn origins_are_checked_on_both_transports_and_a_missing_origin_is_accepted() {
        let allowed = ["http://good.example".to_string()];
        let policy = Policy {
            allowed_origins: &allowed,
            ..ANY
        };
        let ws = "/socket.io/?EIO=4&transport=websocket";
        let poll = "/socket.io/?EIO=4&transport=polling";
        for evil in [
            ws_req(ws, "Origin: http://evil.example\r\n"),
            req("GET", poll, "Origin: http://evil.example\r\n"),
            req("OPTIONS", poll, "Origin: http://evil.example\r\n"),
        ] {
            assert_eq!(status(route(&evil, &policy)), (403, Some(4)));
        }
        assert!(matches!(
            route(&ws_req(ws, ""), &policy),
            Route::WebSocket { .. }
        ));
        assert_eq!(
            route(&req("GET", poll, ""), &policy),
            Route::PollOpen {
                cors: None,
                close: false,
                offsets: true,
            }
        );
        assert_eq!(
            route(
                &req("GET", poll, "Origin: http://good.example\r\n"),
                &policy
            ),
            Route::PollOpen {
                cors: Some("http://good.example".into()),
                close: false,
                offsets: true,
            }
        );
    }

    #[test]
    fn preflight_and_cors_headers() {
        let allowed = ["http://good.example".to_string()];
        let policy = Policy {
            allowed_origins: &allowed,
            ..ANY
        };
        let pre = req(
            "OPTIONS",
            "/socket.io/?EIO=4&transport=polling",
            "Origin: http://good.example\r\nAccess-Control-Request-Method: POST\r\n\
             Access-Control-Request-Headers: content-type\r\n",
        );
        let Route::Respond {
            response, status, ..
        } = route(&pre, &policy)
        else {
            panic!("a preflight is answered")
        };
        let s = String::from_utf8(response).unwrap();
        assert_eq!(status, 204);
        assert!(
            s.contains("Access-Control-Allow-Origin: http://good.example\r\n"),
            "{s}"
        );
        assert!(
            s.contains("Access-Control-Allow-Credentials: true\r\n"),
            "{s}"
        );
        assert!(
            s.contains("Access-Control-Allow-Methods: GET, POST\r\n"),
            "{s}"
        );
        assert!(
            s.contains("Access-Control-Allow-Headers: content-type\r\n"),
            "{s}"
        );
        let body = polling_response(&Some("http://good.example".into()), false, b"2");
        let s = String::from_utf8(body).unwrap();
        assert!(
            s.contains("Access-Control-Allow-Origin: http://good.example\r\n"),
            "{s}"
        );
        assert!(s.ends_with("\r\n\r\n2"), "{s}");
        assert!(!String::from_utf8(post_ok(&None, false))
            .unwrap()
            .contains("Access-Control"));
    }

    #[test]
    fn http_1_0_closes_unless_kept_alive() {
        let r = |extra: &str| {
            let b = format!("GET /socket.io/?EIO=4&transport=polling HTTP/1.0\r\n{extra}\r\n");
            route(b.as_bytes(), &ANY)
        };
        assert_eq!(
            r(""),
            Route::PollOpen {
                cors: None,
                close: true,
                offsets: true,
            }
        );
        assert_eq!(
            r("Connection: keep-alive\r\n"),
            Route::PollOpen {
                cors: None,
                close: false,
                offsets: true,
            }
        );
    }
}
