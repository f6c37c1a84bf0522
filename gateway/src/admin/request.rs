//! Reading one admin request, sans-IO: bytes in, what to do out ([`Step`]).
//!
//! The order of the checks is the point of this module. Once the head is complete, and before
//! one byte of body is taken: the bearer token of an `/api/` request (401 or 403), then the
//! declared body size (413, or 413 for any body outside `/api/`, where no endpoint takes one).
//! So a client without the token can make the listener hold at most one request head
//! ([`MAX_HEAD`]), never a body. The deadline for the whole request is the caller's
//! (`listener.rs`), because it needs a clock.

use super::{error, Request, Response};
use memchr::memmem;

/// Largest body of an authenticated `/api/` request.
pub const MAX_BODY: usize = 1 << 20;
/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Headers parsed per request; more is a 431.
const MAX_HEADERS: usize = 64;

/// What to do after the bytes fed so far.
#[derive(Debug)]
pub enum Step {
    /// The request is not complete: read more (until the deadline).
    More,
    /// Answer `100 Continue` (the client sent `Expect: 100-continue` and passed the checks),
    /// then read more. Returned at most once per request.
    Continue,
    /// The whole request is here.
    Complete(Request),
    /// Answer this and close; the rest of the request is not read.
    Refuse(Response),
}

/// What the head said, kept while the body arrives.
#[derive(Debug)]
struct Head {
    method: String,
    path: String,
    query: String,
    /// Offset of the body in `buf`.
    body_start: usize,
    body_len: usize,
}

/// One connection's request being read.
#[derive(Debug, Default)]
pub struct RequestReader {
    buf: Vec<u8>,
    head: Option<Head>,
    /// Where the search for the end of the head resumes: a drip of one byte at a time then
    /// costs one short search per byte, not one parse of the whole head per byte.
    scanned: usize,
    /// Empty lines before the request line, dropped (RFC 9112 §2.2 asks a server to ignore
    /// them); they count against [`MAX_HEAD`]. Without this a blank line would look like the
    /// end of the head, and the outcome would depend on how the bytes were split into reads.
    skipped: usize,
}

/// Whether `path` is under `/api/`, as the router splits it.
pub fn is_api(path: &str) -> bool {
    path.trim_matches('/').split('/').next() == Some("api")
}

/// The admin token check: `Ok` when `given` (the `Authorization` header) is
/// `Bearer <admin_token>`. Constant-time in the token's bytes, because the token is a secret.
pub fn authorize(admin_token: Option<&str>, given: Option<&str>) -> Result<(), Response> {
    let Some(token) = admin_token else {
        return Err(error(
            403,
            "the admin API is disabled: set CORECAST_ADMIN_TOKEN",
        ));
    };
    let expected = format!("Bearer {token}");
    let given = given.unwrap_or("");
    let same = given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(error(
            401,
            "missing or wrong admin token (Authorization: Bearer <token>)",
        ))
    }
}

impl RequestReader {
    pub fn new() -> Self {
        RequestReader::default()
    }

    /// Takes bytes read from the socket. `admin_token` is the configured token (`None`: the
    /// admin API is disabled). After [`Step::Complete`] or [`Step::Refuse`] the reader is
    /// done and must not be fed again.
    pub fn feed(&mut self, data: &[u8], admin_token: Option<&str>) -> Step {
        let mut data = data;
        if self.buf.is_empty() {
            let blank = data
                .iter()
                .position(|b| !matches!(b, b'\r' | b'\n'))
                .unwrap_or(data.len());
            self.skipped += blank;
            data = &data[blank..];
        }
        self.buf.extend_from_slice(data);
        if self.head.is_none() {
            match self.parse_head(admin_token) {
                Ok(Some(step)) => return step,
                Ok(None) => {}
                Err(refusal) => return Step::Refuse(refusal),
            }
        }
        self.body_step()
    }

    /// `Ok(None)` once the head is parsed and accepted; `Ok(Some(More))` while incomplete;
    /// `Ok(Some(Continue))` when the client waits for `100 Continue`.
    fn parse_head(&mut self, admin_token: Option<&str>) -> Result<Option<Step>, Response> {
        // httparse accepts bare LF line ends, so the head ends at "\n\n" or "\n\r\n".
        let held = self.skipped + self.buf.len();
        let end = self
            .buf
            .len()
            .min((MAX_HEAD + 3).saturating_sub(self.skipped));
        let from = self.scanned.saturating_sub(2).min(end);
        let window = &self.buf[from..end];
        let ended =
            memmem::find(window, b"\n\n").is_some() || memmem::find(window, b"\n\r\n").is_some();
        self.scanned = self.buf.len();
        if !ended {
            return if held > MAX_HEAD {
                Err(error(431, "request head too large (limit 16 KiB)"))
            } else {
                Ok(Some(Step::More))
            };
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let body_start = match req.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) if n + self.skipped <= MAX_HEAD => n,
            Ok(httparse::Status::Complete(_)) => {
                return Err(error(431, "request head too large (limit 16 KiB)"))
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(error(431, "too many headers (limit 64)"))
            }
            // Not expected once the request line started and a blank line followed; wait for
            // more rather than guess (the head limit and the deadline still bound it).
            Ok(httparse::Status::Partial) if held <= MAX_HEAD => return Ok(Some(Step::More)),
            Ok(httparse::Status::Partial) => {
                return Err(error(431, "request head too large (limit 16 KiB)"))
            }
            Err(_) => return Err(error(400, "malformed HTTP request")),
        };
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| std::str::from_utf8(h.value).map(str::trim))
        };
        let target = req.path.unwrap_or("/");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let auth = match header("authorization") {
            Some(Ok(v)) => Some(v.to_string()),
            Some(Err(_)) | None => None,
        };
        let api = is_api(path);
        if api {
            authorize(admin_token, auth.as_deref())?;
        }
        if header("transfer-encoding").is_some() {
            return Err(error(
                411,
                "send the body with Content-Length (chunked bodies are not supported)",
            ));
        }
        let mut lengths = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("content-length"));
        let body_len = match (lengths.next(), lengths.next()) {
            (None, _) => 0,
            (Some(h), None) => std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| error(400, "Content-Length must be a number"))?,
            (Some(_), Some(_)) => return Err(error(400, "more than one Content-Length")),
        };
        if !api && body_len > 0 {
            return Err(error(413, "this endpoint takes no body"));
        }
        if body_len > MAX_BODY {
            return Err(error(413, "body too large (limit 1 MiB)"));
        }
        let expect_continue =
            matches!(header("expect"), Some(Ok(v)) if v.eq_ignore_ascii_case("100-continue"));
        self.head = Some(Head {
            method: req.method.unwrap_or("").to_string(),
            path: path.to_string(),
            query: query.to_string(),
            body_start,
            body_len,
        });
        let body_here = self.buf.len() - body_start;
        Ok((expect_continue && body_here < body_len).then_some(Step::Continue))
    }

    fn body_step(&mut self) -> Step {
        let head = self
            .head
            .as_ref()
            .expect("invariant: body_step runs after the head was parsed");
        if self.buf.len() - head.body_start < head.body_len {
            return Step::More;
        }
        let head = self.head.take().expect("invariant: checked above");
        let mut buf = std::mem::take(&mut self.buf);
        buf.truncate(head.body_start + head.body_len);
        let body = buf.split_off(head.body_start);
        Step::Complete(Request {
            method: head.method,
            path: head.path,
            query: head.query,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: Option<&str> = Some("admin-secret");

    fn status(step: &Step) -> u16 {
        match step {
            Step::Refuse(r) => r.status,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn head(method: &str, path: &str, extra: &str) -> Vec<u8> {
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").into_bytes()
    }

    #[test]
    fn a_complete_request_with_its_body_in_pieces() {
        let mut r = RequestReader::new();
        let mut bytes = head(
            "PUT",
            "/api/users/7?x=1",
            "Authorization: Bearer admin-secret\r\nContent-Length: 11\r\n",
        );
        bytes.extend_from_slice(b"{\"name\":1}\n");
        let (a, b) = bytes.split_at(bytes.len() - 5);
        assert!(matches!(r.feed(a, TOKEN), Step::More));
        match r.feed(b, TOKEN) {
            Step::Complete(req) => {
                assert_eq!(
                    (req.method.as_str(), req.path.as_str(), req.query.as_str()),
                    ("PUT", "/api/users/7", "x=1")
                );
                assert_eq!(req.body, b"{\"name\":1}\n");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_wrong_token_is_refused_before_any_body_arrives() {
        for auth in [
            "",
            "Authorization: Bearer wrong\r\n",
            "Authorization: admin-secret\r\n",
        ] {
            let mut r = RequestReader::new();
            let h = head(
                "PUT",
                "/api/groups/1",
                &format!("{auth}Content-Length: 1000000\r\n"),
            );
            assert_eq!(status(&r.feed(&h, TOKEN)), 401, "{auth:?}");
        }
        // With the admin API disabled, 403, also before the body.
        let mut r = RequestReader::new();
        let h = head("PUT", "/api/groups/1", "Content-Length: 1000000\r\n");
        assert_eq!(status(&r.feed(&h, None)), 403);
    }

    #[test]
    fn body_limits() {
        let ok = "Authorization: Bearer admin-secret\r\n";
        let mut r = RequestReader::new();
        let h = head(
            "PUT",
            "/api/x",
            &format!("{ok}Content-Length: {}\r\n", MAX_BODY + 1),
        );
        assert_eq!(status(&r.feed(&h, TOKEN)), 413);
        let mut r = RequestReader::new();
        let h = head(
            "PUT",
            "/api/x",
            &format!("{ok}Content-Length: {MAX_BODY}\r\n"),
        );
        assert!(matches!(r.feed(&h, TOKEN), Step::More));
        // Outside /api/ nothing takes a body, and nobody is authenticated there.
        let mut r = RequestReader::new();
        let h = head("GET", "/metrics", "Content-Length: 5\r\n");
        assert_eq!(status(&r.feed(&h, TOKEN)), 413);
        let mut r = RequestReader::new();
        assert!(matches!(
            r.feed(&head("GET", "/healthz", ""), None),
            Step::Complete(_)
        ));
        for bad in [
            "Content-Length: -1\r\n",
            "Content-Length: 1e3\r\n",
            "Content-Length:\r\n",
            "Content-Length: 1\r\nContent-Length: 1\r\n",
        ] {
            let mut r = RequestReader::new();
            assert_eq!(
                status(&r.feed(&head("PUT", "/api/x", &format!("{ok}{bad}")), TOKEN)),
                400,
                "{bad:?}"
            );
        }
        let mut r = RequestReader::new();
        let h = head(
            "PUT",
            "/api/x",
            &format!("{ok}Transfer-Encoding: chunked\r\n"),
        );
        assert_eq!(status(&r.feed(&h, TOKEN)), 411);
    }

    #[test]
    fn expect_100_continue_is_answered_once_after_the_checks() {
        let ok = "Authorization: Bearer admin-secret\r\n";
        let mut r = RequestReader::new();
        let h = head(
            "PUT",
            "/api/x",
            &format!("{ok}Content-Length: 2\r\nExpect: 100-continue\r\n"),
        );
        assert!(matches!(r.feed(&h, TOKEN), Step::Continue));
        assert!(matches!(r.feed(b"{", TOKEN), Step::More));
        assert!(matches!(r.feed(b"}", TOKEN), Step::Complete(_)));
        // A wrong token gets its 401 instead, so the client never sends the body.
        let mut r = RequestReader::new();
        let h = head(
            "PUT",
            "/api/x",
            "Content-Length: 2\r\nExpect: 100-continue\r\n",
        );
        assert_eq!(status(&r.feed(&h, TOKEN)), 401);
    }

    #[test]
    fn heads_too_large_or_malformed_are_refused() {
        let mut r = RequestReader::new();
        let mut big = b"GET /healthz HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD + 1, b'a');
        assert_eq!(status(&r.feed(&big, TOKEN)), 431);
        let mut r = RequestReader::new();
        assert_eq!(status(&r.feed(b"G\x01T / HTTP/1.1\r\n\r\n", TOKEN)), 400);
        let mut r = RequestReader::new();
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: y\r\n"))
            .collect();
        assert_eq!(status(&r.feed(&head("GET", "/healthz", &many), TOKEN)), 431);
    }

    #[test]
    fn a_byte_at_a_time_reads_the_same_request() {
        let mut bytes = head(
            "PUT",
            "/api/users/1",
            "Authorization: Bearer admin-secret\r\nContent-Length: 3\r\n",
        );
        bytes.extend_from_slice(b"abc");
        let mut r = RequestReader::new();
        let (last, rest) = bytes.split_last().unwrap();
        for b in rest {
            assert!(matches!(r.feed(&[*b], TOKEN), Step::More));
        }
        match r.feed(&[*last], TOKEN) {
            Step::Complete(req) => assert_eq!(req.body, b"abc"),
            other => panic!("{other:?}"),
        }
        // Bare LF line ends too.
        let mut r = RequestReader::new();
        assert!(matches!(
            r.feed(b"GET /healthz HTTP/1.1\nHost: x\n\n", TOKEN),
            Step::Complete(_)
        ));
    }

    /// Found by the `admin_request` fuzz target: blank lines before the request line looked
    /// like the end of the head when they arrived alone, so the outcome (400 or the token's
    /// 403) depended on how the bytes were split into reads.
    #[test]
    fn blank_lines_before_the_request_line_are_skipped_however_they_arrive() {
        let mut bytes = b"\r\n\n\n".to_vec();
        bytes.extend_from_slice(&head("PUT", "/api/groups/1", "Content-Length: 1000\r\n"));
        for piece in [1, 2, 3, 4, 5, bytes.len()] {
            let mut r = RequestReader::new();
            let mut last = Step::More;
            for chunk in bytes.chunks(piece) {
                last = r.feed(chunk, None);
                if !matches!(last, Step::More) {
                    break;
                }
            }
            assert_eq!(status(&last), 403, "reads of {piece} bytes");
        }
        // They count against the head limit.
        let mut r = RequestReader::new();
        assert!(matches!(r.feed(&vec![b'\n'; MAX_HEAD], None), Step::More));
        assert_eq!(status(&r.feed(b"\r\n", None)), 431);
    }

    #[test]
    fn the_token_check_is_exact() {
        assert!(authorize(Some("t"), Some("Bearer t")).is_ok());
        assert_eq!(
            authorize(Some("t"), Some("Bearer tt")).unwrap_err().status,
            401
        );
        assert_eq!(
            authorize(Some("t"), Some("Bearer u")).unwrap_err().status,
            401
        );
        assert_eq!(authorize(Some("t"), None).unwrap_err().status, 401);
        assert_eq!(authorize(None, Some("Bearer t")).unwrap_err().status, 403);
        assert!(is_api("/api/users/1") && is_api("/api") && !is_api("/healthz"));
    }
}
