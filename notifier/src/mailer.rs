//! SMTP delivery with lettre's blocking transport. Runs only on the notifier's worker thread;
//! each send blocks it until the server answers or [`SMTP_TIMEOUT`] passes.
//!
//! Every failure is classified for the worker: a permanent SMTP reply (5xx) or an address that
//! cannot be used is [`Outcome::Permanent`]; everything else (connection refused, timeouts,
//! TLS trouble, 4xx replies) is [`Outcome::Temporary`] and retried, because none of it says the
//! email can never be delivered.

use crate::compose::Content;
use crate::Error;
use corecast_config::{NotifierConfig, SmtpTls};
use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{Message, SmtpTransport, Transport};
use std::time::Duration;

/// Longest wait for one SMTP command's answer.
pub const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// How a send ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server accepted the email for delivery.
    Sent,
    /// Worth retrying later; the reason is for logs. `unreachable` is set when no SMTP
    /// conversation took place (connection refused, timeout, TLS): other emails would fail too.
    Temporary { reason: String, unreachable: bool },
    /// Will never succeed as it is; the reason is recorded with the failed notices.
    Permanent(String),
}

/// One email ready to go.
#[derive(Debug, Clone)]
pub struct Email {
    pub to: String,
    pub to_name: Option<String>,
    pub message_id: String,
    pub content: Content,
}

/// The SMTP client: a configured transport (with a connection pool) and the sender address.
pub struct Mailer {
    transport: SmtpTransport,
    from: Mailbox,
}

impl Mailer {
    /// Builds the transport from `[notifier]`. Does not connect: an unreachable server shows up
    /// as temporary failures of the first sends.
    pub fn new(c: &NotifierConfig) -> Result<Mailer, Error> {
        let from: Mailbox = c.smtp_from.parse().map_err(|e| {
            Error::Config(format!(
                "notifier.smtp_from (CORECAST_SMTP_FROM) {:?} is not an address: {e}",
                c.smtp_from
            ))
        })?;
        let tls_err = |e: lettre::transport::smtp::Error| {
            Error::Config(format!(
                "cannot set up TLS for notifier.smtp_host {:?}: {e}",
                c.smtp_host
            ))
        };
        let builder = match c.smtp_tls {
            SmtpTls::None => SmtpTransport::builder_dangerous(&c.smtp_host),
            SmtpTls::Starttls => SmtpTransport::starttls_relay(&c.smtp_host).map_err(tls_err)?,
            SmtpTls::Tls => SmtpTransport::relay(&c.smtp_host).map_err(tls_err)?,
        };
        let mut builder = builder.port(c.smtp_port).timeout(Some(SMTP_TIMEOUT));
        match (&c.smtp_user, &c.smtp_password) {
            (Some(u), Some(p)) => {
                builder = builder.credentials(Credentials::new(u.clone(), p.clone()))
            }
            (None, None) => {}
            _ => {
                return Err(Error::Config(
                    "set both notifier.smtp_user and notifier.smtp_password (CORECAST_SMTP_USER, \
                     CORECAST_SMTP_PASSWORD), or neither"
                        .into(),
                ))
            }
        }
        Ok(Mailer {
            transport: builder.build(),
            from,
        })
    }

    /// Sends one email (plain text with an HTML alternative) and classifies the result.
    pub fn send(&self, email: &Email) -> Outcome {
        let to = match email.to.parse::<lettre::Address>() {
            Ok(a) => Mailbox::new(email.to_name.clone(), a),
            Err(e) => {
                return Outcome::Permanent(format!("invalid recipient address {:?}: {e}", email.to))
            }
        };
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(email.content.subject.clone())
            .message_id(Some(email.message_id.clone()))
            .multipart(
                MultiPart::alternative()
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_PLAIN)
                            .body(email.content.text.clone()),
                    )
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_HTML)
                            .body(email.content.html.clone()),
                    ),
            );
        let message = match message {
            Ok(m) => m,
            Err(e) => return Outcome::Permanent(format!("cannot build the email: {e}")),
        };
        match self.transport.send(&message) {
            Ok(_) => Outcome::Sent,
            Err(e) if e.is_permanent() => {
                Outcome::Permanent(format!("SMTP server refused the email: {e}"))
            }
            Err(e) => Outcome::Temporary {
                unreachable: !e.is_transient(),
                reason: e.to_string(),
            },
        }
    }
}
