//! A fresh PostgreSQL database per test, on the machine's server (`E2E_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`), dropped at the end.

use sqlx::{Connection, PgConnection, Row};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The server's admin URL for the suite.
pub fn admin_url() -> String {
    std::env::var("E2E_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database created for one test.
#[derive(Debug)]
pub struct PgDatabase {
    name: String,
    host_port: String,
}

impl PgDatabase {
    /// Creates an empty database with a unique name. Panics when the server is unreachable.
    pub async fn create() -> PgDatabase {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "e2e_{}_{}_{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let admin = admin_url();
        let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!("PostgreSQL at {admin} (E2E_POSTGRES_URL) is needed by this test: {e}")
        });
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create database");
        let host_port = admin
            .split('@')
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or("127.0.0.1:5432")
            .to_string();
        PgDatabase { name, host_port }
    }

    /// The server's `host:port`.
    pub fn host_port(&self) -> &str {
        &self.host_port
    }

    /// The URL of this database, through `host_port` (the server, or a proxy before it).
    pub fn url_via(&self, host_port: &str) -> String {
        let admin = admin_url();
        let user = admin
            .strip_prefix("postgres://")
            .and_then(|r| r.split('@').next())
            .unwrap_or("postgres");
        format!("postgres://{user}@{host_port}/{}", self.name)
    }

    /// The URL of this database.
    pub fn url(&self) -> String {
        self.url_via(&self.host_port.clone())
    }

    /// Runs a query returning one integer (such as a `COUNT(*)`).
    pub async fn scalar(&self, sql: &str) -> i64 {
        let mut conn = PgConnection::connect(&self.url()).await.expect("connect");
        let row = sqlx::query(sql)
            .fetch_one(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        row.try_get::<i64, _>(0).expect("an integer")
    }
}

/// One archived message: channel, epoch, offset and the payload (JSON, as the tests publish).
pub type ArchivedRow = (String, String, u64, serde_json::Value);

impl PgDatabase {
    /// Every archived message, ordered by channel, epoch and offset. Panics on a payload that
    /// is not JSON.
    pub async fn messages(&self) -> Vec<ArchivedRow> {
        let mut conn = PgConnection::connect(&self.url()).await.expect("connect");
        sqlx::query(
            "SELECT channel, epoch, seq, data FROM gw_messages ORDER BY channel, epoch, seq",
        )
        .fetch_all(&mut conn)
        .await
        .expect("read gw_messages")
        .into_iter()
        .map(|row| {
            let offset = row.get::<i64, _>(2);
            let data = row.get::<Vec<u8>, _>(3);
            let data = serde_json::from_slice(&data)
                .unwrap_or_else(|e| panic!("archived payload at offset {offset}: {e}"));
            (row.get(0), row.get(1), offset as u64, data)
        })
        .collect()
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside a test's runtime: do the async work on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin_url()).await {
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::raw_sql(&drop).execute(&mut conn).await;
                }
            });
        })
        .join();
    }
}
