//! The HTTP request head router (`corecast_gateway::http::parse`): WebSocket upgrades, long-polling
//! requests, preflights, on bytes as a client sends them.
//!
//! Input: byte 0 picks whether an origin list is configured and the read size, the rest is
//! the request. Invariants, beyond not panicking: "read more" only below the head limit; every
//! answer is a well-formed HTTP response (101 with a 28-character accept key, or a refusal's
//! status with a JSON body of the declared length); once the answer is decided, bytes after it
//! (a client's first frames) do not change it; and reading in pieces, parsing after each read
//! as the connection does, decides the same as one read.
#![no_main]

use corecast_gateway::http::{self, Policy, Route, MAX_REQUEST_BYTES};
use libfuzzer_sys::fuzz_target;

const PATH: &str = "/socket.io/";

fn check(r: &Route) {
    let (response, status) = match r {
        Route::WebSocket { response, .. } => {
            let text = std::str::from_utf8(response).expect("ASCII response");
            assert!(
                text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
                "{text}"
            );
            assert!(text.ends_with("\r\n\r\n"));
            let key = text
                .split("Sec-WebSocket-Accept: ")
                .nth(1)
                .and_then(|r| r.split("\r\n").next())
                .expect("accept key");
            assert_eq!(key.len(), 28, "{key}");
            return;
        }
        Route::Respond {
            response, status, ..
        } => (response, *status),
        Route::PollOpen { .. } | Route::PollGet { .. } | Route::PollPost { .. } => return,
    };
    let text = std::str::from_utf8(response).expect("ASCII response");
    assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let len: usize = head
        .split("Content-Length: ")
        .nth(1)
        .and_then(|r| r.split("\r\n").next())
        .and_then(|v| v.parse().ok())
        .expect("Content-Length");
    assert_eq!(len, body.len());
    if status != 204 && status != 411 {
        let v: serde_json::Value = serde_json::from_str(body).expect("JSON body");
        assert!(v["code"].is_u64() && v["message"].is_string(), "{body}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, req)) = data.split_first() else {
        return;
    };
    let origins: Vec<String> = if mode & 1 == 1 {
        vec!["http://good.example".into(), "https://a.example".into()]
    } else {
        Vec::new()
    };
    let policy = Policy {
        path: PATH,
        allowed_origins: &origins,
        polling: mode & 2 == 0,
        websocket: mode & 4 == 0,
    };
    let read = usize::from(mode >> 3) + 1;

    let whole = http::parse(req, &policy);
    match &whole {
        None => assert!(req.len() < MAX_REQUEST_BYTES, "read more past the limit"),
        Some((r, len)) => {
            check(r);
            assert!(*len <= req.len());
            let mut longer = req.to_vec();
            longer.extend_from_slice(b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58");
            assert_eq!(
                http::parse(&longer, &policy).as_ref().map(|(r, _)| r),
                Some(r),
                "bytes after the head changed the answer"
            );
        }
    }

    // As the connection reads: parse after each read, the first answer wins. Below the
    // limit, so that one read and many see the same "too large" rule.
    if req.len() < MAX_REQUEST_BYTES {
        let mut buf = Vec::new();
        let mut first = None;
        for piece in req.chunks(read) {
            buf.extend_from_slice(piece);
            if let Some((r, _)) = http::parse(&buf, &policy) {
                first = Some(r);
                break;
            }
        }
        assert_eq!(
            first.as_ref(),
            whole.as_ref().map(|(r, _)| r),
            "reading in pieces decided otherwise"
        );
    }
});
