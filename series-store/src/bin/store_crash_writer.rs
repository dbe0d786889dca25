//! Test helper for the store's crash test (`tests/store_crash.rs`): appends batches to a
//! `TsStore` as fast as it can from several tasks and prints each acknowledged seq, until it is
//! killed. Usage: `store_crash_writer DIR FIRST_SEQ`.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use protocols::{Quality, Quantity};
use series_store::{Origin, Point, SeriesId, SeriesStore, StoreOptions, TsStore, WriteBatch};

/// Base timestamp of the generated points.
const T0: i64 = 1_700_000_000_000;
/// Devices the points are spread over.
const DEVICES: u64 = 5;
/// Points per series per batch.
const POINTS: i64 = 10;

/// The batch the crash test expects for `seq`: 10 points on `dev-{seq % 5}` water level and one
/// on its cover switch, at timestamps derived from `seq`.
fn batch(seq: u64) -> WriteBatch {
    let dev: Arc<str> = Arc::from(format!("dev-{}", seq % DEVICES));
    let base = T0 + seq as i64 * POINTS * 1000;
    let level = (0..POINTS)
        .map(|j| Point {
            ts_ms: base + j * 1000,
            value: (seq as i64 * POINTS + j) as f64 / 1000.0,
            quality: Quality::Good,
        })
        .collect();
    WriteBatch {
        origin: Some(Origin {
            agent: Arc::from("crash-agent"),
            stream: 1,
            seq,
        }),
        series: vec![
            (
                SeriesId {
                    device: dev.clone(),
                    quantity: Quantity::WaterLevel,
                },
                level,
            ),
            (
                SeriesId {
                    device: dev,
                    quantity: Quantity::CoverOpen,
                },
                vec![Point {
                    ts_ms: base,
                    value: (seq % 2) as f64,
                    quality: Quality::Good,
                }],
            ),
        ],
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .context("usage: store_crash_writer DIR FIRST_SEQ")?;
    let first: u64 = args
        .next()
        .context("usage: store_crash_writer DIR FIRST_SEQ")?
        .parse()
        .context("FIRST_SEQ")?;
    let opts = StoreOptions {
        chunk_points: 20,
        // Checkpoints and WAL rotation happen all the time, so the kill lands in every phase.
        checkpoint_interval: Duration::from_millis(30),
        checkpoint_wal_bytes: 32 << 10,
        retention: None,
        ..StoreOptions::default()
    };
    let store = Arc::new(TsStore::open(&dir, opts).context("open store")?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let next = Arc::new(AtomicU64::new(first));
    rt.block_on(async move {
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let store = store.clone();
            let next = next.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    let r = store.append(batch(seq)).await?;
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{seq} {r:?}")?;
                    out.flush()?;
                }
                #[allow(unreachable_code)]
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        anyhow::Ok(())
    })
}
