//! The engines start, answer, and survive what the cluster tests do to them.

use std::process::Command;

use engines::nats::NatsCluster;
use engines::postgres::Postgres;

fn psql(pg: &Postgres, sql: &str) -> String {
    let out = Command::new("psql")
        .args([&pg.url(), "-XAtc", sql])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn postgres_keeps_committed_rows_over_an_immediate_stop() {
    let mut pg = Postgres::start().expect("postgres starts");
    psql(&pg, "CREATE TABLE t (v int); INSERT INTO t VALUES (1), (2)");
    assert_eq!(
        psql(
            &pg,
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_partman'"
        ),
        "1",
        "pg_partman is installed"
    );
    pg.stop_immediate().expect("stops");
    assert!(
        Command::new("psql")
            .args([&pg.url(), "-XAtc", "SELECT 1"])
            .output()
            .is_ok_and(|o| !o.status.success())
    );
    pg.start_again().expect("starts again");
    assert_eq!(psql(&pg, "SELECT sum(v) FROM t"), "3");
}

#[test]
fn nats_cluster_elects_a_meta_leader_and_takes_a_node_back() {
    let mut nats = NatsCluster::start(3).expect("cluster starts");
    assert_eq!(nats.urls().len(), 3);
    nats.kill(1);
    assert!(nats.jsz(1, "").is_none(), "a killed node does not answer");
    nats.restart(1).expect("restarts");
    assert!(nats.jsz(1, "").is_some());
}
