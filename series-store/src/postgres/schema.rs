//! The schema and its migrations, run under an advisory lock so that hubs connecting at once
//! neither race nor fail.

use deadpool_postgres::Pool;

use super::{PgError, PgOptions};

/// The advisory lock key of schema changes ("series_store" in ASCII, truncated).
pub(super) const SCHEMA_LOCK: i64 = 0x7365_7269_6573_5f73;
/// The advisory lock key of creating chunk partitions.
pub(super) const PARTITION_LOCK: i64 = 0x7365_7269_6573_5f70;

/// The migrations, in order; `schema_version` holds how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: tables, the partitioned chunks under pg_partman.
    r#"
CREATE TABLE series_store.meta (
    key text PRIMARY KEY,
    value bigint NOT NULL
);
CREATE SEQUENCE series_store.instances;
CREATE SEQUENCE series_store.write_seq;
CREATE TABLE series_store.series (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device text NOT NULL,
    quantity smallint NOT NULL,
    UNIQUE (device, quantity)
);
CREATE TABLE series_store.head (
    series_id integer NOT NULL,
    ts_ms bigint NOT NULL,
    value double precision NOT NULL,
    quality smallint NOT NULL,
    wseq bigint NOT NULL
);
CREATE INDEX head_series_ts ON series_store.head (series_id, ts_ms);
CREATE TABLE series_store.chunks (
    series_id integer NOT NULL,
    window_start timestamptz NOT NULL,
    min_ts bigint NOT NULL,
    points integer NOT NULL,
    rec bytea NOT NULL,
    PRIMARY KEY (series_id, window_start)
) PARTITION BY RANGE (window_start);
CREATE TABLE series_store.agent_streams (
    agent text NOT NULL,
    stream bigint NOT NULL,
    state bytea NOT NULL,
    last_used bigint NOT NULL,
    PRIMARY KEY (agent, stream)
);
CREATE TABLE series_store.recent_origins (
    agent text NOT NULL,
    stream bigint NOT NULL,
    seq bigint NOT NULL,
    writer bigint NOT NULL,
    PRIMARY KEY (agent, stream, seq)
);
CREATE SCHEMA IF NOT EXISTS partman;
CREATE EXTENSION IF NOT EXISTS pg_partman SCHEMA partman;
SELECT partman.create_parent(
    p_parent_table => 'series_store.chunks',
    p_control => 'window_start',
    p_type => 'native',
    p_interval => 'daily',
    p_premake => 4
);
"#,
];

/// Creates or upgrades the schema; returns the chunk window in force (ms) and this
/// instance's number.
pub(super) async fn setup(pool: &Pool, opts: &PgOptions) -> Result<(i64, i64), PgError> {
    let window_ms = i64::try_from(opts.chunk_window.as_millis())
        .ok()
        .filter(|w| *w > 0 && 86_400_000 % w == 0)
        .ok_or_else(|| {
            PgError::Config(format!(
                "chunk_window {:?} must be a positive whole number of ms dividing a day",
                opts.chunk_window
            ))
        })?;
    let mut client = pool.get().await?;
    // A session lock, released below or when the connection dies.
    client
        .execute("SELECT pg_advisory_lock($1)", &[&SCHEMA_LOCK])
        .await?;
    let r = migrate(&mut client, window_ms, opts).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&SCHEMA_LOCK])
        .await;
    let r = r?;
    unlocked?;
    Ok(r)
}

async fn migrate(
    client: &mut deadpool_postgres::Client,
    window_ms: i64,
    opts: &PgOptions,
) -> Result<(i64, i64), PgError> {
    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS series_store;
             CREATE TABLE IF NOT EXISTS series_store.schema_version (version integer NOT NULL);",
        )
        .await?;
    let tx = client.transaction().await?;
    let row = tx
        .query_opt("SELECT version FROM series_store.schema_version", &[])
        .await?;
    let found: i32 = match row {
        Some(r) => r.try_get(0)?,
        None => {
            tx.execute("INSERT INTO series_store.schema_version VALUES (0)", &[])
                .await?;
            0
        }
    };
    let known = MIGRATIONS.len() as i32;
    if found > known {
        return Err(PgError::SchemaTooNew { found, known });
    }
    for m in &MIGRATIONS[found as usize..] {
        tx.batch_execute(m).await?;
    }
    if found < known {
        tx.execute(
            "UPDATE series_store.schema_version SET version = $1",
            &[&known],
        )
        .await?;
    }
    tx.execute(
        "INSERT INTO series_store.meta VALUES ('chunk_window_ms', $1) ON CONFLICT DO NOTHING",
        &[&window_ms],
    )
    .await?;
    let window_ms: i64 = tx
        .query_one(
            "SELECT value FROM series_store.meta WHERE key = 'chunk_window_ms'",
            &[],
        )
        .await?
        .try_get(0)?;
    let retention = opts
        .retention
        .map(|r| format!("{} milliseconds", r.as_millis()));
    tx.execute(
        "UPDATE partman.part_config SET retention = $1, retention_keep_table = false,
             retention_keep_index = false, infinite_time_partitions = true
         WHERE parent_table = 'series_store.chunks'",
        &[&retention],
    )
    .await?;
    let instance: i64 = tx
        .query_one("SELECT nextval('series_store.instances')", &[])
        .await?
        .try_get(0)?;
    tx.commit().await?;
    Ok((window_ms, instance))
}
