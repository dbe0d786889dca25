//! [`TsStore`] against the [`series_store::SeriesStore`] contract (`conformance/mod.rs`): once
//! with the points in the heads, once sealed into chunks not yet committed, once with a
//! checkpoint after every write so queries read redb.

use std::time::Duration;

use series_store::{StoreOptions, TsStore};

mod conformance;

fn opts() -> StoreOptions {
    StoreOptions {
        retention: None,
        checkpoint_interval: Duration::from_secs(3600),
        group_commit: Duration::from_millis(1),
        ..StoreOptions::default()
    }
}

async fn open(dir: &std::path::Path, o: StoreOptions) -> TsStore {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || TsStore::open(dir, o))
        .await
        .expect("open task")
        .expect("open")
}

async fn keeps_the_contract(o: StoreOptions) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), o).await;
    conformance::check_store(&store).await;
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ts_store_keeps_the_contract_from_heads() {
    keeps_the_contract(opts()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ts_store_keeps_the_contract_from_pending_chunks() {
    keeps_the_contract(StoreOptions {
        chunk_points: 2,
        ..opts()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ts_store_keeps_the_contract_from_redb() {
    keeps_the_contract(StoreOptions {
        chunk_points: 2,
        checkpoint_interval: Duration::ZERO,
        ..opts()
    })
    .await;
}

/// Copies a running store's files as a crash at this moment would leave them (everything
/// acknowledged is in the WAL or committed to redb), closes the original, opens the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ts_store_answers_recovered_after_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), opts()).await;
    let image_dir = image.path().to_path_buf();
    conformance::check_redelivery_after_crash(store, |store| async move {
        std::fs::create_dir_all(image_dir.join("wal")).expect("mkdir");
        std::fs::copy(
            dir.path().join("series.redb"),
            image_dir.join("series.redb"),
        )
        .expect("copy redb");
        for e in std::fs::read_dir(dir.path().join("wal")).expect("wal dir") {
            let e = e.expect("entry");
            std::fs::copy(e.path(), image_dir.join("wal").join(e.file_name())).expect("copy");
        }
        store.close().await.expect("close");
        open(&image_dir, opts()).await
    })
    .await;
}
