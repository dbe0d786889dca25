//! The PostgreSQL store measured against the embedded one in the same run: bytes per point at
//! rest after compaction on the store benchmark's realistic series, and append throughput with
//! agent-like batches (hundreds of readings across many series, each batch with an origin).
//!
//! `cargo bench -p series-store --features postgres --bench pg_store`; `PG_BENCH_DAYS` (default
//! 7) days of the realistic series, `PG_BENCH_WINDOWS` chunk windows in minutes (default 60), ticks exact and ±5 ms,
//! `PG_BENCH_BATCHES` appended batches per run (default 2000), `PG_BENCH_PARTS` what to run
//! (default `bytes,append`). Starts its own PostgreSQL 15
//! (engines).

use std::sync::Arc;
use std::time::{Duration, Instant};

use engines::postgres::Postgres;
use protocols::Quantity;
use series_store::postgres::{PgOptions, PgStore};
use series_store::{
    Agg, Origin, Point, Query, SeriesId, SeriesStore, StoreOptions, TsStore, WriteBatch,
};

#[path = "common/realistic.rs"]
mod realistic;
use realistic::{DAY, Rng, T0, realistic, round_to};

fn env(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

type Data = Vec<(&'static str, Quantity, Vec<Point>)>;

/// The realistic series in 1000-point batches over all seven series, as `store.rs` writes them.
fn realistic_batches(data: &Data) -> Vec<WriteBatch> {
    let n = data[0].2.len();
    (0..n)
        .step_by(1000)
        .map(|start| WriteBatch {
            origin: None,
            series: data
                .iter()
                .map(|(_, q, pts)| {
                    (
                        SeriesId {
                            device: Arc::from("station-1"),
                            quantity: *q,
                        },
                        pts[start..(start + 1000).min(n)].to_vec(),
                    )
                })
                .collect(),
        })
        .collect()
}

fn pg_options(window_min: i64) -> PgOptions {
    PgOptions {
        retention: None,
        chunk_window: Duration::from_secs(window_min as u64 * 60),
        query_timeout: Duration::from_secs(600),
        append_timeout: Duration::from_secs(60),
        ..PgOptions::default()
    }
}

/// Median latency (ms) of three queries on the second day of the water level: a raw day, a day
/// of one-minute averages, a day of hourly maxima.
fn query_latency<S: SeriesStore>(store: &S) -> [f64; 3] {
    let day = T0 + DAY * 1000;
    let series = SeriesId {
        device: Arc::from("station-1"),
        quantity: Quantity::WaterLevel,
    };
    let qs = [
        (None, Agg::Avg),
        (Some(60_000), Agg::Avg),
        (Some(3_600_000), Agg::Max),
    ];
    qs.map(|(step_ms, agg)| {
        let q = Query {
            series: series.clone(),
            from_ms: day,
            to_ms: day + DAY * 1000,
            step_ms,
            agg,
        };
        let mut times: Vec<f64> = (0..15)
            .map(|_| {
                let t = Instant::now();
                let r = store.query(&q).expect("query");
                assert!(!r.is_empty());
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    })
}

fn ms3(v: [f64; 3]) -> String {
    format!(
        "raw day {:.2} ms, 1-min avg {:.2} ms, 1-h max {:.2} ms",
        v[0], v[1], v[2]
    )
}

async fn pg_bytes_per_point(data: &Data, window_min: i64) {
    let pg = tokio::task::spawn_blocking(Postgres::start)
        .await
        .expect("start task")
        .expect("postgres");
    let store = PgStore::connect(&pg.url(), pg_options(window_min))
        .await
        .expect("connect");
    let points: usize = data.iter().map(|d| d.2.len()).sum();
    let t = Instant::now();
    for b in realistic_batches(data) {
        store.append(b).await.expect("append");
    }
    let appended = t.elapsed();
    let head = store.storage().await.expect("storage");
    let from_head = query_latency(&store);
    let t = Instant::now();
    let rep = store.compact(Duration::ZERO).await.expect("compact");
    let compacted = t.elapsed();
    let s = store.storage().await.expect("storage");
    assert_eq!(s.chunk_points as usize, points);
    let with_data = pg_sizes(&pg.url()).await;
    let from_chunks = query_latency(&store);
    println!(
        "pg window {window_min:4} min queries: from the head {}; from chunks {}",
        ms3(from_head),
        ms3(from_chunks)
    );
    println!(
        "pg window {window_min:4} min: {:6.3} bytes/point (chunk partitions holding data + series), \
         {:6.3} with all {} partitions (empty premade ones and the default too); \
         {} chunks; head before compaction {:.1} bytes/point; append {:.0} points/s, compaction {:.0} points/s ({:?})",
        (with_data + s.series_bytes) as f64 / points as f64,
        (s.chunk_bytes + s.series_bytes) as f64 / points as f64,
        s.partitions + 1,
        s.chunks,
        head.head_bytes as f64 / points as f64,
        points as f64 / appended.as_secs_f64(),
        rep.rows_compacted as f64 / compacted.as_secs_f64(),
        compacted,
    );
    drop(store);
    drop(pg);
}

/// Total size of the chunk partitions that hold rows.
async fn pg_sizes(url: &str) -> i64 {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let mut total = 0i64;
    let parts = client
        .query(
            "SELECT format('%I.%I', partition_schemaname, partition_tablename)
             FROM partman.show_partitions('series_store.chunks', p_include_default => true)",
            &[],
        )
        .await
        .expect("partitions");
    for p in parts {
        let name: String = p.get(0);
        let r = client
            .query_one(
                &format!("SELECT (SELECT count(*) FROM {name}), pg_total_relation_size('{name}')"),
                &[],
            )
            .await
            .expect("size");
        let (rows, bytes): (i64, i64) = (r.get(0), r.get(1));
        if rows > 0 {
            total += bytes;
        }
    }
    total
}

fn ts_bytes_per_point(data: &Data) -> f64 {
    use std::os::unix::fs::MetadataExt;
    fn blocks(dir: &std::path::Path) -> u64 {
        std::fs::read_dir(dir)
            .expect("dir")
            .flatten()
            .map(|e| {
                let m = e.metadata().expect("metadata");
                if m.is_dir() {
                    blocks(&e.path())
                } else {
                    m.blocks() * 512
                }
            })
            .sum()
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = TsStore::open(
        dir.path(),
        StoreOptions {
            retention: None,
            ..StoreOptions::default()
        },
    )
    .expect("open");
    rt.block_on(async {
        for b in realistic_batches(data) {
            store.append(b).await.expect("append");
        }
        store.checkpoint().await.expect("checkpoint");
        println!("TsStore queries: {}", ms3(query_latency(&store)));
        store.close().await.expect("close");
    });
    let points: usize = data.iter().map(|d| d.2.len()).sum();
    blocks(dir.path()) as f64 / points as f64
}

/// Agent-like batches: `readings` readings spread over `series` series of 100 devices, each
/// batch with the next origin of its agent.
fn agent_batches(agents: usize, per_agent: usize, readings: usize) -> Vec<Vec<WriteBatch>> {
    let quantities = [
        Quantity::WaterLevel,
        Quantity::Ph,
        Quantity::Turbidity,
        Quantity::LampPower,
        Quantity::CoverOpen,
    ];
    let mut rng = Rng(11);
    (0..agents)
        .map(|a| {
            (0..per_agent)
                .map(|seq| {
                    let mut series: Vec<(SeriesId, Vec<Point>)> = Vec::new();
                    for r in 0..readings {
                        let dev = (a * 100 + r % 100) as u32;
                        let q = quantities[(r / 100) % quantities.len()];
                        let ts = T0 + (seq as i64) * 10_000 + (r as i64 % 10) * 100;
                        let p = Point {
                            ts_ms: ts,
                            value: round_to(2.0 + 0.01 * rng.gauss(), 3),
                            quality: protocols::Quality::Good,
                        };
                        let id = SeriesId {
                            device: Arc::from(format!("dev-{dev}")),
                            quantity: q,
                        };
                        match series.iter_mut().find(|(s, _)| *s == id) {
                            Some((_, pts)) => pts.push(p),
                            None => series.push((id, vec![p])),
                        }
                    }
                    WriteBatch {
                        origin: Some(Origin {
                            agent: Arc::from(format!("agent-{a}")),
                            stream: 1,
                            seq: seq as u64 + 1,
                        }),
                        series,
                    }
                })
                .collect()
        })
        .collect()
}

/// Appends every agent's batches in order, the agents concurrently; points per second.
async fn append_rate<S: SeriesStore>(store: Arc<S>, batches: Vec<Vec<WriteBatch>>) -> f64 {
    let points: usize = batches
        .iter()
        .flatten()
        .map(|b| b.series.iter().map(|s| s.1.len()).sum::<usize>())
        .sum();
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for agent in batches {
        let store = store.clone();
        tasks.spawn(async move {
            for b in agent {
                store.append(b).await.expect("append");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("agent task");
    }
    points as f64 / t.elapsed().as_secs_f64()
}

/// The head's write path alone, raw tokio-postgres on a table shaped like `head`: transactions
/// of `rows` rows as one `INSERT .. SELECT FROM unnest(arrays)` or as `COPY .. FROM STDIN
/// BINARY`, from `conns` connections at once; rows per second.
async fn insert_path(url: &str, copy: bool, conns: usize, txs: usize, rows: usize) -> f64 {
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::Type;
    let setup = {
        let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        c
    };
    setup
        .batch_execute(
            "DROP TABLE IF EXISTS bench_rows;
             CREATE TABLE bench_rows (series_id integer NOT NULL, ts_ms bigint NOT NULL,
                 value double precision NOT NULL, quality smallint NOT NULL, wseq bigint NOT NULL);
             CREATE INDEX ON bench_rows (series_id, ts_ms);",
        )
        .await
        .expect("table");
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..conns {
        let url = url.to_owned();
        tasks.spawn(async move {
            let (mut c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(conn);
            for n in 0..txs / conns {
                let wseq = (k * txs + n) as i64;
                let series: Vec<i32> = (0..rows as i32).collect();
                let ts: Vec<i64> = (0..rows as i64).map(|i| T0 + wseq * 1000 + i).collect();
                let value: Vec<f64> = (0..rows).map(|i| 2.0 + i as f64 / 1000.0).collect();
                let quality: Vec<i16> = vec![0; rows];
                let tx = c.transaction().await.expect("begin");
                if copy {
                    let sink = tx
                        .copy_in(
                            "COPY bench_rows (series_id, ts_ms, value, quality, wseq) FROM STDIN BINARY",
                        )
                        .await
                        .expect("copy");
                    let w = BinaryCopyInWriter::new(
                        sink,
                        &[Type::INT4, Type::INT8, Type::FLOAT8, Type::INT2, Type::INT8],
                    );
                    let mut w = std::pin::pin!(w);
                    for i in 0..rows {
                        w.as_mut()
                            .write(&[&series[i], &ts[i], &value[i], &quality[i], &wseq])
                            .await
                            .expect("row");
                    }
                    w.finish().await.expect("finish");
                } else {
                    tx.execute(
                        "INSERT INTO bench_rows SELECT u.s, u.t, u.v, u.q, $5
                         FROM unnest($1::integer[], $2::bigint[], $3::double precision[],
                                     $4::smallint[]) AS u(s, t, v, q)",
                        &[&series, &ts, &value, &quality, &wseq],
                    )
                    .await
                    .expect("insert");
                }
                tx.commit().await.expect("commit");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("task");
    }
    (txs / conns * conns * rows) as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let days = env("PG_BENCH_DAYS", 7);
    let windows: Vec<i64> = std::env::var("PG_BENCH_WINDOWS")
        .unwrap_or_else(|_| "60".into())
        .split(',')
        .filter_map(|w| w.trim().parse().ok())
        .collect();
    let total_batches = env("PG_BENCH_BATCHES", 2000) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let parts = std::env::var("PG_BENCH_PARTS").unwrap_or_else(|_| "bytes,append".into());
    let jitters: &[i64] = if parts.contains("bytes") {
        &[0, 5]
    } else {
        &[]
    };
    for &jitter in jitters {
        let data = realistic(days * DAY, jitter);
        let points: usize = data.iter().map(|d| d.2.len()).sum();
        println!(
            "realistic series: {days} days x 7 series at 1 s ticks ±{jitter} ms = {points} points"
        );
        println!(
            "TsStore (redb + WAL, default options): {:6.3} bytes/point on disk",
            ts_bytes_per_point(&data)
        );
        rt.block_on(async {
            for &w in &windows {
                pg_bytes_per_point(&data, w).await;
            }
        });
    }

    if !parts.contains("append") {
        return;
    }
    rt.block_on(async {
        let pg = tokio::task::spawn_blocking(Postgres::start)
            .await
            .expect("start task")
            .expect("postgres");
        for conns in [1, 8] {
            for rows in [300, 3000] {
                let txs = (total_batches * 300 / rows).max(conns);
                let unnest = insert_path(&pg.url(), false, conns, txs, rows).await;
                let copy = insert_path(&pg.url(), true, conns, txs, rows).await;
                println!(
                    "head write path, {conns} connections, transactions of {rows} rows: \
                     INSERT unnest {unnest:.0} rows/s, COPY BINARY {copy:.0} rows/s"
                );
            }
        }
    });
    for (agents, readings) in [(1, 300), (8, 300), (8, 100)] {
        let per_agent = total_batches / agents;
        let dir = tempfile::tempdir().expect("tempdir");
        let ts = Arc::new(
            TsStore::open(
                dir.path(),
                StoreOptions {
                    retention: None,
                    ..StoreOptions::default()
                },
            )
            .expect("open"),
        );
        let ts_rate = rt.block_on(append_rate(
            ts.clone(),
            agent_batches(agents, per_agent, readings),
        ));
        let pg_rate = rt.block_on(async {
            let pg = tokio::task::spawn_blocking(Postgres::start)
                .await
                .expect("start task")
                .expect("postgres");
            let store = Arc::new(
                PgStore::connect(&pg.url(), pg_options(60))
                    .await
                    .expect("connect"),
            );
            let r = append_rate(store.clone(), agent_batches(agents, per_agent, readings)).await;
            drop(store);
            drop(pg);
            r
        });
        println!(
            "append, {agents} agents x {per_agent} batches of {readings} readings over {} series: \
             PgStore {pg_rate:.0} points/s, TsStore {ts_rate:.0} points/s",
            agents * readings.min(100) * readings.div_ceil(100).min(5),
        );
    }
}
