//! The source of truth: an embedded SQLite database (compiled in, no server) in a temporary
//! file shared by both instances, each with its own small connection pool; or, with
//! `--database-url postgres://…`, a PostgreSQL table created for the run and dropped after.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One row of `accounts`, as cached and as served over HTTP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub id: u64,
    pub owner: String,
    pub balance_cents: i64,
    /// Bumped by every write: the load generator checks that no read goes back in time.
    pub version: u64,
}

/// The database file (and its WAL files), removed when dropped.
pub struct DbFile {
    pub path: PathBuf,
}

impl DbFile {
    /// Create a new database in the temp directory with `rows` accounts (ids 1..=rows).
    pub fn create(rows: u64) -> Result<(DbFile, Duration), BoxError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "tiercache-demo-{}-{nanos}.sqlite",
            std::process::id()
        ));
        let file = DbFile { path };
        let started = Instant::now();
        let mut conn = open(&file.path)?;
        conn.execute_batch(
            "CREATE TABLE accounts (
                 id            INTEGER PRIMARY KEY,
                 owner         TEXT    NOT NULL,
                 balance_cents INTEGER NOT NULL,
                 version       INTEGER NOT NULL
             );",
        )?;
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare(
                "INSERT INTO accounts (id, owner, balance_cents, version) VALUES (?1, ?2, ?3, 0)",
            )?;
            for id in 1..=rows {
                let owner = format!("owner-{id:06}");
                insert.execute(params![id as i64, owner, (id as i64 % 10_000) * 100])?;
            }
        }
        tx.commit()?;
        Ok((file, started.elapsed()))
    }
}

impl Drop for DbFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // WAL: readers never wait for the writer; a writer waits (up to 5 s) for another.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// One instance's handle on the database: a few connections used from blocking threads,
/// a simulated network latency per query, and query counters.
pub struct Db {
    backend: Backend,
    latency: Duration,
    /// SELECTs run by reads: by the cache's loader (misses in both tiers), or by every read
    /// with the cache off.
    pub read_selects: AtomicU64,
    /// SELECTs run by writes (read-modify-write reads the truth, not the cache).
    pub write_selects: AtomicU64,
    /// UPDATEs.
    pub updates: AtomicU64,
}

/// What a query is for (only changes which counter it bumps).
#[derive(Debug, Clone, Copy)]
pub enum Purpose {
    Read,
    Write,
}

enum Backend {
    Sqlite {
        path: PathBuf,
        pool: Mutex<Vec<Connection>>,
    },
    Postgres {
        client: tokio_postgres::Client,
        get: tokio_postgres::Statement,
        update: tokio_postgres::Statement,
    },
}

/// A PostgreSQL table made for this run (`--database-url`), dropped by [`PgSource::drop_table`].
pub struct PgSource {
    url: String,
    pub table: String,
}

async fn pg_connect(url: &str) -> Result<tokio_postgres::Client, BoxError> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

impl PgSource {
    /// Create `tiercache_demo_<pid>` with `rows` accounts (ids 1..=rows) in one statement.
    pub async fn create(url: &str, rows: u64) -> Result<(PgSource, Duration), BoxError> {
        let started = Instant::now();
        let client = pg_connect(url).await?;
        let table = format!("tiercache_demo_{}", std::process::id());
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {table};
                 CREATE TABLE {table} (
                     id            BIGINT PRIMARY KEY,
                     owner         TEXT   NOT NULL,
                     balance_cents BIGINT NOT NULL,
                     version       BIGINT NOT NULL
                 );
                 INSERT INTO {table} (id, owner, balance_cents, version)
                 SELECT i, 'owner-' || lpad(i::text, 6, '0'), (i % 10000) * 100, 0
                 FROM generate_series(1, {rows}) AS i;"
            ))
            .await?;
        Ok((
            PgSource {
                url: url.to_owned(),
                table,
            },
            started.elapsed(),
        ))
    }

    /// One instance's handle (its own connection, statements prepared once).
    pub async fn db(&self, latency: Duration) -> Result<Arc<Db>, BoxError> {
        let client = pg_connect(&self.url).await?;
        let t = &self.table;
        let get = client
            .prepare(&format!(
                "SELECT id, owner, balance_cents, version FROM {t} WHERE id = $1"
            ))
            .await?;
        let update = client
            .prepare(&format!(
                "UPDATE {t} SET balance_cents = $1, version = $2 WHERE id = $3 AND version = $4"
            ))
            .await?;
        Ok(Db::with_backend(
            Backend::Postgres {
                client,
                get,
                update,
            },
            latency,
        ))
    }

    /// Drop the run's table.
    pub async fn drop_table(&self) -> Result<(), BoxError> {
        let client = pg_connect(&self.url).await?;
        client
            .batch_execute(&format!("DROP TABLE IF EXISTS {}", self.table))
            .await?;
        Ok(())
    }
}

impl Db {
    pub fn new(file: &DbFile, latency: Duration) -> Arc<Db> {
        Db::with_backend(
            Backend::Sqlite {
                path: file.path.clone(),
                pool: Mutex::new(Vec::new()),
            },
            latency,
        )
    }

    fn with_backend(backend: Backend, latency: Duration) -> Arc<Db> {
        Arc::new(Db {
            backend,
            latency,
            read_selects: AtomicU64::new(0),
            write_selects: AtomicU64::new(0),
            updates: AtomicU64::new(0),
        })
    }

    /// Run `f` on a pooled connection in a blocking thread, after the simulated latency.
    async fn with_conn<T, F>(self: &Arc<Self>, f: F) -> Result<T, BoxError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let db = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let Backend::Sqlite { path, pool } = &db.backend else {
                return Err::<T, BoxError>("not a SQLite database".into());
            };
            let pooled = pool.lock().map(|mut p| p.pop()).unwrap_or(None);
            let conn = match pooled {
                Some(c) => c,
                None => open(path)?,
            };
            let out = f(&conn);
            if let Ok(mut p) = pool.lock() {
                if p.len() < 8 {
                    p.push(conn);
                }
            }
            Ok(out?)
        })
        .await?
    }

    /// The row with this id, if any.
    pub async fn get(self: &Arc<Self>, id: u64, why: Purpose) -> Result<Option<Account>, BoxError> {
        match why {
            Purpose::Read => &self.read_selects,
            Purpose::Write => &self.write_selects,
        }
        .fetch_add(1, Ordering::Relaxed);
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        if let Backend::Postgres { client, get, .. } = &self.backend {
            let row = client.query_opt(get, &[&(id as i64)]).await?;
            return Ok(row.map(|r| Account {
                id: r.get::<_, i64>(0) as u64,
                owner: r.get(1),
                balance_cents: r.get(2),
                version: r.get::<_, i64>(3) as u64,
            }));
        }
        self.with_conn(move |c| {
            c.prepare_cached(
                "SELECT id, owner, balance_cents, version FROM accounts WHERE id = ?1",
            )?
            .query_row([id as i64], |r| {
                Ok(Account {
                    id: r.get::<_, i64>(0)? as u64,
                    owner: r.get(1)?,
                    balance_cents: r.get(2)?,
                    version: r.get::<_, i64>(3)? as u64,
                })
            })
            .optional()
        })
        .await
    }

    /// Store `next` if the row still has version `next.version - 1` (optimistic check: a
    /// concurrent writer that got there first makes this fail instead of being overwritten).
    pub async fn update(self: &Arc<Self>, next: Account) -> Result<(), BoxError> {
        self.updates.fetch_add(1, Ordering::Relaxed);
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        if let Backend::Postgres { client, update, .. } = &self.backend {
            let changed = client
                .execute(
                    update,
                    &[
                        &next.balance_cents,
                        &(next.version as i64),
                        &(next.id as i64),
                        &(next.version.saturating_sub(1) as i64),
                    ],
                )
                .await?;
            return if changed == 1 {
                Ok(())
            } else {
                Err("conflict: the row changed since it was read".into())
            };
        }
        let changed = self
            .with_conn(move |c| {
                c.prepare_cached(
                    "UPDATE accounts SET balance_cents = ?1, version = ?2
                     WHERE id = ?3 AND version = ?4",
                )?
                .execute(params![
                    next.balance_cents,
                    next.version as i64,
                    next.id as i64,
                    next.version.saturating_sub(1) as i64
                ])
            })
            .await?;
        if changed == 1 {
            Ok(())
        } else {
            Err("conflict: the row changed since it was read".into())
        }
    }
}
