//! The notifier's worker thread: polls the store's outbox, forms due batches (see
//! [`crate::plan`]), screens them (online members, missing addresses), sends one email per batch
//! and only then deletes its notices.
//!
//! Ordering contract, the heart of "no notice is lost": a notice leaves the outbox only after
//! the SMTP server accepted its email (deleted), after a permanent failure (moved to the failed
//! set, with the reason), or when no email is wanted (member online, no address, message or
//! group gone). A crash between the SMTP server's acceptance and the delete sends that email
//! again after restart, with the same Message-ID: at least once across crashes, exactly once
//! otherwise. The worker never holds notices anywhere but the store.

use crate::compose::{compose, Digest, Quote, Templates};
use crate::mailer::{Email, Mailer, Outcome};
use crate::metrics::Metrics;
use crate::plan::{self, Batch, BatchKey};
use crate::{now_ms, Shutdown};
use corecast_storage::{Error as StoreError, NoticeId, StoreHandle, User, UserId};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Notices read per poll. A backlog larger than this drains oldest first over several polls.
pub const POLL_LIMIT: usize = 10_000;

/// Settings of the worker, validated from `[notifier]`.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub coalesce: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub poll_interval: Duration,
    pub app_url: Option<String>,
}

struct Retry {
    attempt: u32,
    next_at: Instant,
}

pub struct Worker {
    store: StoreHandle,
    mailer: Mailer,
    templates: Templates,
    config: WorkerConfig,
    metrics: Arc<Metrics>,
    /// Retry state of batches that failed temporarily, by batch.
    retries: HashMap<BatchKey, Retry>,
    /// Notices whose email was accepted but whose delete failed (store trouble): never sent
    /// again by this process, deleted again on every round until the store takes it.
    delivered: HashSet<NoticeId>,
}

#[derive(PartialEq, Eq)]
enum Next {
    Continue,
    EndRound,
}

/// Why a round stopped early.
enum Stop {
    Store(StoreError),
    Shutdown,
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        Stop::Store(e)
    }
}

impl Worker {
    pub fn new(
        store: StoreHandle,
        mailer: Mailer,
        templates: Templates,
        config: WorkerConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Worker {
            store,
            mailer,
            templates,
            config,
            metrics,
            retries: HashMap::new(),
            delivered: HashSet::new(),
        }
    }

    /// Runs rounds until `shutdown` fires. A round in progress finishes its current email.
    pub fn run(mut self, shutdown: Shutdown) {
        tracing::info!(
            coalesce_secs = self.config.coalesce.as_secs(),
            "notifier worker started"
        );
        while !shutdown.is_set() {
            match self.round(&shutdown) {
                Ok(()) | Err(Stop::Shutdown) => {}
                Err(Stop::Store(e)) => {
                    self.metrics.store_errors.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, "notifier: store request failed; trying again next poll");
                }
            }
            shutdown.wait_timeout(self.config.poll_interval);
        }
        tracing::info!("notifier worker stopped");
    }

    fn round(&mut self, shutdown: &Shutdown) -> Result<(), Stop> {
        if !self.delivered.is_empty() {
            let ids: Vec<NoticeId> = self.delivered.iter().copied().collect();
            self.store.blocking().delete_notices(ids)?;
            self.delivered.clear();
        }
        let pending = self.store.blocking().pending_notices(POLL_LIMIT)?;
        let now = now_ms();
        self.metrics.last_poll_ok_ms.store(now, Relaxed);
        self.metrics.pending.store(pending.len() as u64, Relaxed);
        let oldest_age = pending
            .iter()
            .map(|n| now - n.created)
            .max()
            .unwrap_or(0)
            .max(0);
        self.metrics
            .oldest_pending_age_ms
            .store(oldest_age as u64, Relaxed);
        if let Ok(n) = self.store.blocking().failed_notice_count() {
            self.metrics.failed_stored.store(n, Relaxed);
        }

        let truncated = pending.len() == POLL_LIMIT;
        let window_ms = self.config.coalesce.as_millis() as i64;
        let batches = plan::due_batches(&pending, truncated, now, window_ms);
        // Forget retry state of batches that are gone (sent by another notifier, or screened).
        let live: HashSet<BatchKey> = batches.iter().map(Batch::key).collect();
        self.retries.retain(|k, _| live.contains(k));

        for batch in batches {
            if shutdown.is_set() {
                return Err(Stop::Shutdown);
            }
            let key = batch.key();
            if self
                .retries
                .get(&key)
                .is_some_and(|r| Instant::now() < r.next_at)
            {
                continue;
            }
            if self.process(batch)? == Next::EndRound {
                // The SMTP server is unreachable: the other batches would fail the same way.
                return Ok(());
            }
        }
        Ok(())
    }

    fn drop_notices(&self, ids: Vec<NoticeId>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.store.blocking().delete_notices(ids)
    }

    fn process(&mut self, batch: Batch) -> Result<Next, StoreError> {
        self.screen_and_send(batch).map(|unreachable| {
            if unreachable {
                Next::EndRound
            } else {
                Next::Continue
            }
        })
    }

    /// Returns whether the SMTP server was unreachable.
    fn screen_and_send(&mut self, batch: Batch) -> Result<bool, StoreError> {
        let (user, group_id) = (batch.user, batch.group.clone());
        let db = self.store.blocking();
        let Some(recipient) = db.get_user(user)? else {
            let ids = batch.ids();
            self.metrics.failed.fetch_add(ids.len() as u64, Relaxed);
            tracing::warn!(%user, notices = ids.len(), "notifier: notices for an unknown user recorded as failed");
            return db
                .fail_notices(ids, format!("user {user} does not exist"))
                .map(|()| false);
        };
        let Some(address) = recipient.email.clone().filter(|e| !e.trim().is_empty()) else {
            let ids = batch.ids();
            self.metrics
                .skipped_no_email
                .fetch_add(ids.len() as u64, Relaxed);
            tracing::debug!(%user, notices = ids.len(), "notifier: member has no email address; skipped");
            return self.drop_notices(ids).map(|()| false);
        };
        let (seen, unseen) = plan::split_seen(&batch.notices, db.get_presence(user)?);
        if !seen.is_empty() {
            self.metrics
                .skipped_online
                .fetch_add(seen.len() as u64, Relaxed);
            tracing::debug!(%user, notices = seen.len(), "notifier: member came online; no email");
            self.drop_notices(seen.iter().map(|n| n.id).collect())?;
        }
        if unseen.is_empty() {
            return Ok(false);
        }
        let ids: Vec<NoticeId> = unseen.iter().map(|n| n.id).collect();
        let group = match db.get_group(group_id.clone())? {
            Some(g) if g.members.binary_search(&user).is_ok() => g,
            _ => {
                // The group is gone or the member left it: the messages are none of their
                // business any more.
                self.metrics
                    .skipped_gone
                    .fetch_add(ids.len() as u64, Relaxed);
                return self.drop_notices(ids).map(|()| false);
            }
        };
        let mut names: HashMap<UserId, String> = HashMap::new();
        let mut quotes = Vec::with_capacity(unseen.len());
        for n in &unseen {
            let Some(m) = db.get_message(group_id.clone(), n.message)? else {
                self.metrics.skipped_gone.fetch_add(1, Relaxed);
                continue;
            };
            let sender = match names.get(&m.sender) {
                Some(s) => s.clone(),
                None => {
                    let s = display_name(m.sender, db.get_user(m.sender)?.as_ref());
                    names.insert(m.sender, s.clone());
                    s
                }
            };
            quotes.push(Quote {
                sender,
                text: m.text,
                attachments: m.attachments.len(),
                timestamp: m.timestamp,
            });
        }
        if quotes.is_empty() {
            return self.drop_notices(ids).map(|()| false);
        }
        let content = compose(
            &Digest {
                recipient: recipient.name.as_deref(),
                group: &group.name,
                group_id: group_id.as_str(),
                quotes: &quotes,
                app_url: self.config.app_url.as_deref(),
            },
            &self.templates,
        );
        let email = Email {
            to: address,
            to_name: recipient.name.clone(),
            message_id: plan::message_id(user, &group_id, &ids),
            content,
        };
        let key = batch.key();
        match self.mailer.send(&email) {
            Outcome::Sent => {
                self.retries.remove(&key);
                self.metrics.sent.fetch_add(1, Relaxed);
                self.metrics
                    .notices_sent
                    .fetch_add(ids.len() as u64, Relaxed);
                tracing::info!(%user, group = %group_id, notices = ids.len(), message_id = %email.message_id, "notifier: email sent");
                if let Err(e) = self.drop_notices(ids.clone()) {
                    // Remember them so this process never sends them again; deleted next round.
                    self.delivered.extend(ids);
                    return Err(e);
                }
                Ok(false)
            }
            Outcome::Temporary {
                reason,
                unreachable,
            } => {
                let attempt = self.retries.get(&key).map_or(0, |r| r.attempt);
                let delay = plan::backoff(
                    attempt,
                    self.config.retry_initial,
                    self.config.retry_max,
                    fastrand::f64(),
                );
                self.retries.insert(
                    key,
                    Retry {
                        attempt: attempt + 1,
                        next_at: Instant::now() + delay,
                    },
                );
                self.metrics.retries.fetch_add(1, Relaxed);
                tracing::warn!(%user, group = %group_id, attempt = attempt + 1, retry_in_ms = delay.as_millis() as u64, %reason,
                    "notifier: temporary SMTP failure; will retry");
                Ok(unreachable)
            }
            Outcome::Permanent(reason) => {
                self.retries.remove(&key);
                self.metrics.failed.fetch_add(ids.len() as u64, Relaxed);
                tracing::warn!(%user, group = %group_id, notices = ids.len(), %reason, "notifier: permanent failure; notices recorded as failed");
                db.fail_notices(ids, reason).map(|()| false)
            }
        }
    }
}

fn display_name(id: UserId, user: Option<&User>) -> String {
    user.and_then(|u| u.name.clone())
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| format!("User {id}"))
}
