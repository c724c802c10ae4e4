//! The message archive: every accepted publication, stored asynchronously in a database, never
//! on the publish path.
//!
//! A broker hands each publication to an [`ArchiveQueue`] after accepting it; the
//! [`Archiver`] task takes them off in batches and writes them with retries, backoff and a
//! circuit breaker, so that a database outage costs a delay in archiving and nothing else.
//! The archive is read where recent history ends: `history` pages past it, recovery falls back
//! on it, and a channel's offset and epoch are restored from it after a restart.

mod queue;
mod sql;

pub(crate) use queue::store_with_retry;
pub use queue::{ArchiveMark, ArchivePermit, ArchiveQueue, ArchiveStats, Archiver, ArchiverConfig};
pub use sql::SqlArchive;

use crate::Publication;
use std::sync::Arc;

/// Why an archive call failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The database cannot be reached or failed the statement; retrying later makes sense.
    #[error("archive database unavailable: {0}")]
    Unavailable(String),
    /// The archive's URL or schema is not usable.
    #[error("archive misconfigured: {0}")]
    Config(String),
}

/// A channel's newest position known to the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedPosition {
    /// The epoch of the newest archived message.
    pub epoch: Arc<str>,
    /// Its offset.
    pub offset: u64,
}

/// A range of one channel's archived messages, within one epoch.
#[derive(Debug, Clone, Copy)]
pub struct ArchiveRange<'a> {
    /// Channel.
    pub channel: &'a str,
    /// Epoch.
    pub epoch: &'a str,
    /// Exclusive lower bound.
    pub after: u64,
    /// Exclusive upper bound.
    pub before: u64,
    /// At most this many messages.
    pub limit: usize,
    /// Take the newest `limit` of the range (else the oldest); returned oldest first either way.
    pub newest: bool,
}

/// Durable storage of publications.
///
/// Contract:
/// - `store` is idempotent: a publication is identified by (channel, epoch, offset), and
///   storing it again changes nothing (a batch retried after a timeout, two archivers racing
///   on a reclaimed batch).
/// - `store` commits a whole batch or nothing.
/// - `position` returns the channel's newest stored (epoch, offset): the epoch of the most
///   recently accepted message, and the highest offset stored in it.
/// - `read` returns stored messages of one epoch in offset order; it may have holes where
///   messages were never stored (retention, an opted-out namespace): callers check contiguity.
#[async_trait::async_trait]
pub trait Archive: Send + Sync {
    /// Stores a batch of publications (any channels), all or nothing.
    async fn store(&self, batch: &[Arc<Publication>]) -> Result<(), ArchiveError>;
    /// The channel's newest archived position, if anything was archived.
    async fn position(&self, channel: &str) -> Result<Option<ArchivedPosition>, ArchiveError>;
    /// Archived messages in a range, oldest first.
    async fn read(&self, range: ArchiveRange<'_>) -> Result<Vec<Arc<Publication>>, ArchiveError>;
    /// Deletes messages accepted before `cutoff_ms` (Unix milliseconds); returns how many.
    async fn expire(&self, cutoff_ms: u64) -> Result<u64, ArchiveError>;
}

/// Completes a page of recent history from the archive where recent history does not reach
/// back (trimmed, expired, or lost in a restart), for `query` on `channel`.
///
/// With `since`, the archive part is used only when it continues without a hole from
/// `since + 1` up to the recent part (or fills the limit): a recovery judged from the page is
/// then exact. Without `since`, older messages fill the page up to `limit` (newest first, holes
/// allowed: that is paging back, not recovery).
pub async fn complete_page(
    archive: &dyn Archive,
    channel: &str,
    query: crate::HistoryQuery,
    mut page: crate::HistoryPage,
) -> Result<crate::HistoryPage, ArchiveError> {
    if query.limit == 0 {
        return Ok(page);
    }
    let recent_front = page
        .publications
        .first()
        .map_or(page.offset.saturating_add(1), |p| p.offset);
    let upper = recent_front.min(query.before.unwrap_or(u64::MAX));
    match query.since {
        Some(since) => {
            if since.saturating_add(1) >= upper {
                return Ok(page);
            }
            let older = archive
                .read(ArchiveRange {
                    channel,
                    epoch: &page.epoch,
                    after: since,
                    before: upper,
                    limit: query.limit,
                    newest: false,
                })
                .await?;
            let contiguous = older
                .iter()
                .enumerate()
                .all(|(i, p)| Some(p.offset) == since.checked_add(1 + i as u64));
            let Some(last) = older.last() else {
                return Ok(page);
            };
            let reaches = last.offset.checked_add(1) == Some(upper);
            if !contiguous || (!reaches && older.len() < query.limit) {
                return Ok(page);
            }
            let mut merged = older;
            if reaches {
                merged.append(&mut page.publications);
            }
            merged.truncate(query.limit);
            page.publications = merged;
        }
        None => {
            let have = page.publications.len();
            if have >= query.limit || upper <= 1 {
                return Ok(page);
            }
            let mut merged = archive
                .read(ArchiveRange {
                    channel,
                    epoch: &page.epoch,
                    after: 0,
                    before: upper,
                    limit: query.limit - have,
                    newest: true,
                })
                .await?;
            merged.append(&mut page.publications);
            page.publications = merged;
        }
    }
    Ok(page)
}

/// [`complete_page`], waiting up to `wait` while the page does not reach back to `since`
/// and `pending()` says publications are still on their way to the archive. Where several
/// archivers share the work (clustered mode), one may commit later offsets of a channel
/// before another commits earlier ones; for that moment the earlier ones are in neither
/// recent history nor the archive. A real hole (retention, an opted-out namespace) answers
/// as soon as nothing is pending.
pub async fn complete_page_waiting(
    archive: &dyn Archive,
    channel: &str,
    query: crate::HistoryQuery,
    page: crate::HistoryPage,
    pending: impl Fn() -> bool,
    wait: std::time::Duration,
) -> Result<crate::HistoryPage, ArchiveError> {
    // The common case, nothing on its way: one read, no copy of the page kept for a retry.
    if query.since.is_none() || !pending() {
        return complete_page(archive, channel, query, page).await;
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let completed = complete_page(archive, channel, query, page.clone()).await?;
        let done = query.since.is_none_or(|since| completed.covers(since));
        if done || !pending() || tokio::time::Instant::now() >= deadline {
            return Ok(completed);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
