//! A full disk, on a real small filesystem (a tmpfs this test mounts; it runs as root): the store
//! refuses writes while it cannot write, says so in `health`, and takes writes again by itself
//! once space is freed, without losing or doubling anything it acknowledged.

mod small_disk;

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocols::{Quality, Quantity};
use series_store::{
    Appended, Origin, Point, Query, SeriesId, SeriesStore, StoreError, StoreHealth, StoreOptions,
    TsStore, WriteBatch,
};
use small_disk::SmallDisk;

fn level() -> SeriesId {
    SeriesId {
        device: Arc::from("WL-0001"),
        quantity: Quantity::WaterLevel,
    }
}

/// Message `seq` of agent AG-0001: 32 points from `seq * 1000` ms.
fn batch(seq: u64) -> WriteBatch {
    let base = seq as i64 * 1000;
    WriteBatch {
        origin: Some(Origin {
            agent: Arc::from("AG-0001"),
            stream: 1,
            seq,
        }),
        series: vec![(
            level(),
            (0..32)
                .map(|i| Point {
                    ts_ms: base + i,
                    value: seq as f64 + i as f64 / 100.0,
                    quality: Quality::Good,
                })
                .collect(),
        )],
    }
}

fn opts() -> StoreOptions {
    StoreOptions {
        retention: None,
        chunk_points: 64,
        cache_bytes: 1 << 20,
        checkpoint_interval: Duration::from_secs(3600),
        group_commit: Duration::from_millis(1),
        ..StoreOptions::default()
    }
}

fn all_points(store: &TsStore) -> Vec<(i64, f64)> {
    store
        .query(&Query {
            series: level(),
            from_ms: 0,
            to_ms: i64::MAX,
            step_ms: None,
            agg: series_store::Agg::Last,
        })
        .expect("query")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_refuses_writes_then_recovers_without_restart() {
    let disk = SmallDisk::mount("16m");
    let dir = disk.path().join("series");
    let store = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || TsStore::open(dir, opts()))
            .await
            .expect("open task")
            .expect("open store")
    };

    // Acknowledged before the disk fills.
    let mut acked: Vec<u64> = Vec::new();
    for seq in 1..=50 {
        assert_eq!(store.append(batch(seq)).await.unwrap(), Appended::Stored);
        acked.push(seq);
    }
    store
        .checkpoint()
        .await
        .expect("checkpoint before the disk fills");

    let filler = disk.fill(0);
    // Appends go on until the log needs a page the filesystem no longer has.
    let mut seq = 51;
    let first_error = loop {
        assert!(seq < 20_000, "the store never noticed the full disk");
        match store.append(batch(seq)).await {
            Ok(Appended::Stored) => acked.push(seq),
            Ok(other) => panic!("seq {seq}: {other:?}"),
            Err(e) => break e,
        }
        seq += 1;
    };
    let failed_seq = seq;
    assert!(
        first_error.to_string().contains("No space left"),
        "{first_error}"
    );
    match store.health() {
        StoreHealth::Failed { reason, since_ms } => {
            assert!(reason.contains("No space left"), "{reason}");
            assert!(since_ms > 0);
        }
        StoreHealth::Writable => panic!("health says writable after a failed write"),
    }
    // While the disk stays full: refused, clearly, and still failing after a reopen attempt.
    for _ in 0..3 {
        match store.append(batch(failed_seq + 1)).await {
            Err(StoreError::Stopped(reason)) => assert!(reason.contains("No space left")),
            other => panic!("expected Stopped while the disk is full, got {other:?}"),
        }
    }
    // Queries keep answering from what was stored (between reopen attempts).
    let before_free = all_points(&store).len();
    assert!(before_free >= acked.len() * 32, "{before_free}");

    std::fs::remove_file(&filler).expect("free the disk");

    // The first refused message is redelivered until the store takes it again (an agent does
    // this on its own schedule); reopen attempts back off up to 30 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        match store.append(batch(failed_seq)).await {
            Ok(a) => break a,
            Err(e) => {
                assert!(Instant::now() < deadline, "store did not recover: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // Its record may or may not have reached the log before the failure: stored now, or
    // replayed by the reopen and answered as a first redelivery.
    assert!(
        matches!(answer, Appended::Stored | Appended::Recovered),
        "{answer:?}"
    );
    acked.push(failed_seq);
    assert_eq!(store.health(), StoreHealth::Writable);
    assert_eq!(store.stats().unwrap().recoveries, 1);

    // Acknowledged messages redelivered are duplicates; new ones are stored.
    for &s in &acked[..3] {
        assert_eq!(store.append(batch(s)).await.unwrap(), Appended::Duplicate);
    }
    for s in failed_seq + 1..failed_seq + 20 {
        assert_eq!(store.append(batch(s)).await.unwrap(), Appended::Stored);
        acked.push(s);
    }

    let expect: Vec<(i64, f64)> = {
        let mut v: Vec<(i64, f64)> = acked
            .iter()
            .flat_map(|&s| batch(s).series.remove(0).1)
            .map(|p| (p.ts_ms, p.value))
            .collect();
        v.sort_by_key(|p| p.0);
        v
    };
    assert_eq!(all_points(&store), expect);

    // And after a restart, the same.
    store.close().await.expect("close");
    drop(store);
    let store = tokio::task::spawn_blocking(move || TsStore::open(dir, opts()))
        .await
        .expect("open task")
        .expect("reopen store");
    assert_eq!(all_points(&store), expect);
    assert_eq!(
        store.append(batch(acked[0])).await.unwrap(),
        Appended::Duplicate
    );
    store.close().await.expect("close");
}
