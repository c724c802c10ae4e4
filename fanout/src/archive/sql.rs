//! The archive in SQL: SQLite (embedded mode: one file, no server) or PostgreSQL (clustered
//! mode: shared by every node), through sqlx (one async API and pool for both, no compile-time
//! query checking needed).
//!
//! Schema (versioned migrations, applied at start under a lock):
//! - `gw_messages (channel, epoch, seq, author, ts, enc, data)`, primary key
//!   (channel, epoch, seq): every write ignores a row already there (`INSERT OR IGNORE` in
//!   SQLite, `ON CONFLICT DO NOTHING` in PostgreSQL);
//! - `gw_channels (channel, epoch, top, ts)`: each channel's newest archived position, kept
//!   after retention deletes its messages, so that offsets continue after a restart.

use super::{Archive, ArchiveError, ArchiveRange, ArchivedPosition};
use crate::{Payload, Publication};
use bytes::Bytes;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Rows per multi-row insert (7 parameters each, well inside every driver's limit).
const ROWS_PER_INSERT: usize = 500;
/// How long a statement may wait for a pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Schema versions, in order; each runs once, in one transaction.
const SQLITE_MIGRATIONS: &[&str] = &["
    CREATE TABLE gw_messages (
        channel TEXT NOT NULL, epoch TEXT NOT NULL, seq INTEGER NOT NULL,
        author TEXT NOT NULL, ts INTEGER NOT NULL, enc INTEGER NOT NULL, data BLOB NOT NULL,
        PRIMARY KEY (channel, epoch, seq)) WITHOUT ROWID;
    CREATE INDEX gw_messages_ts ON gw_messages (ts);
    CREATE TABLE gw_channels (
        channel TEXT PRIMARY KEY, epoch TEXT NOT NULL, top INTEGER NOT NULL,
        ts INTEGER NOT NULL);
"];

const POSTGRES_MIGRATIONS: &[&str] = &["
    CREATE TABLE gw_messages (
        channel TEXT NOT NULL, epoch TEXT NOT NULL, seq BIGINT NOT NULL,
        author TEXT NOT NULL, ts BIGINT NOT NULL, enc INTEGER NOT NULL, data BYTEA NOT NULL,
        PRIMARY KEY (channel, epoch, seq));
    CREATE INDEX gw_messages_ts ON gw_messages (ts);
    CREATE TABLE gw_channels (
        channel TEXT PRIMARY KEY, epoch TEXT NOT NULL, top BIGINT NOT NULL,
        ts BIGINT NOT NULL);
"];

enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the concrete pool and `$db` to its database type: the
/// archive's pool, or with `writer`, the pool its writes go through.
macro_rules! with_pool {
    (writer $self:expr, $pool:ident, $db:ident => $body:expr) => {
        with_pool!(@ &$self.writer, $pool, $db => $body)
    };
    (@ $which:expr, $pool:ident, $db:ident => $body:expr) => {
        match $which {
            Pool::Sqlite($pool) => {
                #[allow(dead_code)]
                type $db = sqlx::Sqlite;
                $body
            }
            Pool::Postgres($pool) => {
                #[allow(dead_code)]
                type $db = sqlx::Postgres;
                $body
            }
        }
    };
    ($self:expr, $pool:ident, $db:ident => $body:expr) => {
        with_pool!(@ &$self.pool, $pool, $db => $body)
    };
}

fn unavailable(e: sqlx::Error) -> ArchiveError {
    ArchiveError::Unavailable(e.to_string())
}

/// An [`Archive`] in SQLite or PostgreSQL.
pub struct SqlArchive {
    pool: Pool,
    /// Where writes go: for SQLite, one connection of its own (see `connect`); for
    /// PostgreSQL, the same pool.
    writer: Pool,
}

impl SqlArchive {
    /// Opens `url` (`sqlite://PATH`, the file created if missing, or `postgres://...`) and
    /// brings its schema up to date.
    pub async fn connect(url: &str) -> Result<Self, ArchiveError> {
        let (pool, writer) = if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(ArchiveError::Config("sqlite:// needs a file path".into()));
            }
            if let Some(dir) = std::path::Path::new(path).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|e| {
                    ArchiveError::Config(format!("creating {}: {e}", dir.display()))
                })?;
            }
            let options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
                .map_err(|e| ArchiveError::Config(e.to_string()))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // In WAL mode, NORMAL syncs at checkpoints rather than at every commit: a
                // commit survives the process being killed (the WAL is in the page cache), and
                // only an OS crash or power loss can take back the last commits. The archive
                // is asynchronous anyway; an fsync ten times a second was a sixth of its cost.
                .synchronous(SqliteSynchronous::Normal)
                // A page cache of 8 MiB per connection (SQLite's default is 2 MiB), and a
                // checkpoint every 8,192 pages of WAL (32 MiB) instead of every 1,000: a hot
                // page (a busy channel's newest leaf) is read back and copied into the
                // database less often. Under perf at 24,000 archived messages a second, the
                // SQLite thread's reads, writes and checkpoints were half its time; with these
                // the archive cost 5 % less CPU per delivery (BENCHMARKS.md). The WAL file keeps
                // up to about 32 MiB on disk between checkpoints.
                .pragma("cache_size", "-8192")
                .pragma("wal_autocheckpoint", "8192")
                .busy_timeout(Duration::from_secs(5));
            // One writer at a time is what SQLite does anyway, and it gets a connection of its
            // own: a connection drops its whole page cache when it finds that another one has
            // written since its last transaction, so batches spread over a pool read every page
            // they touch back from the file. Readers get their own connections.
            let writer = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options.clone())
                .await
                .map_err(unavailable)?;
            let pool = SqlitePoolOptions::new()
                .max_connections(3)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options)
                .await
                .map_err(unavailable)?;
            (Pool::Sqlite(pool), Pool::Sqlite(writer))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect(url)
                .await
                .map_err(unavailable)?;
            (Pool::Postgres(pool.clone()), Pool::Postgres(pool))
        } else {
            return Err(ArchiveError::Config(format!(
                "unsupported database URL {:?}: use sqlite://PATH or postgres://...",
                url.split("://").next().unwrap_or(url)
            )));
        };
        let archive = SqlArchive { pool, writer };
        archive.migrate().await?;
        Ok(archive)
    }

    async fn migrate(&self) -> Result<(), ArchiveError> {
        let migrations = match &self.pool {
            Pool::Sqlite(_) => SQLITE_MIGRATIONS,
            Pool::Postgres(_) => POSTGRES_MIGRATIONS,
        };
        with_pool!(self, pool, Db => {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            if matches!(self.pool, Pool::Postgres(_)) {
                // Nodes starting together migrate one at a time.
                sqlx::query("SELECT pg_advisory_xact_lock(7243019)")
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            }
            sqlx::raw_sql("CREATE TABLE IF NOT EXISTS gw_schema (version BIGINT NOT NULL)")
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            let version: i64 =
                sqlx::query("SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM gw_schema")
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(unavailable)?
                    .try_get(0)
                    .map_err(unavailable)?;
            for (i, sql) in migrations.iter().enumerate().skip(version.max(0) as usize) {
                sqlx::raw_sql(sql)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                let mut record = QueryBuilder::<Db>::new("INSERT INTO gw_schema (version) VALUES (");
                record.push_bind(i as i64 + 1).push(")");
                record.build().execute(&mut *tx).await.map_err(unavailable)?;
            }
            tx.commit().await.map_err(unavailable)
        })
    }
}

/// Each channel's newest position in a batch: the last epoch it was published in (by
/// acceptance time), and the highest offset in that epoch.
fn positions(batch: &[Arc<Publication>]) -> Vec<(&str, &str, u64, u64)> {
    let mut tops: HashMap<&str, (&str, u64, u64)> = HashMap::new();
    for p in batch {
        let entry = tops.entry(&p.channel).or_insert((&p.epoch, p.offset, p.ts));
        if entry.0 == &*p.epoch {
            entry.1 = entry.1.max(p.offset);
            entry.2 = entry.2.max(p.ts);
        } else if p.ts >= entry.2 {
            *entry = (&p.epoch, p.offset, p.ts);
        }
    }
    tops.into_iter()
        .map(|(channel, (epoch, top, ts))| (channel, epoch, top, ts))
        .collect()
}

/// The position upsert: a newer offset in the same epoch, or another epoch accepted later.
const UPSERT_POSITION: &str = " ON CONFLICT (channel) DO UPDATE SET epoch = excluded.epoch, \
    top = excluded.top, ts = excluded.ts WHERE (gw_channels.epoch = excluded.epoch AND \
    excluded.top > gw_channels.top) OR (gw_channels.epoch <> excluded.epoch AND \
    excluded.ts >= gw_channels.ts)";

/// The statements, unbounded in time: [`Archive`] bounds each call.
impl SqlArchive {
    async fn store_unbounded(&self, batch: &[Arc<Publication>]) -> Result<(), ArchiveError> {
        if batch.is_empty() {
            return Ok(());
        }
        with_pool!(writer self, pool, Db => {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            // SQLite: `OR IGNORE` rather than the upsert form. With `ON CONFLICT DO NOTHING`
            // a NOT NULL failure could still abort the statement halfway, so SQLite keeps a
            // statement journal of every page a multi-row insert touches; with `OR IGNORE`
            // nothing can abort it, and that journal (a sixth of the archive's cost under
            // perf) is not written. No value bound here is ever NULL.
            let (verb, tail) = match self.pool {
                Pool::Sqlite(_) => ("INSERT OR IGNORE", ""),
                Pool::Postgres(_) => ("INSERT", " ON CONFLICT DO NOTHING"),
            };
            for chunk in batch.chunks(ROWS_PER_INSERT) {
                let mut insert = QueryBuilder::<Db>::new(verb);
                insert.push(" INTO gw_messages (channel, epoch, seq, author, ts, enc, data) ");
                // Bound by reference: the batch outlives the statement.
                insert.push_values(chunk, |mut row, p| {
                    row.push_bind(&*p.channel)
                        .push_bind(&*p.epoch)
                        .push_bind(p.offset as i64)
                        .push_bind(&*p.from)
                        .push_bind(p.ts as i64)
                        .push_bind(i32::from(p.data.tag()))
                        .push_bind(&p.data.bytes()[..]);
                });
                insert.push(tail);
                insert.build().execute(&mut *tx).await.map_err(unavailable)?;
            }
            // Every channel's position in one statement per 500 channels, not one per channel:
            // each statement is a round trip to sqlx's SQLite thread (or to PostgreSQL), and
            // under perf those handoffs, not SQLite, were most of the archive's cost. A channel
            // appears once (`positions`), as a multi-row upsert requires.
            let positions = positions(batch);
            for chunk in positions.chunks(ROWS_PER_INSERT) {
                let mut upsert =
                    QueryBuilder::<Db>::new("INSERT INTO gw_channels (channel, epoch, top, ts) ");
                upsert.push_values(chunk, |mut row, (c, e, o, t)| {
                    row.push_bind(*c)
                        .push_bind(*e)
                        .push_bind(*o as i64)
                        .push_bind(*t as i64);
                });
                upsert.push(UPSERT_POSITION);
                upsert.build().execute(&mut *tx).await.map_err(unavailable)?;
            }
            tx.commit().await.map_err(unavailable)
        })
    }

    async fn position_unbounded(
        &self,
        channel: &str,
    ) -> Result<Option<ArchivedPosition>, ArchiveError> {
        with_pool!(self, pool, Db => {
            let mut query = QueryBuilder::<Db>::new("SELECT epoch, top FROM gw_channels WHERE channel = ");
            query.push_bind(channel.to_string());
            let row = query.build().fetch_optional(pool).await.map_err(unavailable)?;
            match row {
                None => Ok(None),
                Some(row) => {
                    let epoch: String = row.try_get(0).map_err(unavailable)?;
                    let top: i64 = row.try_get(1).map_err(unavailable)?;
                    Ok(Some(ArchivedPosition { epoch: epoch.into(), offset: top.max(0) as u64 }))
                }
            }
        })
    }

    async fn read_unbounded(
        &self,
        range: ArchiveRange<'_>,
    ) -> Result<Vec<Arc<Publication>>, ArchiveError> {
        if range.limit == 0 || range.before <= range.after.saturating_add(1) {
            return Ok(Vec::new());
        }
        let channel: Arc<str> = range.channel.into();
        let epoch: Arc<str> = range.epoch.into();
        let before = range.before.min(i64::MAX as u64) as i64;
        let after = range.after.min(i64::MAX as u64) as i64;
        let limit = range.limit.min(100_000) as i64;
        let rows = with_pool!(self, pool, Db => {
            let mut query = QueryBuilder::<Db>::new(
                "SELECT seq, author, ts, enc, data FROM gw_messages WHERE channel = ",
            );
            query
                .push_bind(range.channel.to_string())
                .push(" AND epoch = ")
                .push_bind(range.epoch.to_string())
                .push(" AND seq > ")
                .push_bind(after)
                .push(" AND seq < ")
                .push_bind(before)
                .push(if range.newest { " ORDER BY seq DESC" } else { " ORDER BY seq ASC" })
                .push(" LIMIT ")
                .push_bind(limit);
            let rows = query.build().fetch_all(pool).await.map_err(unavailable)?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let seq: i64 = row.try_get(0).map_err(unavailable)?;
                let author: String = row.try_get(1).map_err(unavailable)?;
                let ts: i64 = row.try_get(2).map_err(unavailable)?;
                let enc: i32 = row.try_get(3).map_err(unavailable)?;
                let data: Vec<u8> = row.try_get(4).map_err(unavailable)?;
                out.push((seq, author, ts, enc, data));
            }
            out
        });
        let mut publications = Vec::with_capacity(rows.len());
        for (seq, author, ts, enc, data) in rows {
            let data = Payload::from_tagged(enc as u8, Bytes::from(data))
                .map_err(|e| ArchiveError::Unavailable(format!("stored payload: {e}")))?;
            publications.push(Arc::new(Publication {
                channel: channel.clone(),
                offset: seq as u64,
                epoch: epoch.clone(),
                from: author.into(),
                data,
                ts: ts as u64,
            }));
        }
        if range.newest {
            publications.reverse();
        }
        Ok(publications)
    }

    async fn expire_unbounded(&self, cutoff_ms: u64) -> Result<u64, ArchiveError> {
        with_pool!(writer self, pool, Db => {
            let mut query = QueryBuilder::<Db>::new("DELETE FROM gw_messages WHERE ts < ");
            query.push_bind(cutoff_ms.min(i64::MAX as u64) as i64);
            let done = query.build().execute(pool).await.map_err(unavailable)?;
            Ok(done.rows_affected())
        })
    }
}

/// Longest wait for one archive call. A database behind a black hole (packets dropped, no
/// reset) would otherwise hold a statement for the kernel's retransmission timeout (many
/// minutes) on a connection that looks open; past this the call fails and is retried.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, ArchiveError>>,
) -> Result<T, ArchiveError> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| {
            Err(ArchiveError::Unavailable(format!(
                "no answer from the database within {} s",
                CALL_TIMEOUT.as_secs()
            )))
        })
}

#[async_trait::async_trait]
impl Archive for SqlArchive {
    async fn store(&self, batch: &[Arc<Publication>]) -> Result<(), ArchiveError> {
        bounded(self.store_unbounded(batch)).await
    }

    async fn position(&self, channel: &str) -> Result<Option<ArchivedPosition>, ArchiveError> {
        bounded(self.position_unbounded(channel)).await
    }

    async fn read(&self, range: ArchiveRange<'_>) -> Result<Vec<Arc<Publication>>, ArchiveError> {
        bounded(self.read_unbounded(range)).await
    }

    async fn expire(&self, cutoff_ms: u64) -> Result<u64, ArchiveError> {
        bounded(self.expire_unbounded(cutoff_ms)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HistoryQuery;
    use crate::archive::{complete_page, complete_page_waiting};

    fn publication(channel: &str, epoch: &str, offset: u64, ts: u64) -> Arc<Publication> {
        Arc::new(Publication {
            channel: channel.into(),
            offset,
            epoch: epoch.into(),
            from: "u".into(),
            data: Payload::Json(Bytes::from(format!("{offset}"))),
            ts,
        })
    }

    impl SqlArchive {
        /// Number of stored messages.
        async fn count(&self) -> Result<u64, ArchiveError> {
            with_pool!(self, pool, Db => {
                let row = sqlx::query("SELECT COUNT(*) FROM gw_messages")
                    .fetch_one(pool)
                    .await
                    .map_err(unavailable)?;
                let n: i64 = row.try_get(0).map_err(unavailable)?;
                Ok(n.max(0) as u64)
            })
        }
    }

    async fn temp_archive() -> (SqlArchive, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "fanout-archive-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let url = format!("sqlite://{}/a.db", dir.display());
        (SqlArchive::connect(&url).await.unwrap(), dir)
    }

    #[tokio::test]
    async fn stores_idempotently_and_tracks_the_newest_epoch() {
        let (archive, dir) = temp_archive().await;
        let batch: Vec<_> = (1..=5).map(|o| publication("c", "e1", o, o)).collect();
        archive.store(&batch).await.unwrap();
        // Storing again (a retried batch) changes nothing.
        archive.store(&batch[2..]).await.unwrap();
        assert_eq!(archive.count().await.unwrap(), 5);
        let position = archive.position("c").await.unwrap().unwrap();
        assert_eq!((&*position.epoch, position.offset), ("e1", 5));
        // An older batch never moves the position back; a later epoch replaces it.
        archive
            .store(&[publication("c", "e1", 2, 2)])
            .await
            .unwrap();
        assert_eq!(archive.position("c").await.unwrap().unwrap().offset, 5);
        archive
            .store(&[publication("c", "e2", 1, 100)])
            .await
            .unwrap();
        let position = archive.position("c").await.unwrap().unwrap();
        assert_eq!((&*position.epoch, position.offset), ("e2", 1));
        assert!(archive.position("other").await.unwrap().is_none());
        // Many channels in one batch: each position upserted (one statement for all), an
        // older one kept, a newer one taken.
        let many: Vec<_> = (0..700)
            .map(|n| publication(&format!("m{n}"), "e1", 7, 7))
            .chain([
                publication("c", "e2", 3, 101),
                publication("m0", "e1", 9, 9),
            ])
            .collect();
        archive.store(&many).await.unwrap();
        for (channel, epoch, offset) in [("m0", "e1", 9), ("m699", "e1", 7), ("c", "e2", 3)] {
            let position = archive.position(channel).await.unwrap().unwrap();
            assert_eq!(
                (&*position.epoch, position.offset),
                (epoch, offset),
                "{channel}"
            );
        }
        archive
            .store(&[publication("m5", "e1", 2, 8)])
            .await
            .unwrap();
        assert_eq!(archive.position("m5").await.unwrap().unwrap().offset, 7);
        // Reads are per epoch, oldest first, bounded both ways.
        let range = ArchiveRange {
            channel: "c",
            epoch: "e1",
            after: 1,
            before: 5,
            limit: 2,
            newest: true,
        };
        let read = archive.read(range).await.unwrap();
        assert_eq!(read.iter().map(|p| p.offset).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(read[0].data, Payload::Json(Bytes::from("3")));
        assert_eq!(archive.expire(3).await.unwrap(), 2);
        assert_eq!(archive.count().await.unwrap(), 4 + 703);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn pages_join_the_archive_and_recent_history_without_holes() {
        let (archive, dir) = temp_archive().await;
        let all: Vec<_> = (1..=10).map(|o| publication("c", "e", o, o)).collect();
        archive.store(&all).await.unwrap();
        let recent = crate::HistoryPage {
            publications: all[7..].to_vec(),
            offset: 10,
            epoch: "e".into(),
        };
        let query = HistoryQuery {
            since: Some(2),
            before: None,
            limit: 100,
        };
        let page = complete_page(&archive, "c", query, recent.clone())
            .await
            .unwrap();
        let offsets: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, (3..=10).collect::<Vec<_>>());
        // A hole in the archive (retention, an opted-out message) is not papered over.
        archive.expire(6).await.unwrap();
        let page = complete_page(&archive, "c", query, recent.clone())
            .await
            .unwrap();
        assert_eq!(page.publications.first().map(|p| p.offset), Some(8));
        // Paging back needs no contiguity: what is there, newest first.
        let back = HistoryQuery {
            since: None,
            before: Some(8),
            limit: 3,
        };
        let empty = crate::HistoryPage {
            publications: Vec::new(),
            ..recent
        };
        let page = complete_page(&archive, "c", back, empty).await.unwrap();
        let offsets: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, [6, 7]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_recovery_waits_for_what_another_archiver_is_still_writing() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let (archive, dir) = temp_archive().await;
        let archive = Arc::new(archive);
        let all: Vec<_> = (1..=10).map(|o| publication("c", "e", o, o)).collect();
        // History holds 8..=10; 3..=7 are committed, 1..=2 are still being written.
        archive.store(&all[2..7]).await.unwrap();
        let recent = crate::HistoryPage {
            publications: all[7..].to_vec(),
            offset: 10,
            epoch: "e".into(),
        };
        let query = HistoryQuery {
            since: Some(0),
            before: None,
            limit: 100,
        };
        let offsets = |page: &crate::HistoryPage| -> Vec<u64> {
            page.publications.iter().map(|p| p.offset).collect()
        };
        // Nothing pending: a hole is a hole, answered at once.
        let wait = std::time::Duration::from_secs(30);
        let page =
            complete_page_waiting(archive.as_ref(), "c", query, recent.clone(), || false, wait)
                .await
                .unwrap();
        assert_eq!(offsets(&page), [8, 9, 10]);
        // Pending: the read that found the hole waits for the commit that fills it (the
        // writer commits only once the reader has seen the hole and asked).
        let pending = Arc::new(AtomicBool::new(true));
        let asked = Arc::new(tokio::sync::Notify::new());
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let writer = {
            let (archive, pending, asked) = (archive.clone(), pending.clone(), asked.clone());
            let first = all[..2].to_vec();
            tokio::spawn(async move {
                asked.notified().await;
                archive.store(&first).await.unwrap();
                pending.store(false, Ordering::SeqCst);
            })
        };
        let page = complete_page_waiting(
            archive.as_ref(),
            "c",
            query,
            recent,
            || {
                // Asked first before the read, then after it found the hole.
                if calls.fetch_add(1, Ordering::SeqCst) == 1 {
                    asked.notify_one();
                }
                pending.load(Ordering::SeqCst)
            },
            wait,
        )
        .await
        .unwrap();
        assert_eq!(offsets(&page), (1..=10).collect::<Vec<_>>());
        writer.await.unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
}
