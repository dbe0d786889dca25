//! The embedded time-series store end to end: durability across restarts, dedup, out-of-order
//! data, chunk boundaries, retention, a torn WAL tail and corrupt chunks.

use std::sync::Arc;
use std::time::Duration;

use protocols::{Quality, Quantity};
use series_store::{
    Agg, Appended, Origin, Point, Query, SeriesId, SeriesStore, StoreError, StoreOptions, TsStore,
    WriteBatch,
};

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

fn opts() -> StoreOptions {
    StoreOptions {
        chunk_points: 10,
        retention: None,
        checkpoint_interval: Duration::from_secs(3600),
        group_commit: Duration::from_millis(1),
        ..StoreOptions::default()
    }
}

fn origin(agent: &str, stream: u64, seq: u64) -> Option<Origin> {
    Some(Origin {
        agent: Arc::from(agent),
        stream,
        seq,
    })
}

async fn put(store: &TsStore, o: Option<Origin>, s: &SeriesId, pts: Vec<Point>) -> Appended {
    store
        .append(WriteBatch {
            origin: o,
            series: vec![(s.clone(), pts)],
        })
        .await
        .unwrap()
}

fn raw(store: &TsStore, s: &SeriesId, from: i64, to: i64) -> Vec<(i64, f64)> {
    store
        .query(&Query {
            series: s.clone(),
            from_ms: from,
            to_ms: to,
            step_ms: None,
            agg: Agg::Avg,
        })
        .unwrap()
}

fn agg(store: &TsStore, s: &SeriesId, from: i64, to: i64, step: i64, agg: Agg) -> Vec<(i64, f64)> {
    store
        .query(&Query {
            series: s.clone(),
            from_ms: from,
            to_ms: to,
            step_ms: Some(step),
            agg,
        })
        .unwrap()
}

async fn open(dir: &std::path::Path, o: StoreOptions) -> TsStore {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || TsStore::open(dir, o))
        .await
        .unwrap()
        .unwrap()
}

const T0: i64 = 1_700_000_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_and_dedup_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let level = sid("ws-1", Quantity::WaterLevel);
    let cover = sid("mh-1", Quantity::CoverOpen);
    let mut expect = Vec::new();
    {
        let store = open(dir.path(), opts()).await;
        for seq in 1..=25u64 {
            let pts: Vec<Point> = (0..3)
                .map(|j| pt(T0 + (seq * 3 + j) as i64 * 1000, seq as f64 * 0.001))
                .collect();
            expect.extend(pts.iter().map(|p| (p.ts_ms, p.value)));
            let r = store
                .append(WriteBatch {
                    origin: origin("agent-a", 7, seq),
                    series: vec![
                        (level.clone(), pts),
                        (cover.clone(), vec![pt(T0 + seq as i64, 1.0)]),
                    ],
                })
                .await
                .unwrap();
            assert_eq!(r, Appended::Stored);
        }
        assert_eq!(raw(&store, &level, 0, i64::MAX), expect);
        // A checkpoint in the middle, then more data only in the WAL.
        store.checkpoint().await.unwrap();
        let st = store.stats().unwrap();
        assert!(st.chunks >= 7, "{st:?}");
        // The checkpoint covered the whole WAL: only the new segment's header is left.
        assert_eq!(st.wal_bytes, 16, "{st:?}");
        assert_eq!(st.pending_chunks, 0, "{st:?}");
        for seq in 26..=30u64 {
            let p = pt(T0 + (seq * 3) as i64 * 1000, 9.5);
            expect.push((p.ts_ms, p.value));
            assert_eq!(
                put(&store, origin("agent-a", 7, seq), &level, vec![p]).await,
                Appended::Stored
            );
        }
        store.close().await.unwrap();
        let e = store
            .append(WriteBatch {
                origin: None,
                series: vec![(level.clone(), vec![pt(1, 1.0)])],
            })
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Closed), "{e}");
    }
    for round in 0..2usize {
        let store = open(dir.path(), opts()).await;
        assert_eq!(raw(&store, &level, 0, i64::MAX), expect, "round {round}");
        assert_eq!(raw(&store, &cover, 0, i64::MAX).len(), 25 + round);
        for seq in [1, 13, 25, 30] {
            assert_eq!(
                put(&store, origin("agent-a", 7, seq), &level, vec![pt(1, 1.0)]).await,
                Appended::Duplicate,
                "seq {seq} round {round}"
            );
        }
        // The same seq of another stream or agent is new (the first round), then stored too.
        let new = if round == 0 {
            Appended::Stored
        } else {
            Appended::Duplicate
        };
        assert_eq!(
            put(
                &store,
                origin("agent-a", 8, 1),
                &cover,
                vec![pt(T0 + 100, 0.0)]
            )
            .await,
            new
        );
        assert_eq!(
            put(
                &store,
                origin("agent-b", 7, 1),
                &cover,
                vec![pt(T0 + 100, 1.0)]
            )
            .await,
            new
        );
        let latest = store.latest("ws-1").unwrap();
        assert_eq!(latest, vec![(Quantity::WaterLevel, pt(T0 + 90_000, 9.5))]);
        assert_eq!(store.series().len(), 2);
        store.close().await.unwrap();
    }
    // A crash image taken while data sits only in the WAL recovers the same.
    let store = open(dir.path(), opts()).await;
    let p = pt(T0 + 1_000_000, 4.25);
    put(&store, origin("agent-a", 7, 31), &level, vec![p]).await;
    expect.push((p.ts_ms, p.value));
    let img = tempfile::tempdir().unwrap();
    crash_image(dir.path(), img.path());
    store.close().await.unwrap();
    let store = open(img.path(), opts()).await;
    assert_eq!(raw(&store, &level, 0, i64::MAX), expect);
    // Its first redelivery is `Recovered` (replayed from the WAL: the hub republishes it),
    // every later one a plain duplicate; neither writes anything.
    assert_eq!(
        put(&store, origin("agent-a", 7, 31), &level, vec![p]).await,
        Appended::Recovered
    );
    assert_eq!(
        put(&store, origin("agent-a", 7, 31), &level, vec![p]).await,
        Appended::Duplicate
    );
    assert_eq!(raw(&store, &level, 0, i64::MAX), expect);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_of_one_origin_store_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path(), opts()).await);
    let s = sid("lamp-1", Quantity::LampPower);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let store = store.clone();
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            store
                .append(WriteBatch {
                    origin: origin("agent-x", 1, 42),
                    series: vec![(
                        s,
                        (0..5)
                            .map(|i| pt(T0 + i * 1000, 100.0 + i as f64))
                            .collect(),
                    )],
                })
                .await
                .unwrap()
        }));
    }
    let mut stored = 0;
    for t in tasks {
        if t.await.unwrap() == Appended::Stored {
            stored += 1;
        }
    }
    assert_eq!(stored, 1);
    assert_eq!(
        agg(&store, &s, 0, i64::MAX, i64::MAX / 4, Agg::Count),
        vec![(0, 5.0)]
    );
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_and_repeated_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), opts()).await;
    let s = sid("ws-2", Quantity::WaterLevel);
    // Live data from t=100 s on, then a backlog of t=0..99 s drained in batches, interleaved.
    for i in 100..130 {
        put(&store, None, &s, vec![pt(T0 + i * 1000, i as f64)]).await;
    }
    for chunk in (0..100).collect::<Vec<i64>>().chunks(7) {
        put(
            &store,
            None,
            &s,
            chunk.iter().map(|&i| pt(T0 + i * 1000, i as f64)).collect(),
        )
        .await;
        put(
            &store,
            None,
            &s,
            vec![pt(T0 + (130 + chunk[0]) * 1000, (130 + chunk[0]) as f64)],
        )
        .await;
    }
    let got = raw(&store, &s, 0, i64::MAX);
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "sorted and unique");
    assert_eq!(got.len(), 130 + 15);
    assert!(got.iter().all(|&(ts, v)| (ts - T0) / 1000 == v as i64));
    // A second point at an existing timestamp replaces the first, wherever the first went.
    put(
        &store,
        None,
        &s,
        vec![pt(T0 + 5_000, -5.0), pt(T0 + 120_000, -120.0)],
    )
    .await;
    put(&store, None, &s, vec![pt(T0 + 5_000, -6.0)]).await;
    let check = |store: &TsStore| {
        let got = raw(store, &s, 0, i64::MAX);
        assert_eq!(got.len(), 145);
        assert!(got.contains(&(T0 + 5_000, -6.0)));
        assert!(got.contains(&(T0 + 120_000, -120.0)));
        assert_eq!(
            raw(store, &s, T0 + 5_000, T0 + 5_001),
            vec![(T0 + 5_000, -6.0)]
        );
        let n = agg(store, &s, T0, T0 + 1_000_000, 10_000, Agg::Count);
        assert_eq!(n.iter().map(|b| b.1).sum::<f64>(), 145.0);
        // Unsorted points inside one batch.
    };
    check(&store);
    store.checkpoint().await.unwrap();
    check(&store);
    store.close().await.unwrap();
    let store = open(dir.path(), opts()).await;
    check(&store);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_across_chunks_and_head() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), opts()).await;
    let s = sid("lamp-2", Quantity::LampPower);
    // 95 points: 9 sealed chunks of 10 (some committed, some pending) and 5 in the head.
    for i in 0..95i64 {
        put(&store, None, &s, vec![pt(T0 + i * 1000, (i % 10) as f64)]).await;
        if i == 40 {
            store.checkpoint().await.unwrap();
        }
    }
    // Buckets of 10 s aligned to `from` = T0: every bucket is one whole chunk (metadata path).
    assert_eq!(
        agg(&store, &s, T0, T0 + 200_000, 10_000, Agg::Avg),
        (0..10)
            .map(|b| (T0 + b * 10_000, 4.5_f64.min(if b == 9 { 2.0 } else { 4.5 })))
            .collect::<Vec<_>>()
    );
    // Buckets of 15 s cut chunks (decode path).
    let got = agg(&store, &s, T0, T0 + 200_000, 15_000, Agg::Max);
    assert_eq!(got.len(), 7);
    assert_eq!(got[0], (T0, 9.0));
    assert_eq!(got[6], (T0 + 90_000, 4.0));
    assert_eq!(
        agg(&store, &s, T0 + 3_000, T0 + 14_000, 1_000_000, Agg::Count),
        vec![(T0 + 3_000, 11.0)]
    );
    assert_eq!(
        agg(&store, &s, T0, T0 + 95_000, 1_000_000, Agg::Last),
        vec![(T0, 4.0)]
    );
    assert_eq!(
        agg(&store, &s, T0, T0 + 95_000, 1_000_000, Agg::Min),
        vec![(T0, 0.0)]
    );
    // Empty buckets are left out.
    put(&store, None, &s, vec![pt(T0 + 500_000, 1.0)]).await;
    let got = agg(&store, &s, T0, T0 + 600_000, 100_000, Agg::Count);
    assert_eq!(got, vec![(T0, 95.0), (T0 + 500_000, 1.0)]);
    // Bad queries.
    let bad = |from, to, step| {
        store.query(&Query {
            series: s.clone(),
            from_ms: from,
            to_ms: to,
            step_ms: step,
            agg: Agg::Avg,
        })
    };
    assert!(matches!(bad(10, 5, None), Err(StoreError::BadQuery(_))));
    assert!(matches!(bad(0, 5, Some(0)), Err(StoreError::BadQuery(_))));
    assert_eq!(bad(5, 5, None).unwrap(), vec![]);
    assert_eq!(
        raw(&store, &sid("nobody", Quantity::Ph), 0, i64::MAX),
        vec![]
    );
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_old_chunks_and_hides_old_points() {
    let dir = tempfile::tempdir().unwrap();
    let day = 86_400_000i64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let o = StoreOptions {
        retention: Some(Duration::from_secs(30 * 86_400)),
        // Runs at open, then not again during the test: the test calls it itself.
        retention_interval: Duration::from_secs(3600),
        ..opts()
    };
    let store = open(dir.path(), o.clone()).await;
    let s = sid("ws-3", Quantity::Turbidity);
    // 40 points 60 days old (4 chunks), 40 points from an hour ago.
    put(
        &store,
        None,
        &s,
        (0..40)
            .map(|i| pt(now - 60 * day + i * 1000, 1.0))
            .collect(),
    )
    .await;
    put(
        &store,
        None,
        &s,
        (0..40)
            .map(|i| pt(now - 3_600_000 + i * 1000, 2.0))
            .collect(),
    )
    .await;
    store.checkpoint().await.unwrap();
    assert_eq!(store.stats().unwrap().chunks, 8);
    // Hidden before they are dropped.
    assert_eq!(raw(&store, &s, 0, i64::MAX).len(), 40);
    let r = store.drop_before(now - 30 * day).unwrap();
    assert_eq!((r.chunks, r.points), (4, 40));
    assert_eq!(store.stats().unwrap().chunks, 4);
    store.close().await.unwrap();
    // Without retention the dropped points are really gone, the others still there.
    let store = open(dir.path(), opts()).await;
    let got = raw(&store, &s, 0, i64::MAX);
    assert_eq!(got.len(), 40);
    assert!(got.iter().all(|p| p.1 == 2.0));
    store.close().await.unwrap();
}

/// Copies a running store's files, as a crash at this moment would leave them: everything that
/// `append` acknowledged is in the WAL or in a committed redb transaction.
fn crash_image(src: &std::path::Path, dst: &std::path::Path) {
    std::fs::create_dir_all(dst.join("wal")).unwrap();
    std::fs::copy(src.join("series.redb"), dst.join("series.redb")).unwrap();
    for e in std::fs::read_dir(src.join("wal")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join("wal").join(e.file_name())).unwrap();
    }
}

fn last_segment(dir: &std::path::Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_wal_tail_keeps_everything_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = sid("ws-4", Quantity::Ph);
    let store = open(dir.path(), opts()).await;
    let mut expect = Vec::new();
    for i in 0..30i64 {
        let p = pt(T0 + i, 7.0 + i as f64 / 100.0);
        expect.push((p.ts_ms, p.value));
        put(&store, origin("ag", 1, i as u64 + 1), &s, vec![p]).await;
    }
    let torn = tempfile::tempdir().unwrap();
    crash_image(dir.path(), torn.path());
    let tail = tempfile::tempdir().unwrap();
    crash_image(dir.path(), tail.path());
    store.close().await.unwrap();

    // The last record loses its last 3 bytes: the crash hit in the middle of writing it.
    let seg = last_segment(torn.path());
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let store = open(torn.path(), opts()).await;
    assert_eq!(raw(&store, &s, 0, i64::MAX), expect[..29].to_vec());
    // Replayed from the WAL: recovered (republished once), and never written again.
    assert_eq!(
        put(&store, origin("ag", 1, 29), &s, vec![pt(1, 1.0)]).await,
        Appended::Recovered
    );
    assert_eq!(
        put(&store, origin("ag", 1, 30), &s, vec![pt(T0 + 29, 7.29)]).await,
        Appended::Stored
    );
    store.close().await.unwrap();
    let store = open(torn.path(), opts()).await;
    assert_eq!(raw(&store, &s, 0, i64::MAX), expect);
    store.close().await.unwrap();

    // Garbage after the last whole record (a half-written frame header) is cut off too.
    let seg = last_segment(tail.path());
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(&mut f, &[0x13, 0, 0, 0, 0xde, 0xad]).unwrap();
    drop(f);
    let store = open(tail.path(), opts()).await;
    assert_eq!(raw(&store, &s, 0, i64::MAX), expect);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_chunk_is_reported_not_panicked() {
    let dir = tempfile::tempdir().unwrap();
    let s = sid("ws-5", Quantity::WaterLevel);
    let store = open(dir.path(), opts()).await;
    put(
        &store,
        None,
        &s,
        (0..30)
            .map(|i| pt(T0 + i * 1000, 1.0 + i as f64 / 1000.0))
            .collect(),
    )
    .await;
    store.close().await.unwrap();
    // Damage one stored chunk through redb itself, as bit rot inside a value would look.
    {
        use redb::ReadableTable;
        let db = redb::Database::create(dir.path().join("series.redb")).unwrap();
        let def: redb::TableDefinition<(u32, i64, u32), &[u8]> =
            redb::TableDefinition::new("chunks");
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(def).unwrap();
            let key = (0u32, T0 + 10_000, 1u32);
            let mut v = t.get(key).unwrap().expect("second chunk").value().to_vec();
            let mid = v.len() / 2;
            v[mid] ^= 0x55;
            t.insert(key, v.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let store = open(dir.path(), opts()).await;
    let e = store
        .query(&Query {
            series: s.clone(),
            from_ms: 0,
            to_ms: i64::MAX,
            step_ms: None,
            agg: Agg::Avg,
        })
        .unwrap_err();
    assert!(matches!(e, StoreError::Corrupt(_)), "{e}");
    // Ranges that avoid the damaged chunk still work.
    assert_eq!(raw(&store, &s, T0, T0 + 10_000).len(), 10);
    store.close().await.unwrap();
}
