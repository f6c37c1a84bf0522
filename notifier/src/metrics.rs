//! The notifier's counters and gauges, shared between the worker (which writes them) and the
//! internal HTTP listener (which renders them as Prometheus text). Plain atomics: one writer,
//! readers that only need a recent value.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct Metrics {
    /// Notices waiting in the store at the last poll (capped at the poll's read limit).
    pub pending: AtomicU64,
    /// Age of the oldest pending notice at the last poll, in milliseconds.
    pub oldest_pending_age_ms: AtomicU64,
    /// Emails the SMTP server accepted.
    pub sent: AtomicU64,
    /// Notices delivered by those emails.
    pub notices_sent: AtomicU64,
    /// Temporary failures (unreachable server, 4xx) that were scheduled for retry.
    pub retries: AtomicU64,
    /// Notices moved to the failed set (5xx, unusable address, unknown user).
    pub failed: AtomicU64,
    /// Notices dropped because the member has no email address.
    pub skipped_no_email: AtomicU64,
    /// Notices dropped because the member came online and could read the messages.
    pub skipped_online: AtomicU64,
    /// Notices dropped because the group, the message or the membership no longer exists.
    pub skipped_gone: AtomicU64,
    /// Notices in the store's failed set (all time, all notifiers), at the last poll.
    pub failed_stored: AtomicU64,
    /// Store requests that failed.
    pub store_errors: AtomicU64,
    /// When the last poll of the store succeeded, Unix milliseconds (0: never).
    pub last_poll_ok_ms: AtomicI64,
}

impl Metrics {
    /// Prometheus text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        };
        let g = |a: &AtomicU64| a.load(Relaxed).to_string();
        metric(
            "corecast_notifier_pending",
            "gauge",
            "Notices waiting in the store (queued).",
            g(&self.pending),
        );
        metric(
            "corecast_notifier_oldest_pending_age_seconds",
            "gauge",
            "Age of the oldest pending notice.",
            format!(
                "{:.3}",
                self.oldest_pending_age_ms.load(Relaxed) as f64 / 1000.0
            ),
        );
        metric(
            "corecast_notifier_sent_total",
            "counter",
            "Emails accepted by the SMTP server.",
            g(&self.sent),
        );
        metric(
            "corecast_notifier_notices_sent_total",
            "counter",
            "Notices delivered by accepted emails.",
            g(&self.notices_sent),
        );
        metric(
            "corecast_notifier_retries_total",
            "counter",
            "Sends that failed temporarily and were scheduled for retry.",
            g(&self.retries),
        );
        metric(
            "corecast_notifier_failed_total",
            "counter",
            "Notices recorded as failed (permanent SMTP error, unusable address).",
            g(&self.failed),
        );
        metric(
            "corecast_notifier_skipped_no_email_total",
            "counter",
            "Notices dropped because the member has no email address.",
            g(&self.skipped_no_email),
        );
        metric(
            "corecast_notifier_skipped_online_total",
            "counter",
            "Notices dropped because the member came online before the email left.",
            g(&self.skipped_online),
        );
        metric(
            "corecast_notifier_skipped_gone_total",
            "counter",
            "Notices dropped because the group, message or membership no longer exists.",
            g(&self.skipped_gone),
        );
        metric(
            "corecast_notifier_failed_stored",
            "gauge",
            "Notices in the store's failed set (kept for operators).",
            g(&self.failed_stored),
        );
        metric(
            "corecast_notifier_store_errors_total",
            "counter",
            "Store requests that failed.",
            g(&self.store_errors),
        );
        out
    }
}
