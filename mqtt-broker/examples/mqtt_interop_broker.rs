//! The embedded broker set up for the Eclipse Paho interoperability suite
//! (paho.mqtt.testing/interoperability, `client_test.py` and `client_test5.py`).
//!
//! ```text
//! cargo run --release -p hub --example mqtt_interop_broker -- 127.0.0.1:1883
//! ```
//! The suite connects anonymously with its own client ids and uses topics outside the
//! contract (`TopicA`, `Topic/C`, `$SYS/...`), so this harness lets every client in as an app
//! named after its client id and allows every topic except the suite's "no subscribe" filter
//! (`test/nosubscribe`). The hub itself never runs this policy: it starts the broker with
//! `Broker::start`, which applies the contract's rules.

use std::sync::Arc;

use mqtt_broker::ingress::{AuthError, Authenticator, Disposition, IngressEvent};
use mqtt_broker::{AccessPolicy, Broker, BrokerConfig};
use protocols::access::Principal;

struct AnyClient;

impl Authenticator for AnyClient {
    fn authenticate(
        &self,
        client_id: &str,
        _username: Option<&str>,
        _password: Option<&[u8]>,
    ) -> impl std::future::Future<Output = Result<Arc<Principal>, AuthError>> + Send {
        let p = Arc::new(Principal::App {
            id: client_id.to_string(),
            grants: Vec::new(),
        });
        async move { Ok(p) }
    }
}

struct SuiteAccess;

impl AccessPolicy for SuiteAccess {
    fn may_publish(&self, _who: &Principal, _topic: &str) -> Result<(), String> {
        Ok(())
    }
    fn may_subscribe(&self, _who: &Principal, filter: &str) -> Result<(), String> {
        if filter == "test/nosubscribe" {
            Err("not allowed by the suite's configuration".into())
        } else {
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let addrs = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<Vec<_>, _>>()?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    // The suite expects a broker that caps keep alive at 60 s (test_server_keep_alive).
    let mut config = BrokerConfig::new(addrs);
    config.max_keep_alive = Some(60);
    let broker = Broker::start_with_access(config, AnyClient, SuiteAccess, tx).await?;
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            if let IngressEvent::Message(mut m) = ev {
                m.finish(Disposition::Accepted);
            }
        }
    });
    tokio::signal::ctrl_c().await?;
    broker.shutdown().await;
    Ok(())
}
