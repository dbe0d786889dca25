//! Access policy: what an authenticated client may publish, subscribe and use as client id.
//!
//! The broker asks the policy on every PUBLISH, every SUBSCRIBE filter and the will at
//! CONNECT; a refusal is answered with "not authorized" and reported to the application as
//! [`crate::ingress::IngressEvent::Refused`].

use protocols::access::Principal;

/// Decides what an authenticated client may publish and subscribe. The hub uses
/// [`ContractAccess`] (the rules of `protocols::access`, via [`crate::Broker::start`]); another policy
/// exists only for protocol conformance runs against test suites whose topics are not the
/// contract's ([`crate::Broker::start_with_access`]).
pub trait AccessPolicy: Send + Sync + 'static {
    /// Whether `who` may publish on `topic`; Err carries the reason.
    fn may_publish(&self, who: &Principal, topic: &str) -> Result<(), String>;
    /// Whether `who` may subscribe to `filter` (without `$share/group/`); Err carries the
    /// reason.
    fn may_subscribe(&self, who: &Principal, filter: &str) -> Result<(), String>;
}

/// The contract's rules: [`Principal::may_publish`] and [`Principal::may_subscribe`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ContractAccess;

impl AccessPolicy for ContractAccess {
    fn may_publish(&self, who: &Principal, topic: &str) -> Result<(), String> {
        who.may_publish(topic).map_err(|e| e.to_string())
    }
    fn may_subscribe(&self, who: &Principal, filter: &str) -> Result<(), String> {
        who.may_subscribe(filter).map_err(|e| e.to_string())
    }
}

/// Whether `client_id` may be used by `principal`: devices and agents connect with their id,
/// apps with their id or `ID.suffix`.
pub fn client_id_allowed(principal: &Principal, client_id: &str) -> bool {
    match principal {
        Principal::Device(id) | Principal::Agent(id) | Principal::SparkplugNode(id) => {
            client_id == id
        }
        Principal::App { id, .. } => {
            client_id == id
                || client_id
                    .strip_prefix(id.as_str())
                    .and_then(|r| r.strip_prefix('.'))
                    .is_some_and(|suffix| !suffix.is_empty())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_rules() {
        let d = Principal::Device("WL-1".into());
        assert!(client_id_allowed(&d, "WL-1"));
        assert!(!client_id_allowed(&d, "WL-1.x"));
        assert!(!client_id_allowed(&d, "WL-2"));
        let a = Principal::App {
            id: "cc".into(),
            grants: vec![],
        };
        assert!(client_id_allowed(&a, "cc"));
        assert!(client_id_allowed(&a, "cc.dash-1"));
        assert!(!client_id_allowed(&a, "cc."));
        assert!(!client_id_allowed(&a, "ccx"));
        assert!(!client_id_allowed(&a, "other"));
    }
}
