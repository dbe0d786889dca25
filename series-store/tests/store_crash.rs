//! A real crash: a child process (`store_crash_writer`) appends as fast as it can and prints
//! each acknowledged seq; it is killed with SIGKILL at a random moment, three times on the same
//! data directory. The reopened store must hold every acknowledged batch, once.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use protocols::Quantity;
use series_store::{
    Agg, Appended, Origin, Query, SeriesId, SeriesStore, StoreOptions, TsStore, WriteBatch,
};

const T0: i64 = 1_700_000_000_000;
const DEVICES: u64 = 5;
const POINTS: i64 = 10;

/// Kills the child even when the test fails.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn series(dev: u64, quantity: Quantity) -> SeriesId {
    SeriesId {
        device: Arc::from(format!("dev-{dev}")),
        quantity,
    }
}

fn all(store: &TsStore, s: &SeriesId) -> Vec<(i64, f64)> {
    store
        .query(&Query {
            series: s.clone(),
            from_ms: 0,
            to_ms: i64::MAX,
            step_ms: None,
            agg: Agg::Avg,
        })
        .unwrap()
}

/// Runs the writer until `acks` acknowledgements, then SIGKILL; returns every acked seq.
fn run_and_kill(dir: &std::path::Path, first: u64, acks: usize, extra: Duration) -> Vec<u64> {
    let child = Command::new(env!("CARGO_BIN_EXE_store_crash_writer"))
        .arg(dir)
        .arg(first.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut guard = Guard(child);
    let stdout = guard.0.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.len() < acks {
        assert!(Instant::now() < deadline, "writer too slow");
        let line = lines.next().expect("writer ended early").unwrap();
        acked.push(parse(&line));
    }
    // Let it run on a little, a random while, so the kill lands anywhere in its cycle.
    std::thread::sleep(extra);
    guard.0.kill().unwrap();
    guard.0.wait().unwrap();
    // Lines it printed before dying are acknowledgements too.
    for line in lines {
        acked.push(parse(&line.unwrap()));
    }
    acked
}

fn parse(line: &str) -> u64 {
    let (seq, r) = line.split_once(' ').unwrap();
    assert_eq!(r, "Stored", "{line}");
    seq.parse().unwrap()
}

#[test]
fn kill_9_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}");
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut acked: Vec<u64> = Vec::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for round in 0..3u64 {
        let first = 1 + round * 1_000_000;
        let n = 200 + rnd(1500) as usize;
        let extra = Duration::from_micros(rnd(30_000));
        acked.extend(run_and_kill(dir.path(), first, n, extra));

        let store = TsStore::open(
            dir.path(),
            StoreOptions {
                retention: None,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        let mut level: BTreeMap<u64, BTreeMap<i64, f64>> = BTreeMap::new();
        let mut cover: BTreeMap<u64, BTreeMap<i64, f64>> = BTreeMap::new();
        for d in 0..DEVICES {
            for (m, q) in [
                (&mut level, Quantity::WaterLevel),
                (&mut cover, Quantity::CoverOpen),
            ] {
                let pts = all(&store, &series(d, q));
                assert!(
                    pts.windows(2).all(|w| w[0].0 < w[1].0),
                    "one point per timestamp"
                );
                // The metadata path counts the same points as the raw query.
                let count = store
                    .query(&Query {
                        series: series(d, q),
                        from_ms: 0,
                        to_ms: i64::MAX,
                        step_ms: Some(i64::MAX / 2),
                        agg: Agg::Count,
                    })
                    .unwrap();
                assert_eq!(count.first().map_or(0.0, |c| c.1), pts.len() as f64);
                m.insert(d, pts.into_iter().collect());
            }
        }
        for &seq in &acked {
            let d = seq % DEVICES;
            let base = T0 + seq as i64 * POINTS * 1000;
            for j in 0..POINTS {
                let v = level[&d].get(&(base + j * 1000));
                assert_eq!(
                    v,
                    Some(&((seq as i64 * POINTS + j) as f64 / 1000.0)),
                    "round {round}: acked seq {seq} point {j}"
                );
            }
            assert_eq!(cover[&d].get(&base), Some(&((seq % 2) as f64)));
        }
        // Redelivery of acknowledged batches after the crash is recognised.
        rt.block_on(async {
            for &seq in acked.iter().rev().take(50) {
                let redeliver = || {
                    store.append(WriteBatch {
                        origin: Some(Origin {
                            agent: Arc::from("crash-agent"),
                            stream: 1,
                            seq,
                        }),
                        series: vec![],
                    })
                };
                // Replayed from the WAL: `Recovered` once; checkpointed: `Duplicate`.
                let r = redeliver().await.unwrap();
                assert!(
                    matches!(r, Appended::Duplicate | Appended::Recovered),
                    "round {round}: seq {seq}: {r:?}"
                );
                let r = redeliver().await.unwrap();
                assert_eq!(r, Appended::Duplicate, "round {round}: seq {seq}");
            }
            store.close().await.unwrap();
        });
        eprintln!("round {round}: {} acknowledged batches intact", acked.len());
    }
}
