//! The [`SeriesStore`] contract as assertions, generic over the backend.
//!
//! Every backend runs the same checks: [`TsStore`](series_store::TsStore) in
//! `tests/store_conformance.rs`, a PostgreSQL backend in its own test the same way. A backend's
//! test opens an empty store without retention and calls [`check_store`], then
//! [`check_redelivery_after_crash`] with a function that crashes and reopens it.
//!
//! Timestamps are recent (yesterday) so that a backend with a retention longer than a few days
//! passes too.

use std::future::Future;
use std::sync::Arc;

use protocols::{Quality, Quantity};
use series_store::{
    Agg, Appended, Origin, Point, Query, SeriesId, SeriesStore, StoreError, WriteBatch,
};

/// A whole hour about a day ago, so bucket boundaries are round.
fn base() -> i64 {
    const HOUR: i64 = 3_600_000;
    (protocols::time::now_ms() / HOUR - 24) * HOUR
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

fn origin(agent: &str, stream: u64, seq: u64) -> Option<Origin> {
    Some(Origin {
        agent: Arc::from(agent),
        stream,
        seq,
    })
}

fn batch(origin: Option<Origin>, s: &SeriesId, pts: Vec<Point>) -> WriteBatch {
    WriteBatch {
        origin,
        series: vec![(s.clone(), pts)],
    }
}

fn query(s: &SeriesId, from_ms: i64, to_ms: i64, step_ms: Option<i64>, agg: Agg) -> Query {
    Query {
        series: s.clone(),
        from_ms,
        to_ms,
        step_ms,
        agg,
    }
}

fn raw<S: SeriesStore>(store: &S, s: &SeriesId, from: i64, to: i64) -> Vec<(i64, f64)> {
    store
        .query(&query(s, from, to, None, Agg::Avg))
        .expect("raw query")
}

/// Runs every check that needs no restart, on an empty store without retention.
pub async fn check_store<S: SeriesStore>(store: &S) {
    duplicates_write_nothing(store).await;
    concurrent_redeliveries_store_once(store).await;
    batches_are_whole(store).await;
    raw_ranges_are_half_open(store).await;
    buckets_align_to_from_and_skip_empty(store).await;
    malformed_queries_are_refused(store);
    latest_is_the_newest_point(store).await;
}

/// `Stored` once per origin; a redelivery is `Duplicate` and writes nothing; other streams and
/// agents are separate; batches without an origin are always stored.
pub async fn duplicates_write_nothing<S: SeriesStore>(store: &S) {
    let t = base();
    let s = sid("conf-dedup", Quantity::WaterLevel);
    let first = store
        .append(batch(origin("conf-a", 1, 1), &s, vec![pt(t, 1.0)]))
        .await
        .expect("append");
    assert_eq!(first, Appended::Stored);
    let again = store
        .append(batch(origin("conf-a", 1, 1), &s, vec![pt(t + 1, 2.0)]))
        .await
        .expect("append");
    assert_eq!(again, Appended::Duplicate);
    assert_eq!(raw(store, &s, t, t + 10), vec![(t, 1.0)]);
    for o in [origin("conf-a", 2, 1), origin("conf-b", 1, 1), None, None] {
        let r = store
            .append(batch(o, &s, vec![pt(t + 2, 3.0)]))
            .await
            .expect("append");
        assert_eq!(r, Appended::Stored);
    }
    assert_eq!(raw(store, &s, t, t + 10), vec![(t, 1.0), (t + 2, 3.0)]);
}

/// The same origin appended four times at once is stored exactly once.
pub async fn concurrent_redeliveries_store_once<S: SeriesStore>(store: &S) {
    let t = base();
    let s = sid("conf-concurrent", Quantity::Ph);
    let one = |v: f64| store.append(batch(origin("conf-c", 1, 7), &s, vec![pt(t, v)]));
    let (a, b, c, d) = tokio::join!(one(1.0), one(2.0), one(3.0), one(4.0));
    let answers = [a, b, c, d].map(|r| r.expect("append"));
    let stored = answers.iter().filter(|&&r| r == Appended::Stored).count();
    let dup = answers
        .iter()
        .filter(|&&r| r == Appended::Duplicate)
        .count();
    assert_eq!((stored, dup), (1, 3), "{answers:?}");
    assert_eq!(raw(store, &s, t, t + 1).len(), 1);
}

/// A batch over several series is visible as a whole once it resolves; within a batch and
/// across batches the last write of a timestamp wins.
pub async fn batches_are_whole<S: SeriesStore>(store: &S) {
    let t = base();
    let level = sid("conf-batch", Quantity::WaterLevel);
    let cover = sid("conf-batch", Quantity::CoverOpen);
    let r = store
        .append(WriteBatch {
            origin: origin("conf-d", 1, 1),
            series: vec![
                (
                    level.clone(),
                    (0..5).map(|i| pt(t + i * 1000, 2.5)).collect(),
                ),
                (
                    cover.clone(),
                    vec![pt(t, 0.0), pt(t + 500, 1.0), pt(t, 1.0)],
                ),
            ],
        })
        .await
        .expect("append");
    assert_eq!(r, Appended::Stored);
    assert_eq!(raw(store, &level, t, t + 5000).len(), 5);
    // Out of order within the batch, and the repeated `t` wins with its later value.
    assert_eq!(
        raw(store, &cover, t, t + 5000),
        vec![(t, 1.0), (t + 500, 1.0)]
    );
    store
        .append(batch(None, &level, vec![pt(t + 2000, 9.0)]))
        .await
        .expect("append");
    assert_eq!(
        raw(store, &level, t + 2000, t + 2001),
        vec![(t + 2000, 9.0)]
    );
}

/// Raw points in `[from, to)`, oldest first, whatever order they were written in.
pub async fn raw_ranges_are_half_open<S: SeriesStore>(store: &S) {
    let t = base();
    let s = sid("conf-raw", Quantity::Turbidity);
    // Newest first, in two batches, so the store must sort.
    for half in [5..10, 0..5] {
        let pts = half.rev().map(|i| pt(t + i * 1000, i as f64)).collect();
        store.append(batch(None, &s, pts)).await.expect("append");
    }
    let all: Vec<(i64, f64)> = (0..10).map(|i| (t + i * 1000, i as f64)).collect();
    assert_eq!(raw(store, &s, t, t + 10_000), all);
    assert_eq!(raw(store, &s, t + 2000, t + 5000), all[2..5].to_vec());
    assert_eq!(raw(store, &s, t + 2001, t + 5001), all[3..6].to_vec());
    assert!(raw(store, &s, t + 3000, t + 3000).is_empty());
    assert!(raw(store, &sid("conf-none", Quantity::Ph), t, t + 10_000).is_empty());
}

/// Buckets start at `from + k * step`, hold the points of `[start, start + step)` inside the
/// range, carry their aggregate, and are left out when empty.
pub async fn buckets_align_to_from_and_skip_empty<S: SeriesStore>(store: &S) {
    let t = base();
    let s = sid("conf-buckets", Quantity::WaterLevel);
    // Points every second for 0..20 s and 40..50 s: nothing in 20..40 s.
    let pts: Vec<Point> = (0..20)
        .chain(40..50)
        .map(|i| pt(t + i * 1000, i as f64))
        .collect();
    store.append(batch(None, &s, pts)).await.expect("append");
    let q = |from: i64, to: i64, step: i64, agg| {
        store
            .query(&query(&s, from, to, Some(step), agg))
            .expect("bucket query")
    };
    // Aligned to `from` = t + 5 s, 10 s wide: [5,15) [15,25) [25,35) empty, [35,45) [45,48).
    let from = t + 5000;
    let to = t + 48_000;
    let starts = |v: &[(i64, f64)]| v.iter().map(|b| (b.0 - t) / 1000).collect::<Vec<_>>();
    let count = q(from, to, 10_000, Agg::Count);
    assert_eq!(starts(&count), vec![5, 15, 35, 45]);
    assert_eq!(
        count.iter().map(|b| b.1).collect::<Vec<_>>(),
        vec![10.0, 5.0, 5.0, 3.0]
    );
    let values = |agg| -> Vec<f64> { q(from, to, 10_000, agg).into_iter().map(|b| b.1).collect() };
    assert_eq!(values(Agg::Min), vec![5.0, 15.0, 40.0, 45.0]);
    assert_eq!(values(Agg::Max), vec![14.0, 19.0, 44.0, 47.0]);
    assert_eq!(values(Agg::Last), vec![14.0, 19.0, 44.0, 47.0]);
    assert_eq!(values(Agg::Avg), vec![9.5, 17.0, 42.0, 46.0]);
    // One bucket wider than the range holds exactly the range.
    assert_eq!(q(t, t + 20_000, 3_600_000, Agg::Count), vec![(t, 20.0)]);
}

/// `to` before `from` and steps that are not positive are `BadQuery`.
pub fn malformed_queries_are_refused<S: SeriesStore>(store: &S) {
    let t = base();
    let s = sid("conf-raw", Quantity::Turbidity);
    for q in [
        query(&s, t + 1, t, None, Agg::Avg),
        query(&s, t, t + 1000, Some(0), Agg::Avg),
        query(&s, t, t + 1000, Some(-1000), Agg::Max),
    ] {
        let e = store.query(&q).expect_err("malformed query");
        assert!(matches!(e, StoreError::BadQuery(_)), "{q:?}: {e}");
    }
}

/// `latest`: per quantity the point with the newest timestamp, even when an older one was
/// written after it; sorted by quantity; nothing for an unknown device.
pub async fn latest_is_the_newest_point<S: SeriesStore>(store: &S) {
    let t = base();
    let level = sid("conf-latest", Quantity::WaterLevel);
    let ph = sid("conf-latest", Quantity::Ph);
    store
        .append(batch(None, &ph, vec![pt(t + 5000, 7.1)]))
        .await
        .expect("append");
    store
        .append(batch(
            None,
            &level,
            vec![pt(t + 1000, 1.0), pt(t + 3000, 3.0)],
        ))
        .await
        .expect("append");
    // A backlog point, older than the newest: not the latest.
    store
        .append(batch(None, &level, vec![pt(t + 2000, 2.0)]))
        .await
        .expect("append");
    let mut expect = vec![
        (Quantity::WaterLevel, pt(t + 3000, 3.0)),
        (Quantity::Ph, pt(t + 5000, 7.1)),
    ];
    expect.sort_by_key(|(q, _)| *q);
    assert_eq!(store.latest("conf-latest").expect("latest"), expect);
    assert!(store.latest("conf-nobody").expect("latest").is_empty());
}

/// A batch acknowledged `Stored` right before a crash: after `crash_and_reopen` its points and
/// `latest` are there, its first redelivery is `Recovered`, later ones `Duplicate`, and neither
/// writes anything. `crash_and_reopen` must stop the store the way a killed process would (no
/// clean close) and open it again.
pub async fn check_redelivery_after_crash<S, F, Fut>(store: S, crash_and_reopen: F)
where
    S: SeriesStore,
    F: FnOnce(S) -> Fut,
    Fut: Future<Output = S>,
{
    let t = base();
    let s = sid("conf-crash", Quantity::WaterLevel);
    let pts = vec![pt(t, 1.25), pt(t + 1000, 1.5)];
    let r = store
        .append(batch(origin("conf-e", 3, 42), &s, pts))
        .await
        .expect("append");
    assert_eq!(r, Appended::Stored);
    let store = crash_and_reopen(store).await;
    let expect = vec![(t, 1.25), (t + 1000, 1.5)];
    assert_eq!(raw(&store, &s, t, t + 2000), expect);
    assert_eq!(
        store.latest("conf-crash").expect("latest"),
        vec![(Quantity::WaterLevel, pt(t + 1000, 1.5))]
    );
    for answer in [
        Appended::Recovered,
        Appended::Duplicate,
        Appended::Duplicate,
    ] {
        let r = store
            .append(batch(origin("conf-e", 3, 42), &s, vec![pt(t + 500, 9.0)]))
            .await
            .expect("append");
        assert_eq!(r, answer);
    }
    assert_eq!(raw(&store, &s, t, t + 2000), expect);
}
