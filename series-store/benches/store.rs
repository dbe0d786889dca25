//! Store benchmarks: append throughput (group commit, batches of 1000 points), on-disk bytes per
//! point for realistic sensor series (printed as a table), chunk codec speed, and query latency
//! (raw day, one-minute averages over a day).
//!
//! `cargo bench -p series-store --bench store`; `STORE_BENCH_CHUNKS=120,240,480,1000` also prints bytes
//! per point for those chunk sizes.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use protocols::{Quality, Quantity};
use series_store::{
    Agg, Point, Query, SeriesId, SeriesStore, StoreOptions, TsStore, WriteBatch, codec,
};
use tokio::task::JoinSet;

#[path = "common/realistic.rs"]
mod realistic;
use realistic::{DAY, Rng, T0, realistic, round_to};

fn opts(chunk_points: usize) -> StoreOptions {
    StoreOptions {
        chunk_points,
        retention: None,
        checkpoint_interval: Duration::from_secs(3600),
        ..StoreOptions::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// (apparent file sizes, allocated disk blocks) of everything under `dir`. redb grows its file
/// by doubling (sparse on ext4), so the blocks are what the disk really holds.
fn dir_bytes(dir: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut n = (0, 0);
    for e in std::fs::read_dir(dir).expect("dir").flatten() {
        let m = e.metadata().expect("metadata");
        let (a, b) = if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            (m.len(), m.blocks() * 512)
        };
        n.0 += a;
        n.1 += b;
    }
    n
}

/// Chunk payload bytes per point of each series alone (the codec, no store).
fn payload_per_point(
    data: &[(&'static str, Quantity, Vec<Point>)],
    chunk_points: usize,
) -> Vec<(&'static str, f64)> {
    data.iter()
        .map(|(name, _, pts)| {
            let bytes: usize = pts
                .chunks(chunk_points)
                .map(|c| codec::encode(c).len())
                .sum();
            (*name, bytes as f64 / pts.len() as f64)
        })
        .collect()
}

/// Writes all series into one store in 1000-point batches (as the hub does), checkpoints,
/// closes, and returns bytes per point of (apparent size, allocated blocks) of redb + WAL.
fn disk_per_point(
    data: &[(&'static str, Quantity, Vec<Point>)],
    chunk_points: usize,
) -> (f64, f64) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = TsStore::open(dir.path(), opts(chunk_points)).expect("open");
    let n = data[0].2.len();
    rt.block_on(async {
        for start in (0..n).step_by(1000) {
            let series = data
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
                .collect();
            store
                .append(WriteBatch {
                    origin: None,
                    series,
                })
                .await
                .expect("append");
        }
        store.checkpoint().await.expect("checkpoint");
        store.close().await.expect("close");
    });
    let (apparent, blocks) = dir_bytes(dir.path());
    let points = (n * data.len()) as f64;
    (apparent as f64 / points, blocks as f64 / points)
}

/// The same points as InfluxDB line protocol (ms precision), for measuring a peer on them.
fn write_line_protocol(data: &[(&'static str, Quantity, Vec<Point>)], path: &str) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    for (_, q, pts) in data {
        for p in pts {
            writeln!(
                f,
                "{},device=station-1 value={:?} {}",
                q.name(),
                p.value,
                p.ts_ms
            )
            .expect("write");
        }
    }
}

fn bench_bytes_per_point(c: &mut Criterion) {
    let sizes: Vec<usize> = std::env::var("STORE_BENCH_CHUNKS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![StoreOptions::default().chunk_points]);
    let days: i64 = std::env::var("STORE_BENCH_DAYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    for jitter in [0, 5] {
        let data = realistic(days * DAY, jitter);
        if let Ok(path) = std::env::var("STORE_BENCH_LINE_PROTOCOL") {
            write_line_protocol(&data, &format!("{path}.j{jitter}.lp"));
        }
        for &n in &sizes {
            println!("chunk {n} points, timestamps on 1 s ticks ±{jitter} ms:");
            for (name, b) in payload_per_point(&data, n) {
                println!("  {name:34} {b:6.3} bytes/point (chunk payload)");
            }
            let (apparent, blocks) = disk_per_point(&data, n);
            println!(
                "  {:34} {blocks:6.3} bytes/point on disk (redb + WAL blocks, {days} days x 7 series; file sizes {apparent:.3})",
                "all"
            );
        }
    }
    // Codec speed on the water level series.
    let data = realistic(DAY, 0);
    let level: Vec<Point> = data[0].2.clone();
    let chunk = StoreOptions::default().chunk_points;
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(level.len() as u64));
    g.bench_function("encode_water_level_day", |b| {
        b.iter(|| {
            for ch in level.chunks(chunk) {
                black_box(codec::encode(ch));
            }
        })
    });
    let encoded: Vec<Vec<u8>> = level.chunks(chunk).map(codec::encode).collect();
    g.bench_function("decode_water_level_day", |b| {
        let mut out = Vec::with_capacity(level.len());
        b.iter(|| {
            out.clear();
            for e in &encoded {
                codec::decode(e, &mut out).expect("decode");
            }
            black_box(out.len())
        })
    });
    g.finish();
}

fn bench_append(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(TsStore::open(dir.path(), opts(1000)).expect("open"));
    // 100 series (20 stations x 5 quantities); a batch is 10 series x 100 points = 1000 points.
    let series: Vec<SeriesId> = (0..20)
        .flat_map(|d| {
            [
                Quantity::WaterLevel,
                Quantity::Ph,
                Quantity::Turbidity,
                Quantity::LampPower,
                Quantity::CoverOpen,
            ]
            .map(|quantity| SeriesId {
                device: Arc::from(format!("station-{d}")),
                quantity,
            })
        })
        .collect();
    let mut clock = 0i64;
    let mut rng = Rng(7);
    let mut make_batch = |k: usize| {
        let mut b = Vec::with_capacity(10);
        for s in series.iter().skip((k * 10) % series.len()).take(10) {
            let pts: Vec<Point> = (0..100)
                .map(|i| Point {
                    ts_ms: T0 + (clock + i) * 1000,
                    value: round_to(2.0 + 0.01 * rng.gauss(), 3),
                    quality: Quality::Good,
                })
                .collect();
            b.push((s.clone(), pts));
        }
        if k % 10 == 9 {
            clock += 100;
        }
        WriteBatch {
            origin: None,
            series: b,
        }
    };
    const IN_FLIGHT: usize = 32;
    let mut g = c.benchmark_group("append");
    g.throughput(Throughput::Elements((IN_FLIGHT * 1000) as u64));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(10));
    let mut k = 0usize;
    g.bench_function("32x1000_points_concurrent", |b| {
        b.iter(|| {
            let batches: Vec<WriteBatch> = (0..IN_FLIGHT)
                .map(|_| {
                    k += 1;
                    make_batch(k)
                })
                .collect();
            rt.block_on(async {
                let mut set = JoinSet::new();
                for batch in batches {
                    let store = store.clone();
                    set.spawn(async move { store.append(batch).await });
                }
                while let Some(r) = set.join_next().await {
                    r.expect("join").expect("append");
                }
            })
        })
    });
    g.throughput(Throughput::Elements(1000));
    g.bench_function("1x1000_points_latency", |b| {
        b.iter(|| {
            k += 1;
            let batch = make_batch(k);
            rt.block_on(store.append(batch)).expect("append")
        })
    });
    g.finish();
    rt.block_on(store.close()).expect("close");
}

fn bench_query(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        TsStore::open(dir.path(), opts(StoreOptions::default().chunk_points)).expect("open");
    let data = realistic(DAY, 0);
    let s = SeriesId {
        device: Arc::from("station-1"),
        quantity: Quantity::WaterLevel,
    };
    rt.block_on(async {
        for b in data[0].2.chunks(1000) {
            store
                .append(WriteBatch {
                    origin: None,
                    series: vec![(s.clone(), b.to_vec())],
                })
                .await
                .expect("append");
        }
        store.checkpoint().await.expect("checkpoint");
    });
    let q = |step, agg| Query {
        series: s.clone(),
        from_ms: T0,
        to_ms: T0 + DAY * 1000,
        step_ms: step,
        agg,
    };
    let raw = q(None, Agg::Avg);
    assert_eq!(store.query(&raw).expect("query").len(), DAY as usize);
    let mut g = c.benchmark_group("query");
    g.bench_function("raw_1_day_86400_points", |b| {
        b.iter(|| black_box(store.query(&raw).expect("query").len()))
    });
    let avg = q(Some(60_000), Agg::Avg);
    assert_eq!(store.query(&avg).expect("query").len(), 1440);
    g.bench_function("avg_1_day_1_min_step", |b| {
        b.iter(|| black_box(store.query(&avg).expect("query").len()))
    });
    let hourly = q(Some(3_600_000), Agg::Max);
    g.bench_function("max_1_day_1_hour_step", |b| {
        b.iter(|| black_box(store.query(&hourly).expect("query").len()))
    });
    g.finish();
    rt.block_on(store.close()).expect("close");
}

criterion_group!(benches, bench_bytes_per_point, bench_append, bench_query);
criterion_main!(benches);
