//! [`PgStore`] against a real PostgreSQL 15 (with pg_partman) started for each test by
//! `engines`: the [`series_store::SeriesStore`] contract (`conformance/mod.rs`), crashes of the
//! hub and of PostgreSQL, two hubs on one database, compaction and retention.
#![cfg(feature = "postgres")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use engines::postgres::Postgres;
use protocols::{Quality, Quantity};
use series_store::postgres::{PgOptions, PgStore};
use series_store::{
    Agg, Appended, Origin, Point, Query, SeriesId, SeriesStore, StoreHealth, WriteBatch,
};

mod conformance;

type Shared = Arc<std::sync::Mutex<Postgres>>;

async fn start_pg() -> Shared {
    let pg = tokio::task::spawn_blocking(Postgres::start)
        .await
        .expect("start task")
        .expect("start postgres");
    Arc::new(std::sync::Mutex::new(pg))
}

fn url(pg: &Shared) -> String {
    pg.lock().expect("pg lock").url()
}

fn opts() -> PgOptions {
    PgOptions {
        retention: None,
        append_timeout: Duration::from_secs(3),
        query_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(2),
        ..PgOptions::default()
    }
}

async fn connect(pg: &Shared, o: PgOptions) -> PgStore {
    PgStore::connect(&url(pg), o).await.expect("connect")
}

/// Stops PostgreSQL as a crash would (`pg_ctl stop -m immediate`), waits `down`, starts it.
async fn crash_postgres(pg: &Shared, down: Duration) {
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.lock().expect("pg lock").stop_immediate())
        .await
        .expect("stop task")
        .expect("stop");
    tokio::time::sleep(down).await;
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.lock().expect("pg lock").start_again())
        .await
        .expect("start task")
        .expect("start again");
}

fn sid(device: &str, quantity: Quantity) -> SeriesId {
    SeriesId {
        device: Arc::from(device),
        quantity,
    }
}

fn pt(ts_ms: i64, value: f64) -> Point {
    Point {
        ts_ms,
        value,
        quality: Quality::Good,
    }
}

fn hour_ago(hours: i64) -> i64 {
    const HOUR: i64 = 3_600_000;
    (protocols::time::now_ms() / HOUR - hours) * HOUR
}

/// The contract, called from a current-thread runtime's only thread (queries block it, and
/// must not try to enter a runtime).
#[tokio::test]
async fn pg_store_keeps_the_contract() {
    let pg = start_pg().await;
    let store = connect(&pg, opts()).await;
    conformance::check_store(&store).await;
    assert_eq!(store.health(), StoreHealth::Writable);
}

/// The same, with reads from `spawn_blocking` threads of a multi-thread runtime as the API
/// does, and everything compacted into chunks before the crash check reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_store_answers_recovered_after_a_crash() {
    let pg = start_pg().await;
    let store = connect(&pg, opts()).await;
    let first = store.instance();
    let u = url(&pg);
    conformance::check_redelivery_after_crash(store, |store| async move {
        // A crash: the store's tasks and connections are gone without a close.
        drop(store);
        let again = PgStore::connect(&u, opts()).await.expect("reconnect");
        assert_ne!(again.instance(), first);
        again
    })
    .await;
}

/// A crash of PostgreSQL itself (immediate stop, WAL replay at start) under a connected store,
/// then a new hub process: what was acknowledged is there and redelivery answers `Recovered`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_store_answers_recovered_after_postgres_crashes() {
    let pg = start_pg().await;
    let store = connect(&pg, opts()).await;
    let pg2 = pg.clone();
    conformance::check_redelivery_after_crash(store, |store| async move {
        crash_postgres(&pg2, Duration::from_millis(200)).await;
        drop(store);
        connect(&pg2, opts()).await
    })
    .await;
}

/// PostgreSQL down for 10 s: appends fail within their timeout (never hang), health says so,
/// and once it is back the same store (same process, same pool) writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_fail_while_postgres_is_down_and_work_after_it_restarts() {
    let pg = start_pg().await;
    let store = Arc::new(connect(&pg, opts()).await);
    let s = sid("restart-1", Quantity::WaterLevel);
    let t = hour_ago(2);
    let write = |i: i64| {
        let store = store.clone();
        let s = s.clone();
        async move {
            store
                .append(WriteBatch {
                    origin: Some(Origin {
                        agent: Arc::from("restart-agent"),
                        stream: 1,
                        seq: i as u64,
                    }),
                    series: vec![(s, vec![pt(t + i * 1000, i as f64)])],
                })
                .await
        }
    };
    assert_eq!(write(1).await.expect("append"), Appended::Stored);

    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.lock().expect("pg lock").stop_immediate())
        .await
        .expect("stop task")
        .expect("stop");
    let down_at = Instant::now();
    let mut failures = 0;
    while down_at.elapsed() < Duration::from_secs(10) {
        let started = Instant::now();
        let r = write(2).await;
        assert!(r.is_err(), "append while postgres is down: {r:?}");
        assert!(
            started.elapsed() < opts().append_timeout + Duration::from_secs(2),
            "an append took {:?}",
            started.elapsed()
        );
        failures += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(failures > 3);
    assert!(
        matches!(store.health(), StoreHealth::Failed { .. }),
        "{:?}",
        store.health()
    );
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.lock().expect("pg lock").start_again())
        .await
        .expect("start task")
        .expect("start again");
    let back = Instant::now();
    let answer = loop {
        match write(2).await {
            Ok(a) => break a,
            Err(e) => {
                assert!(
                    back.elapsed() < Duration::from_secs(30),
                    "still failing: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    // Seq 2 may have been committed by an append whose answer was lost: Stored or not, once.
    assert!(
        matches!(answer, Appended::Stored | Appended::Duplicate),
        "{answer:?}"
    );
    assert_eq!(write(3).await.expect("append"), Appended::Stored);
    let st = store.clone();
    let s2 = s.clone();
    let points = tokio::task::spawn_blocking(move || {
        st.query(&Query {
            series: s2,
            from_ms: t,
            to_ms: t + 10_000,
            step_ms: None,
            agg: Agg::Avg,
        })
    })
    .await
    .expect("query task")
    .expect("query");
    assert_eq!(
        points,
        vec![(t + 1000, 1.0), (t + 2000, 2.0), (t + 3000, 3.0)]
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.health() != StoreHealth::Writable {
        assert!(Instant::now() < deadline, "{:?}", store.health());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two hubs (two stores on one database, connecting at once to a fresh one, so the schema is
/// made under the advisory lock) receive the same agent batch at once: one stores it, the other
/// answers without writing, and its points are in the database once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_store_a_concurrent_origin_once() {
    let pg = start_pg().await;
    let (a, b) = tokio::join!(connect(&pg, opts()), connect(&pg, opts()));
    assert_ne!(a.instance(), b.instance());
    let t = hour_ago(3);
    let s = sid("twin-hubs", Quantity::Ph);
    for seq in 1..=20u64 {
        let batch = |v: f64| WriteBatch {
            origin: Some(Origin {
                agent: Arc::from("shared-agent"),
                stream: 9,
                seq,
            }),
            series: vec![(
                s.clone(),
                (0..50).map(|i| pt(t + seq as i64 * 1000 + i, v)).collect(),
            )],
        };
        let (ra, rb) = tokio::join!(a.append(batch(1.0)), b.append(batch(2.0)));
        let answers = [ra.expect("append a"), rb.expect("append b")];
        let stored = answers.iter().filter(|&&r| r == Appended::Stored).count();
        assert_eq!(stored, 1, "seq {seq}: {answers:?}");
        // The loser saw an origin stored by another instance: its first redelivery.
        assert!(answers.contains(&Appended::Recovered), "{answers:?}");
    }
    let stats = a.storage().await.expect("storage");
    assert_eq!(stats.head_rows, 20 * 50);
    let values = a
        .query(&Query {
            series: s.clone(),
            from_ms: t,
            to_ms: t + 60_000,
            step_ms: None,
            agg: Agg::Avg,
        })
        .expect("query");
    assert_eq!(values.len(), 20 * 50);
    // Each batch's points carry one hub's value, never a mix.
    for seq in 1..=20i64 {
        let mut v: Vec<f64> = values
            .iter()
            .filter(|(ts, _)| (ts - t) / 1000 == seq)
            .map(|p| p.1)
            .collect();
        v.dedup();
        assert_eq!(v.len(), 1, "seq {seq}");
    }
}

fn every_query(s: &SeriesId, from: i64, to: i64) -> Vec<Query> {
    let mut out = vec![Query {
        series: s.clone(),
        from_ms: from,
        to_ms: to,
        step_ms: None,
        agg: Agg::Avg,
    }];
    for step in [60_000, 3_600_000 + 7, 86_400_000] {
        for agg in [Agg::Avg, Agg::Min, Agg::Max, Agg::Last, Agg::Count] {
            out.push(Query {
                series: s.clone(),
                from_ms: from + 13,
                to_ms: to - 1,
                step_ms: Some(step),
                agg,
            });
        }
    }
    out
}

/// Answers equal up to the rounding of sums (a bucket's average from a chunk's stored sum may
/// differ in the last bits from the sum of its points); tells which query differs.
fn assert_same(a: &[Vec<(i64, f64)>], b: &[Vec<(i64, f64)>]) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.len(), y.len(), "query {i}: lengths");
        for (p, q) in x.iter().zip(y) {
            let close = (p.1 - q.1).abs() <= 1e-9 * p.1.abs().max(1.0);
            assert!(p.0 == q.0 && close, "query {i}: {p:?} vs {q:?}");
        }
    }
}

/// Compaction moves closed windows into chunks without changing any answer, also when late
/// points (some overwriting stored timestamps) arrive into an already compacted window, and
/// the data takes less room afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_answers_and_shrinks_storage() {
    let pg = start_pg().await;
    let store = connect(&pg, opts()).await;
    let from = hour_ago(30);
    let to = hour_ago(24);
    let level = sid("compact-1", Quantity::WaterLevel);
    let cover = sid("compact-1", Quantity::CoverOpen);
    let n = (to - from) / 5000;
    let batches: Vec<WriteBatch> = (0..n)
        .step_by(500)
        .map(|start| WriteBatch {
            origin: None,
            series: vec![
                (
                    level.clone(),
                    (start..(start + 500).min(n))
                        .map(|i| pt(from + i * 5000, 1.5 + ((i % 97) as f64) / 1000.0))
                        .collect(),
                ),
                (
                    cover.clone(),
                    (start..(start + 500).min(n))
                        .map(|i| pt(from + i * 5000 + 3, f64::from(i % 500 < 20)))
                        .collect(),
                ),
            ],
        })
        .collect();
    for b in batches {
        store.append(b).await.expect("append");
    }
    let answers = |store: &PgStore| -> Vec<Vec<(i64, f64)>> {
        [&level, &cover]
            .iter()
            .flat_map(|s| every_query(s, from - 1000, to + 1000))
            .map(|q| store.query(&q).expect("query"))
            .collect()
    };
    let before = answers(&store);
    let latest_before = store.latest("compact-1").expect("latest");
    let size_before = store.storage().await.expect("storage");
    assert_eq!(size_before.head_rows, 2 * n);

    let rep = store.compact(Duration::ZERO).await.expect("compact");
    assert_eq!(rep.rows_compacted, 2 * n as u64);
    assert_eq!(rep.chunks_written, 2 * 6);
    assert_same(&answers(&store), &before);
    assert_eq!(store.latest("compact-1").expect("latest"), latest_before);
    let size_after = store.storage().await.expect("storage");
    assert_eq!(size_after.head_rows, 0);
    assert_eq!(size_after.chunk_points, 2 * n);
    // The head table's pages stay allocated until VACUUM; the chunks alone are compared.
    assert!(
        size_after.chunk_bytes * 5 < size_before.head_bytes,
        "{size_before:?} -> {size_after:?}"
    );

    // Late points into compacted windows: one new, one overwriting a stored timestamp.
    store
        .append(WriteBatch {
            origin: None,
            series: vec![(
                level.clone(),
                vec![pt(from + 2500, 7.0), pt(from + 5000, 8.0)],
            )],
        })
        .await
        .expect("append");
    let late = answers(&store);
    let raw = &late[0];
    assert_eq!(
        raw[0..3],
        [(from, 1.5), (from + 2500, 7.0), (from + 5000, 8.0)]
    );
    let rep = store.compact(Duration::ZERO).await.expect("compact");
    assert_eq!((rep.chunks_written, rep.rows_compacted), (1, 2));
    assert_same(&answers(&store), &late);
}

/// Retention: an old day partition of chunks is dropped by pg_partman's maintenance, recent
/// ones stay, and queries of the old range answer nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_old_partitions() {
    let pg = start_pg().await;
    let keep_all = connect(&pg, opts()).await;
    let s = sid("retain-1", Quantity::Turbidity);
    let old = hour_ago(24 * 10);
    let recent = hour_ago(5);
    for t0 in [old, recent] {
        keep_all
            .append(WriteBatch {
                origin: None,
                series: vec![(
                    s.clone(),
                    (0..100).map(|i| pt(t0 + i * 1000, 3.5)).collect(),
                )],
            })
            .await
            .expect("append");
    }
    keep_all.compact(Duration::ZERO).await.expect("compact");
    let with_old = keep_all.storage().await.expect("storage");
    assert_eq!(with_old.chunk_points, 200);
    let q = |store: &PgStore, t0: i64| {
        store
            .query(&Query {
                series: s.clone(),
                from_ms: t0,
                to_ms: t0 + 100_000,
                step_ms: Some(100_000),
                agg: Agg::Count,
            })
            .expect("query")
    };
    assert_eq!(q(&keep_all, old), vec![(old, 100.0)]);

    // A hub configured with 3 days of retention sets it for the cluster.
    let three_days = connect(
        &pg,
        PgOptions {
            retention: Some(Duration::from_secs(3 * 86_400)),
            ..opts()
        },
    )
    .await;
    let rep = three_days.maintain().await.expect("maintain");
    assert!(
        rep.partitions_after < rep.partitions_before,
        "{rep:?} {with_old:?}"
    );
    let after = three_days.storage().await.expect("storage");
    assert_eq!(after.chunk_points, 100);
    assert!(q(&three_days, old).is_empty());
    assert_eq!(q(&three_days, recent), vec![(recent, 100.0)]);
    assert!(after.chunk_bytes < with_old.chunk_bytes);
}

/// Two hubs run the background compaction at once over the same head: every window is
/// compacted once (the other skips it), nothing is lost or doubled, answers do not change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_compact_in_the_background_at_once() {
    let pg = start_pg().await;
    let a = connect(&pg, opts()).await;
    let b = connect(&pg, opts()).await;
    let from = hour_ago(12);
    let to = hour_ago(6);
    let series: Vec<SeriesId> = (0..5)
        .map(|d| sid(&format!("bg-{d}"), Quantity::WaterLevel))
        .collect();
    let n = (to - from) / 10_000;
    for start in (0..n).step_by(300) {
        let batch = WriteBatch {
            origin: None,
            series: series
                .iter()
                .map(|s| {
                    (
                        s.clone(),
                        (start..(start + 300).min(n))
                            .map(|i| pt(from + i * 10_000, (i % 13) as f64))
                            .collect(),
                    )
                })
                .collect(),
        };
        a.append(batch).await.expect("append");
    }
    let answers = |store: &PgStore| -> Vec<Vec<(i64, f64)>> {
        series
            .iter()
            .flat_map(|s| every_query(s, from, to))
            .map(|q| store.query(&q).expect("query"))
            .collect()
    };
    let before = answers(&a);
    let _ta = a.start_background(Duration::from_millis(20), Duration::ZERO);
    let _tb = b.start_background(Duration::from_millis(20), Duration::ZERO);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = b.storage().await.expect("storage");
        if s.head_rows == 0 {
            assert_eq!(s.chunk_points, 5 * n);
            assert_eq!(s.chunks, 5 * 6);
            break;
        }
        assert!(Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_same(&answers(&b), &before);
    assert_same(&answers(&a), &before);
}

/// A chunk whose bytes were damaged in the database is `Corrupt` for the queries touching it
/// (and `latest`), never a panic; other windows still answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_chunk_is_corrupt_not_a_panic() {
    let pg = start_pg().await;
    let store = connect(&pg, opts()).await;
    let s = sid("damaged-1", Quantity::Ph);
    let t = hour_ago(10);
    store
        .append(WriteBatch {
            origin: None,
            series: vec![(
                s.clone(),
                (0..7200)
                    .map(|i| pt(t + i * 1000, 7.0 + (i % 7) as f64 / 100.0))
                    .collect(),
            )],
        })
        .await
        .expect("append");
    store.compact(Duration::ZERO).await.expect("compact");
    let (client, conn) = tokio_postgres::connect(&url(&pg), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    // Flip a bit in the middle of the second hour's chunk.
    let n = client
        .execute(
            "UPDATE series_store.chunks
             SET rec = set_byte(rec, length(rec) / 2, get_byte(rec, length(rec) / 2) # 16)
             WHERE window_start = to_timestamp($1::double precision / 1000)",
            &[&((t + 3_600_000) as f64)],
        )
        .await
        .expect("damage");
    assert_eq!(n, 1);
    let q = |from: i64, to: i64| Query {
        series: s.clone(),
        from_ms: from,
        to_ms: to,
        step_ms: None,
        agg: Agg::Avg,
    };
    let e = store
        .query(&q(t, t + 7_200_000))
        .expect_err("damaged chunk");
    assert!(matches!(e, series_store::StoreError::Corrupt(_)), "{e}");
    assert!(matches!(
        store.latest("damaged-1"),
        Err(series_store::StoreError::Corrupt(_))
    ));
    assert_eq!(
        store.query(&q(t, t + 3_600_000)).expect("first hour").len(),
        3600
    );
}
