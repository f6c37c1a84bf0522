//! The internal listener's request reader (`corecast_gateway::admin::request::RequestReader`),
//! on bytes as a client of the admin port sends them.
//!
//! Input: byte 0 picks whether an admin token is configured, byte 1 the read size; the rest is
//! the request. Invariants, beyond not panicking:
//! - reading in pieces gives the same outcome as one read (the same request, or the same
//!   refusal);
//! - an `/api/` request completes only with the configured token in its `Authorization`
//!   header; outside `/api/` a request never has a body;
//! - a body never exceeds the limit, and is exactly what `Content-Length` declared.
#![no_main]

use corecast_gateway::admin::request::{is_api, RequestReader, Step, MAX_BODY};
use libfuzzer_sys::fuzz_target;

const TOKEN: &str = "fuzz-admin-token";

/// (status or 0 for complete, method, path, query, body)
type Outcome = (u16, String, String, String, Vec<u8>);

fn outcome(step: Step) -> Option<Outcome> {
    match step {
        Step::More | Step::Continue => None,
        Step::Refuse(r) => Some((
            r.status,
            String::new(),
            String::new(),
            String::new(),
            Vec::new(),
        )),
        Step::Complete(r) => Some((0, r.method, r.path, r.query, r.body)),
    }
}

fn read(input: &[u8], piece: usize, token: Option<&str>) -> Option<Outcome> {
    let mut reader = RequestReader::new();
    for chunk in input.chunks(piece) {
        if let Some(o) = outcome(reader.feed(chunk, token)) {
            return Some(o);
        }
    }
    None
}

fuzz_target!(|data: &[u8]| {
    let [mode, piece, input @ ..] = data else {
        return;
    };
    let token = (mode & 1 == 1).then_some(TOKEN);
    let whole = read(input, input.len().max(1), token);
    let pieces = read(input, usize::from(*piece) + 1, token);
    assert_eq!(whole, pieces, "reading in pieces changed the outcome");

    if let Some((0, _, path, _, body)) = &whole {
        assert!(body.len() <= MAX_BODY);
        if is_api(path) {
            let bearer = format!("Bearer {TOKEN}");
            assert!(
                token.is_some(),
                "an /api/ request completed with the API disabled"
            );
            assert!(
                input.windows(bearer.len()).any(|w| w == bearer.as_bytes()),
                "an /api/ request completed without the token"
            );
        } else {
            assert!(body.is_empty(), "a body outside /api/");
        }
    }
});
