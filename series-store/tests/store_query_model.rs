//! Property test: the store answers every query like a naive model (a sorted map where the last
//! write of a timestamp wins), whatever the write order, chunk size, checkpoints and restarts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use protocols::{Quality, Quantity};
use series_store::{Agg, Point, Query, SeriesId, SeriesStore, StoreOptions, TsStore, WriteBatch};

#[derive(Clone, Debug)]
enum Op {
    Write(Vec<(i64, f64)>),
    Checkpoint,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let value = prop_oneof![
        (-2000i64..2000).prop_map(|i| i as f64 / 100.0),
        (0i64..3).prop_map(|i| i as f64),
        -1.0e6f64..1.0e6,
    ];
    prop_oneof![
        12 => proptest::collection::vec((0i64..400, value), 1..12).prop_map(Op::Write),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Reopen),
    ]
}

fn agg() -> impl Strategy<Value = Agg> {
    prop_oneof![
        Just(Agg::Avg),
        Just(Agg::Min),
        Just(Agg::Max),
        Just(Agg::Last),
        Just(Agg::Count)
    ]
}

/// The reference answer.
fn model(
    m: &BTreeMap<i64, f64>,
    from: i64,
    to: i64,
    step: Option<i64>,
    agg: Agg,
) -> Vec<(i64, f64)> {
    let pts: Vec<(i64, f64)> = m.range(from..to).map(|(&t, &v)| (t, v)).collect();
    let Some(step) = step else { return pts };
    let mut buckets: BTreeMap<i64, Vec<(i64, f64)>> = BTreeMap::new();
    for (t, v) in pts {
        buckets
            .entry(from + (t - from).div_euclid(step) * step)
            .or_default()
            .push((t, v));
    }
    buckets
        .into_iter()
        .map(|(b, v)| {
            let vals = v.iter().map(|p| p.1);
            let r = match agg {
                Agg::Avg => vals.sum::<f64>() / v.len() as f64,
                Agg::Min => vals.fold(f64::INFINITY, f64::min),
                Agg::Max => vals.fold(f64::NEG_INFINITY, f64::max),
                Agg::Last => v.last().unwrap().1,
                Agg::Count => v.len() as f64,
            };
            (b, r)
        })
        .collect()
}

fn open(dir: &std::path::Path, chunk_points: usize, span: u64) -> TsStore {
    TsStore::open(
        dir,
        StoreOptions {
            chunk_points,
            chunk_max_span: Duration::from_millis(span),
            retention: None,
            checkpoint_interval: Duration::from_secs(3600),
            group_commit: Duration::ZERO,
            ..StoreOptions::default()
        },
    )
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn queries_match_the_model(
        ops in proptest::collection::vec(op(), 1..40),
        chunk_points in 1usize..12,
        span in 5u64..200,
        queries in proptest::collection::vec(
            (-10i64..420, 0i64..430, proptest::option::of(1i64..150), agg()), 12),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let s = SeriesId { device: Arc::from("d"), quantity: Quantity::WaterLevel };
        let mut store = open(dir.path(), chunk_points, span);
        let mut m = BTreeMap::new();
        for op in &ops {
            match op {
                Op::Write(pts) => {
                    for &(t, v) in pts {
                        m.insert(t, v);
                    }
                    let batch = WriteBatch {
                        origin: None,
                        series: vec![(s.clone(), pts.iter().map(|&(ts_ms, value)| Point {
                            ts_ms, value, quality: Quality::Good,
                        }).collect())],
                    };
                    rt.block_on(store.append(batch)).unwrap();
                }
                Op::Checkpoint => rt.block_on(store.checkpoint()).unwrap(),
                Op::Reopen => {
                    rt.block_on(store.close()).unwrap();
                    store = open(dir.path(), chunk_points, span);
                }
            }
        }
        for (from, len, step, agg) in queries {
            let to = from + len;
            let got = store.query(&Query { series: s.clone(), from_ms: from, to_ms: to, step_ms: step, agg }).unwrap();
            let want = model(&m, from, to, step, agg);
            prop_assert_eq!(got.len(), want.len(), "{:?} {:?} {:?} {:?}: {:?} vs {:?}", from, to, step, agg, got, want);
            for (g, w) in got.iter().zip(&want) {
                prop_assert_eq!(g.0, w.0);
                let tol = 1e-9 * w.1.abs().max(1.0);
                prop_assert!((g.1 - w.1).abs() <= tol, "{:?} {:?} {:?} {:?}: {:?} vs {:?}", from, to, step, agg, got, want);
            }
        }
        // `latest` is the newest timestamp's value.
        let latest = store.latest("d").unwrap();
        prop_assert_eq!(latest.len(), usize::from(!m.is_empty()));
        if let Some((&t, &v)) = m.last_key_value() {
            prop_assert_eq!((latest[0].1.ts_ms, latest[0].1.value), (t, v));
        }
        rt.block_on(store.close()).unwrap();
    }
}
