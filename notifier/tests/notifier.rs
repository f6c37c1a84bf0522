//! End-to-end tests of the notifier against a real SMTP server on loopback
//! (`scripts/smtp_server.py`, built on aiosmtpd): the store is filled through the storage API as
//! the gateway would fill it, the notifier runs (in-process, or as the binary when it is killed),
//! and the tests read the mail that arrived.
//!
//! Each test starts its own SMTP server, so fault modes do not leak between tests. The Python
//! interpreter and the script can be set with CORECAST_TEST_PYTHON and
//! CORECAST_TEST_SMTP_SERVER (as `scripts/test.sh` does); without aiosmtpd the tests fail and
//! say how to install it.

use corecast_config::Config;
use corecast_storage::{
    Attachment, Backend, Group, GroupId, MessageId, NewMessage, StoreHandle, User, UserId,
};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Polls `check` until it returns `Some`, or panics after `timeout` naming `what`.
fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn now_ms() -> i64 {
    corecast_notifier::now_ms()
}

// ------------------------------------------------------------------------------------------
// The SMTP server

struct SmtpServer {
    child: Child,
    port: u16,
    maildir: PathBuf,
    _dir: tempfile::TempDir,
}

const HOW_TO: &str = "the notifier tests need the project's SMTP test server: \
     `pip install aiosmtpd` (or run scripts/test.sh, which installs it in a venv and sets \
     CORECAST_TEST_PYTHON), and scripts/smtp_server.py in the repository \
     (override with CORECAST_TEST_SMTP_SERVER)";

#[derive(Debug, Clone)]
struct Mail {
    rcpt: Vec<String>,
    subject: String,
    text: String,
    html: String,
    message_id: String,
    raw: String,
}

impl SmtpServer {
    fn start() -> SmtpServer {
        Self::start_on(0)
    }

    fn start_on(port: u16) -> SmtpServer {
        let script = std::env::var_os("CORECAST_TEST_SMTP_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/smtp_server.py")
            });
        assert!(script.is_file(), "{} not found; {HOW_TO}", script.display());
        let python = std::env::var("CORECAST_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let dir = tempfile::tempdir().expect("temp dir");
        let maildir = dir.path().join("mail");
        let mut child = Command::new(&python)
            .arg(&script)
            .args(["--port", &port.to_string(), "--maildir"])
            .arg(&maildir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {python}: {e}; {HOW_TO}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first);
            for _ in lines {}
        });
        let line = rx.recv_timeout(TIMEOUT);
        let port = match line {
            Ok(Some(Ok(l))) if l.starts_with("SMTP READY ") => l["SMTP READY ".len()..]
                .trim()
                .parse::<u16>()
                .expect("SMTP READY <port>"),
            other => {
                let _ = child.kill();
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("the SMTP test server did not start ({other:?}): {err}\n{HOW_TO}");
            }
        };
        // Drain stderr so the server never blocks on a full pipe.
        if let Some(mut e) = child.stderr.take() {
            std::thread::spawn(move || {
                let mut sink = Vec::new();
                let _ = e.read_to_end(&mut sink);
            });
        }
        SmtpServer {
            child,
            port,
            maildir,
            _dir: dir,
        }
    }

    /// Switches the fault mode (`ok`, `tempfail`, `permfail`) atomically.
    fn set_mode(&self, mode: &str) {
        let tmp = self.maildir.join(".mode.tmp");
        std::fs::write(&tmp, mode).expect("write mode");
        std::fs::rename(&tmp, self.maildir.join(".mode")).expect("rename mode");
    }

    fn count(&self) -> usize {
        std::fs::read_dir(&self.maildir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Every mail received so far, in arrival order.
    fn mails(&self) -> Vec<Mail> {
        let mut ns: Vec<u64> = std::fs::read_dir(&self.maildir)
            .expect("maildir")
            .filter_map(Result::ok)
            .filter_map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .strip_suffix(".json")?
                    .parse()
                    .ok()
            })
            .collect();
        ns.sort();
        ns.into_iter()
            .map(|n| {
                let meta: serde_json::Value = serde_json::from_slice(
                    &std::fs::read(self.maildir.join(format!("{n}.json"))).expect("sidecar"),
                )
                .expect("sidecar json");
                let raw = std::fs::read(self.maildir.join(format!("{n}.eml"))).expect("eml");
                let m = mail_parser::MessageParser::default()
                    .parse(&raw)
                    .expect("parsable email");
                Mail {
                    rcpt: meta["rcpt_tos"]
                        .as_array()
                        .expect("rcpt_tos")
                        .iter()
                        .map(|v| v.as_str().unwrap_or_default().to_string())
                        .collect(),
                    subject: m.subject().unwrap_or_default().to_string(),
                    text: m.body_text(0).unwrap_or_default().to_string(),
                    html: m.body_html(0).unwrap_or_default().to_string(),
                    message_id: m.message_id().unwrap_or_default().to_string(),
                    raw: String::from_utf8_lossy(&raw).into_owned(),
                }
            })
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------------------------------
// The store, filled as the gateway fills it

struct Chat {
    store: StoreHandle,
    data_dir: PathBuf,
    next_id: u64,
    _dir: tempfile::TempDir,
}

impl Chat {
    fn new() -> Chat {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("data");
        let store = corecast_storage::open(&Backend::embedded(data_dir.clone()))
            .expect("open embedded store");
        Chat {
            store,
            data_dir,
            next_id: 1,
            _dir: dir,
        }
    }

    fn user(&self, id: u64, name: &str, email: Option<&str>) -> UserId {
        self.store
            .blocking()
            .put_user(User {
                id: UserId(id),
                email: email.map(Into::into),
                name: Some(name.into()),
            })
            .expect("put_user");
        UserId(id)
    }

    fn group(&self, id: &str, name: &str, members: &[UserId]) -> GroupId {
        self.store
            .blocking()
            .put_group(Group {
                id: GroupId::new(id),
                name: name.into(),
                members: members.to_vec(),
            })
            .expect("put_group");
        GroupId::new(id)
    }

    /// Stores a message sent at `at` with notices for `notify`, as the gateway does.
    fn message(&mut self, group: &GroupId, sender: UserId, text: &str, at: i64, notify: &[UserId]) {
        let id = MessageId::new(at, 1, (self.next_id % 16_000) as u16);
        self.next_id += 1;
        self.store
            .blocking()
            .append_message(
                NewMessage {
                    id,
                    group: group.clone(),
                    sender,
                    text: text.into(),
                    attachments: Vec::<Attachment>::new(),
                    timestamp: at,
                    client_msg_id: None,
                },
                notify.to_vec(),
            )
            .expect("append_message");
    }

    fn pending(&self) -> usize {
        self.store
            .blocking()
            .pending_notices(100_000)
            .expect("pending_notices")
            .len()
    }

    fn config(&self, smtp_port: u16, coalesce_secs: u64) -> Config {
        let mut c = Config::default();
        c.store.data_dir = self.data_dir.clone();
        c.notifier.smtp_host = "127.0.0.1".into();
        c.notifier.smtp_port = smtp_port;
        c.notifier.smtp_from = "corecast <notify@corecast.test>".into();
        c.notifier.coalesce_secs = coalesce_secs;
        c.notifier.retry_initial_ms = 100;
        c.notifier.retry_max_ms = 400;
        c.notifier.listen = "127.0.0.1:0".parse().expect("addr");
        c.notifier.app_url = Some("https://chat.example/?from=mail&x=1".into());
        c
    }
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let status = out[9..12].parse().expect("status");
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing in:\n{body}"))
}

// ------------------------------------------------------------------------------------------

#[test]
fn a_burst_becomes_one_email_naming_group_and_sender_with_escaped_shortened_quotes() {
    let smtp = SmtpServer::start();
    let mut chat = Chat::new();
    let alice = chat.user(1, "Alice", Some("alice@example.com"));
    let bob = chat.user(2, "Bob", Some("bob@example.com"));
    let carol = chat.user(3, "Carol", None); // no address: skipped and counted
    let dave = chat.user(4, "Dave", Some("dave@example.com")); // comes online: no email
    let erin = chat.user(5, "Erin", Some("erin@example.com")); // visited and left again: no email
                                                               // A group id with a space and unicode: the Message-ID carries it percent-encoded.
    let team = chat.group("team 10 ☕", "Team <dev>", &[alice, bob, carol, dave, erin]);
    let t0 = now_ms();
    let long = format!("start {} end", "y".repeat(600));
    let offline = [bob, carol, dave, erin];
    chat.message(&team, alice, "hello <b>bold</b> & 'quoted'", t0, &offline);
    chat.message(&team, alice, "<script>alert(1)</script>", t0 + 10, &offline);
    chat.message(&team, alice, &long, t0 + 20, &offline);
    let s = chat.store.blocking();
    s.set_presence(dave, true, t0 + 30).expect("presence");
    s.set_presence(erin, true, t0 + 30).expect("presence");
    s.set_presence(erin, false, t0 + 40).expect("presence");

    let running = corecast_notifier::start(&chat.config(smtp.port, 2)).expect("start notifier");
    wait_for("the outbox to drain", TIMEOUT, || {
        (chat.pending() == 0).then_some(())
    });
    let arrived = now_ms();
    let mails = wait_for("bob's email", TIMEOUT, || {
        let m = smtp.mails();
        (!m.is_empty()).then_some(m)
    });

    assert!(
        arrived - t0 >= 2_000,
        "sent before the 2 s coalescing window closed"
    );
    assert_eq!(
        mails.len(),
        1,
        "one email for the whole burst, only to Bob: {mails:#?}"
    );
    let mail = &mails[0];
    assert_eq!(mail.rcpt, vec!["bob@example.com".to_string()]);
    assert_eq!(mail.subject, "3 new messages in \"Team <dev>\" from Alice");
    assert!(
        mail.raw.contains("From: corecast <notify@corecast.test>"),
        "{}",
        mail.raw
    );
    assert!(
        mail.message_id
            .starts_with("notice-2-team%2010%20%E2%98%95-"),
        "{}",
        mail.message_id
    );
    // Plain text quotes every message as typed, the long one shortened.
    assert!(
        mail.text.contains("> hello <b>bold</b> & 'quoted'"),
        "{}",
        mail.text
    );
    assert!(
        mail.text.contains("> <script>alert(1)</script>"),
        "{}",
        mail.text
    );
    assert!(
        mail.text.contains("start yyy") && mail.text.contains("…") && !mail.text.contains(" end")
    );
    // HTML escapes everything a user typed.
    assert!(
        mail.html
            .contains("hello &lt;b&gt;bold&lt;/b&gt; &amp; &#39;quoted&#39;"),
        "{}",
        mail.html
    );
    assert!(
        mail.html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        mail.html
    );
    assert!(!mail.html.contains("<script>") && mail.html.contains("Team &lt;dev&gt;"));
    assert!(
        mail.html
            .contains("href=\"https://chat.example/?from=mail&amp;x=1\""),
        "{}",
        mail.html
    );

    let m = running.metrics();
    assert_eq!(m.sent.load(Relaxed), 1);
    assert_eq!(m.notices_sent.load(Relaxed), 3);
    assert_eq!(m.skipped_no_email.load(Relaxed), 3);
    assert_eq!(m.skipped_online.load(Relaxed), 6);

    let (status, body) = http_get(running.internal_addr(), "/metrics");
    assert_eq!(status, 200);
    assert_eq!(metric(&body, "corecast_notifier_sent_total"), 1.0);
    assert_eq!(metric(&body, "corecast_notifier_notices_sent_total"), 3.0);
    assert_eq!(
        metric(&body, "corecast_notifier_skipped_no_email_total"),
        3.0
    );
    assert_eq!(metric(&body, "corecast_notifier_skipped_online_total"), 6.0);
    assert_eq!(metric(&body, "corecast_notifier_failed_total"), 0.0);
    assert_eq!(metric(&body, "corecast_notifier_retries_total"), 0.0);
    metric(&body, "corecast_notifier_pending");
    metric(&body, "corecast_notifier_oldest_pending_age_seconds");
    assert_eq!(http_get(running.internal_addr(), "/healthz").0, 200);
    running.stop();
}

#[test]
fn messages_after_the_window_go_in_the_next_email_and_senders_are_listed() {
    let smtp = SmtpServer::start();
    let mut chat = Chat::new();
    let alice = chat.user(1, "Alice", Some("alice@example.com"));
    let bob = chat.user(2, "Bob", Some("bob@example.com"));
    let carol = chat.user(3, "Carol", Some("carol@example.com"));
    let g = chat.group("7", "Ops", &[alice, bob, carol]);
    // Written while the notifier was down: two within one 2 s window, one later.
    let t0 = now_ms() - 60_000;
    chat.message(&g, alice, "first", t0, &[carol]);
    chat.message(&g, bob, "second", t0 + 1_500, &[carol]);
    chat.message(&g, alice, "third", t0 + 10_000, &[carol]);
    let running = corecast_notifier::start(&chat.config(smtp.port, 2)).expect("start notifier");
    let mails = wait_for("two emails", TIMEOUT, || {
        let m = smtp.mails();
        (m.len() >= 2 && chat.pending() == 0).then_some(m)
    });
    assert_eq!(mails.len(), 2, "{mails:#?}");
    assert_eq!(
        mails[0].subject,
        "2 new messages in \"Ops\" from Alice and Bob"
    );
    assert!(mails[0].text.contains("> first") && mails[0].text.contains("> second"));
    assert_eq!(mails[1].subject, "New message in \"Ops\" from Alice");
    assert!(mails[1].text.contains("> third") && !mails[1].text.contains("> first"));
    assert_ne!(mails[0].message_id, mails[1].message_id);
    running.stop();
}

#[test]
fn temporary_failures_are_retried_with_backoff_until_the_server_accepts() {
    let smtp = SmtpServer::start();
    smtp.set_mode("tempfail");
    let mut chat = Chat::new();
    let alice = chat.user(1, "Alice", Some("alice@example.com"));
    let bob = chat.user(2, "Bob", Some("bob@example.com"));
    let g = chat.group("1", "G", &[alice, bob]);
    chat.message(&g, alice, "are you there?", now_ms() - 5_000, &[bob]);
    let running = corecast_notifier::start(&chat.config(smtp.port, 1)).expect("start notifier");
    wait_for("two retries", TIMEOUT, || {
        (running.metrics().retries.load(Relaxed) >= 2).then_some(())
    });
    assert_eq!(smtp.count(), 0);
    assert_eq!(
        chat.pending(),
        1,
        "the notice stays in the store while the server answers 4xx"
    );
    smtp.set_mode("ok");
    wait_for("delivery after the server recovered", TIMEOUT, || {
        (smtp.count() == 1 && chat.pending() == 0).then_some(())
    });
    assert_eq!(smtp.mails()[0].rcpt, vec!["bob@example.com".to_string()]);
    assert_eq!(running.metrics().failed.load(Relaxed), 0);
    running.stop();
}

#[test]
fn an_unreachable_server_keeps_the_notices_until_it_comes_up() {
    // A port with nobody listening: connection refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut chat = Chat::new();
    let alice = chat.user(1, "Alice", Some("alice@example.com"));
    let bob = chat.user(2, "Bob", Some("bob@example.com"));
    let g = chat.group("1", "G", &[alice, bob]);
    chat.message(&g, alice, "ping", now_ms() - 5_000, &[bob]);
    let running = corecast_notifier::start(&chat.config(port, 1)).expect("start notifier");
    wait_for("two retries", TIMEOUT, || {
        (running.metrics().retries.load(Relaxed) >= 2).then_some(())
    });
    assert_eq!(chat.pending(), 1);
    let smtp = SmtpServer::start_on(port);
    wait_for("delivery once the server is up", TIMEOUT, || {
        (smtp.count() == 1 && chat.pending() == 0).then_some(())
    });
    running.stop();
}

#[test]
fn permanent_failures_are_recorded_with_the_reason_and_not_retried() {
    let smtp = SmtpServer::start();
    smtp.set_mode("permfail");
    let mut chat = Chat::new();
    let alice = chat.user(1, "Alice", Some("alice@example.com"));
    let bob = chat.user(2, "Bob", Some("bob@example.com"));
    let g = chat.group("1", "G", &[alice, bob]);
    chat.message(&g, alice, "one", now_ms() - 5_000, &[bob]);
    chat.message(&g, alice, "two", now_ms() - 4_900, &[bob]);
    let running = corecast_notifier::start(&chat.config(smtp.port, 1)).expect("start notifier");
    wait_for("the notices to be recorded as failed", TIMEOUT, || {
        (chat.store.blocking().failed_notice_count().expect("count") == 2).then_some(())
    });
    assert_eq!(chat.pending(), 0);
    assert_eq!(running.metrics().failed.load(Relaxed), 2);
    assert_eq!(running.metrics().retries.load(Relaxed), 0);
    wait_for("the failed count in /metrics", TIMEOUT, || {
        let (_, body) = http_get(running.internal_addr(), "/metrics");
        (metric(&body, "corecast_notifier_failed_total") == 2.0
            && metric(&body, "corecast_notifier_failed_stored") == 2.0)
            .then_some(())
    });
    assert_eq!(smtp.count(), 0);
    running.stop();
}

// ------------------------------------------------------------------------------------------
// Crash safety, with the real binary

struct NotifierProcess {
    child: Child,
}

impl NotifierProcess {
    fn spawn(chat: &Chat, smtp_port: u16) -> NotifierProcess {
        let bin = std::env::var("CORECAST_NOTIFIER_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_corecast-notifier").into());
        let mut child = Command::new(&bin)
            .env("CORECAST_DATA_DIR", &chat.data_dir)
            .env("CORECAST_SMTP_HOST", "127.0.0.1")
            .env("CORECAST_SMTP_PORT", smtp_port.to_string())
            .env("CORECAST_SMTP_FROM", "notify@corecast.test")
            .env("CORECAST_NOTIFY_COALESCE_SECS", "1")
            .env("CORECAST_NOTIFIER_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {bin}: {e} (build it with cargo build -p corecast-notifier)")
            });
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(TIMEOUT)
            .expect("the notifier prints its ready line");
        assert!(
            line.starts_with("corecast-notifier ready internal=127.0.0.1:"),
            "{line}"
        );
        NotifierProcess { child }
    }

    fn kill9(mut self) {
        // SAFETY: sends SIGKILL to our own child, which has not been waited for yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
        let status = self.child.wait().expect("wait");
        assert!(!status.success());
    }
}

impl Drop for NotifierProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_notifier_killed_mid_batch_and_restarted_still_sends_every_pending_notice() {
    let smtp = SmtpServer::start();
    let mut chat = Chat::new();
    const N: u64 = 400;
    let alice = chat.user(1, "Alice", Some("alice@example.com"));
    let members: Vec<UserId> = (0..N)
        .map(|i| {
            chat.user(
                100 + i,
                &format!("Member {i}"),
                Some(&format!("m{i}@example.com")),
            )
        })
        .collect();
    let mut all = members.clone();
    all.push(alice);
    let g = chat.group("1", "Everyone", &all);
    chat.message(
        &g,
        alice,
        "all hands in five minutes",
        now_ms() - 5_000,
        &members,
    );

    let first = NotifierProcess::spawn(&chat, smtp.port);
    wait_for("the first emails", TIMEOUT, || {
        (smtp.count() >= 1).then_some(())
    });
    first.kill9();
    let left = chat.pending();
    assert!(
        left > 0,
        "the notifier finished all {N} emails before it could be killed; raise N"
    );
    let sent_before = smtp.count();
    eprintln!("killed after {sent_before} emails with {left} notices left");

    let second = NotifierProcess::spawn(&chat, smtp.port);
    wait_for(
        "the outbox to drain after the restart",
        Duration::from_secs(120),
        || (chat.pending() == 0).then_some(()),
    );
    drop(second);

    let mut per_rcpt: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in smtp.mails() {
        for r in &m.rcpt {
            per_rcpt
                .entry(r.clone())
                .or_default()
                .insert(m.message_id.clone());
        }
    }
    for i in 0..N {
        let ids = per_rcpt.get(&format!("m{i}@example.com"));
        let ids = ids.unwrap_or_else(|| {
            panic!("member {i} got no email (killed after {sent_before}, {left} left)")
        });
        // A resend after the crash carries the same Message-ID: recognisably the same email.
        assert_eq!(
            ids.len(),
            1,
            "member {i} got different emails for one notice: {ids:?}"
        );
    }
    assert!(!per_rcpt.contains_key("alice@example.com"));
}
