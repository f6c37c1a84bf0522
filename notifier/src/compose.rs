//! Turns a batch of notices into an email: subject, plain text and HTML. Sans-IO: the worker
//! looks up the group, the messages and the senders' names first and hands them in.
//!
//! Everything a user typed is escaped in the HTML part and shortened past
//! [`MAX_QUOTE_CHARS`] characters. Operators may replace the built-in wording with templates
//! (`subject.txt`, `body.txt`, `body.html` in `notifier.templates_dir`) using the placeholders
//! listed in [`Templates`].

use crate::Error;
use corecast_storage::Millis;
use std::path::Path;

/// Longest quoted message text, in characters; longer texts end with an ellipsis.
pub const MAX_QUOTE_CHARS: usize = 300;

/// One message as the email quotes it.
#[derive(Debug, Clone)]
pub struct Quote {
    pub sender: String,
    pub text: String,
    pub attachments: usize,
    pub timestamp: Millis,
}

/// What the email is about.
#[derive(Debug, Clone)]
pub struct Digest<'a> {
    pub recipient: Option<&'a str>,
    /// The group's name.
    pub group: &'a str,
    /// The group's id, exactly as clients name it (for links in templates: `{{group_id}}`).
    pub group_id: &'a str,
    pub quotes: &'a [Quote],
    pub app_url: Option<&'a str>,
}

/// The composed content; addresses and headers are added by the mailer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Optional replacements for the built-in wording, loaded once at start. Placeholders:
/// `{{recipient}}`, `{{group}}` (the name), `{{group_id}}`, `{{senders}}`, `{{count}}`,
/// `{{messages}}` (the quoted list, as text in `subject.txt`/`body.txt` and as HTML in
/// `body.html`), `{{app_url}}`. In `body.html` every value is HTML-escaped. (`{{group_id}}` is
/// the id as it is; a template that puts it in a URL must expect spaces and unicode in it.)
#[derive(Debug, Clone, Default)]
pub struct Templates {
    pub subject: Option<String>,
    pub text: Option<String>,
    pub html: Option<String>,
}

impl Templates {
    /// Reads whichever of `subject.txt`, `body.txt`, `body.html` exist in `dir`.
    pub fn load(dir: &Path) -> Result<Templates, Error> {
        if !dir.is_dir() {
            return Err(Error::Templates(format!(
                "notifier.templates_dir (CORECAST_NOTIFY_TEMPLATES) {} is not a folder",
                dir.display()
            )));
        }
        let read = |name: &str| -> Result<Option<String>, Error> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(s) => Ok(Some(s)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::Templates(format!(
                    "cannot read {}: {e}",
                    path.display()
                ))),
            }
        };
        Ok(Templates {
            subject: read("subject.txt")?,
            text: read("body.txt")?,
            html: read("body.html")?,
        })
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Shortens `s` to at most `max` characters, ending with an ellipsis when cut.
pub fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.truncate(out.trim_end().len());
    out.push('…');
    out
}

/// "Alice", "Alice and Bob", "Alice, Bob and Carol", "Alice, Bob and 3 others": distinct
/// senders in order of their first message.
pub fn senders_phrase(quotes: &[Quote]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for q in quotes {
        if !names.contains(&q.sender.as_str()) {
            names.push(&q.sender);
        }
    }
    match names.as_slice() {
        [] => String::new(),
        [a] => a.to_string(),
        [a, b] => format!("{a} and {b}"),
        [a, b, c] => format!("{a}, {b} and {c}"),
        [a, b, rest @ ..] => format!("{a}, {b} and {} others", rest.len()),
    }
}

/// `YYYY-MM-DD HH:MM UTC` for a Unix time in milliseconds.
pub fn format_utc(ms: Millis) -> String {
    let (y, m, d, h, mi, _, _) = corecast_storage::utc_fields(ms);
    format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02} UTC")
}

fn quote_text(q: &Quote) -> String {
    let mut text = shorten(q.text.trim(), MAX_QUOTE_CHARS);
    if q.attachments > 0 {
        let what = if q.attachments == 1 {
            "1 attachment".to_string()
        } else {
            format!("{} attachments", q.attachments)
        };
        if text.is_empty() {
            text = format!("[{what}]");
        } else {
            text = format!("{text} [{what}]");
        }
    }
    text
}

fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    out
}

/// Composes the email for one batch.
pub fn compose(d: &Digest<'_>, templates: &Templates) -> Content {
    let count = d.quotes.len();
    let senders = senders_phrase(d.quotes);
    let subject = if count == 1 {
        format!("New message in \"{}\" from {senders}", d.group)
    } else {
        format!("{count} new messages in \"{}\" from {senders}", d.group)
    };

    let mut text_list = String::new();
    for q in d.quotes {
        text_list.push_str(&format!("{} ({}):\n", q.sender, format_utc(q.timestamp)));
        for line in quote_text(q).lines() {
            text_list.push_str("> ");
            text_list.push_str(line);
            text_list.push('\n');
        }
        text_list.push('\n');
    }
    let mut html_list = String::from("<ul style=\"list-style:none;padding:0\">\n");
    for q in d.quotes {
        let quoted = html_escape(&quote_text(q)).replace('\n', "<br>");
        html_list.push_str(&format!(
            "<li style=\"margin:0 0 12px 0\"><strong>{}</strong> <small>{}</small>\
             <blockquote style=\"margin:4px 0 0 0;padding-left:8px;border-left:3px solid #ccc\">{}</blockquote></li>\n",
            html_escape(&q.sender),
            format_utc(q.timestamp),
            quoted
        ));
    }
    html_list.push_str("</ul>\n");

    let count_s = count.to_string();
    let recipient = d.recipient.unwrap_or("");
    let app_url = d.app_url.unwrap_or("");
    let vars_text: [(&str, &str); 7] = [
        ("recipient", recipient),
        ("group", d.group),
        ("group_id", d.group_id),
        ("senders", &senders),
        ("count", &count_s),
        ("messages", &text_list),
        ("app_url", app_url),
    ];
    let subject = match &templates.subject {
        Some(t) => fill(t.trim(), &vars_text).replace(['\r', '\n'], " "),
        None => subject,
    };
    let text = match &templates.text {
        Some(t) => fill(t, &vars_text),
        None => {
            let hello = d
                .recipient
                .map_or("Hello,".to_string(), |r| format!("Hello {r},"));
            let mut t = format!(
                "{hello}\n\nWhile you were away, {senders} wrote in \"{}\":\n\n{text_list}",
                d.group
            );
            if let Some(url) = d.app_url {
                t.push_str(&format!("Open the conversation: {url}\n"));
            }
            t.push_str(
                "\nYou get this email because you were offline when these messages arrived.\n",
            );
            t
        }
    };
    let esc = |s: &str| html_escape(s);
    let (e_recipient, e_group, e_group_id, e_senders, e_url) = (
        esc(recipient),
        esc(d.group),
        esc(d.group_id),
        esc(&senders),
        esc(app_url),
    );
    let html = match &templates.html {
        Some(t) => fill(
            t,
            &[
                ("recipient", &e_recipient),
                ("group", &e_group),
                ("group_id", &e_group_id),
                ("senders", &e_senders),
                ("count", &count_s),
                ("messages", &html_list),
                ("app_url", &e_url),
            ],
        ),
        None => {
            let hello = if recipient.is_empty() {
                "Hello,".to_string()
            } else {
                format!("Hello {e_recipient},")
            };
            let link = if app_url.is_empty() {
                String::new()
            } else {
                format!("<p><a href=\"{e_url}\">Open the conversation</a></p>\n")
            };
            format!(
                "<!DOCTYPE html>\n<html><body style=\"font-family:sans-serif\">\n<p>{hello}</p>\n\
                 <p>While you were away, {e_senders} wrote in <strong>&quot;{e_group}&quot;</strong>:</p>\n\
                 {html_list}{link}<p style=\"color:#888\"><small>You get this email because you were \
                 offline when these messages arrived.</small></p>\n</body></html>\n"
            )
        }
    };
    Content {
        subject,
        text,
        html,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(sender: &str, text: &str) -> Quote {
        Quote {
            sender: sender.into(),
            text: text.into(),
            attachments: 0,
            timestamp: 1_735_787_045_000,
        }
    }

    #[test]
    fn subject_names_the_group_the_count_and_the_senders() {
        let quotes = [q("Alice", "hi"), q("Bob", "yo"), q("Alice", "again")];
        let d = Digest {
            recipient: Some("Carol"),
            group: "Team",
            group_id: "team-1",
            quotes: &quotes,
            app_url: None,
        };
        let c = compose(&d, &Templates::default());
        assert_eq!(c.subject, "3 new messages in \"Team\" from Alice and Bob");
        let one = compose(
            &Digest {
                quotes: &quotes[..1],
                ..d
            },
            &Templates::default(),
        );
        assert_eq!(one.subject, "New message in \"Team\" from Alice");
        assert!(
            c.text.contains("> hi\n") && c.text.contains("> again\n"),
            "{}",
            c.text
        );
        assert!(c.text.contains("2025-01-02 03:04 UTC"), "{}", c.text);
    }

    #[test]
    fn html_escapes_what_users_typed_and_long_texts_are_shortened() {
        let long = "x".repeat(1000);
        let quotes = [
            q("<b>Eve</b>", "<script>alert('x')</script> & co"),
            q("Al", &long),
        ];
        let d = Digest {
            recipient: None,
            group: "a<b",
            group_id: "a<b",
            quotes: &quotes,
            app_url: Some("https://chat/?a=1&b=2"),
        };
        let c = compose(&d, &Templates::default());
        assert!(!c.html.contains("<script>") && !c.html.contains("<b>Eve"));
        assert!(c
            .html
            .contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; co"));
        assert!(c.html.contains("a&lt;b") && c.html.contains("a=1&amp;b=2"));
        assert!(c
            .text
            .contains(&format!("> {}…", "x".repeat(MAX_QUOTE_CHARS - 1))));
        assert!(!c.text.contains(&"x".repeat(MAX_QUOTE_CHARS)));
    }

    #[test]
    fn senders_and_shortening_edge_cases() {
        let quotes: Vec<Quote> = ["A", "B", "C", "D", "E"].iter().map(|s| q(s, "")).collect();
        assert_eq!(senders_phrase(&quotes[..3]), "A, B and C");
        assert_eq!(senders_phrase(&quotes), "A, B and 3 others");
        assert_eq!(shorten("héllo", 5), "héllo");
        assert_eq!(shorten("héllo wörld", 7), "héllo…");
        assert_eq!(format_utc(0), "1970-01-01 00:00 UTC");
    }

    #[test]
    fn templates_fill_placeholders_and_escape_in_html() {
        let t = Templates {
            subject: Some("[{{group}}] {{count}} from {{senders}}\n".into()),
            text: Some("{{messages}}-- {{group_id}}".into()),
            html: Some("<h1>{{group}}</h1><a href=\"/g/{{group_id}}\">{{messages}}".into()),
        };
        let quotes = [q("A", "hi")];
        let c = compose(
            &Digest {
                recipient: None,
                group: "x&y",
                group_id: "team berlin & co",
                quotes: &quotes,
                app_url: None,
            },
            &t,
        );
        assert_eq!(c.subject, "[x&y] 1 from A");
        assert!(
            c.text.ends_with("> hi\n\n-- team berlin & co"),
            "{}",
            c.text
        );
        assert!(c
            .html
            .starts_with("<h1>x&amp;y</h1><a href=\"/g/team berlin &amp; co\"><ul"));
    }
}
