//! Alerts about the hub itself, not about a device: the disk below `[hub] min_free_disk`, the
//! time-series store unable to write. They are published like device alerts, on
//! `v1/alerts/{level}/hub`, so the command center sees them where it sees every other alert,
//! and listed by `GET /api/v1/alerts`.
//!
//! They live in memory only. The condition they describe is read again every second from the
//! hub's own state (and a full disk is exactly when a file could not take them), so after a
//! restart an ongoing condition is raised again within a second. They have no CAP document:
//! CAP is for warnings to the public, and a full disk is the operators' business.

use std::collections::{HashMap, VecDeque};

use protocols::messages::{Alert, AlertState};
use protocols::time::Rfc3339;
use protocols::topic::AlertLevel;

use super::{AckError, AlertDoc};

/// The device segment of a hub-level alert's topic and its `device` field; no device may use
/// this id (the configuration refuses it).
pub const HUB_DEVICE: &str = crate::config::RESERVED_DEVICE_ID;
/// The `kind` of a hub-level alert.
pub const HUB_KIND: &str = "hub";
/// Cleared hub-level alerts kept for listing.
const CLEARED_KEPT: usize = 100;

/// A condition of the hub that raises an alert while it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HubCondition {
    /// Free disk space is below `[hub] min_free_disk`: new data is refused.
    DiskLow,
    /// The time-series store cannot write and is reopening by itself.
    StoreFailing,
}

impl HubCondition {
    /// The alert's `rule`.
    pub fn rule(self) -> &'static str {
        match self {
            HubCondition::DiskLow => "hub-disk-low",
            HubCondition::StoreFailing => "hub-store-failing",
        }
    }

    /// Its level: a hub that refuses data is serious (orange); one whose store cannot write
    /// at all is the worst (red).
    pub fn level(self) -> AlertLevel {
        match self {
            HubCondition::DiskLow => AlertLevel::Orange,
            HubCondition::StoreFailing => AlertLevel::Red,
        }
    }
}

/// What a hub-level alert says while it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// The measured value (free bytes, say).
    pub value: Option<f64>,
    /// The limit it crossed.
    pub threshold: Option<f64>,
    /// Unit of both.
    pub unit: &'static str,
    /// Human-readable text.
    pub message: String,
}

/// The hub-level alerts, open and recently cleared.
#[derive(Debug, Default)]
pub struct HubAlerts {
    open: HashMap<HubCondition, AlertDoc>,
    cleared: VecDeque<AlertDoc>,
}

fn rfc(ms: i64) -> String {
    Rfc3339::from_ms(ms).to_string()
}

impl HubAlerts {
    /// Raises the alert of `c` or, if it is open, updates its value and text without a new
    /// revision. Returns the document to publish when it was raised now.
    pub fn raise(&mut self, c: HubCondition, o: Observation, now_ms: i64) -> Option<AlertDoc> {
        if let Some(doc) = self.open.get_mut(&c) {
            doc.alert.value = o.value;
            doc.alert.message = o.message;
            return None;
        }
        let doc = AlertDoc {
            alert: Alert {
                // Hub time in ms: unique across restarts, as the alerts are not stored.
                id: format!("{HUB_DEVICE}.{}.{now_ms}", c.rule()),
                rule: c.rule().to_string(),
                device: HUB_DEVICE.to_string(),
                kind: HUB_KIND.to_string(),
                quantity: None,
                level: c.level(),
                state: AlertState::Active,
                value: o.value,
                threshold: o.threshold,
                ts: rfc(now_ms),
                message: o.message,
            },
            dept: None,
            unit: o.unit.to_string(),
            raised_at: rfc(now_ms),
            acked_at: None,
            acked_by: None,
            cleared_at: None,
            superseded_by: None,
            revision: 1,
        };
        self.open.insert(c, doc.clone());
        Some(doc)
    }

    /// Clears the alert of `c` if it is open, noting why; returns the document to publish.
    pub fn clear(&mut self, c: HubCondition, note: &str, now_ms: i64) -> Option<AlertDoc> {
        let mut doc = self.open.remove(&c)?;
        doc.alert.state = AlertState::Cleared;
        doc.alert.ts = rfc(now_ms);
        doc.alert.message = format!("{} ({note})", doc.alert.message);
        doc.cleared_at = Some(rfc(now_ms));
        doc.revision += 1;
        if self.cleared.len() == CLEARED_KEPT {
            self.cleared.pop_front();
        }
        self.cleared.push_back(doc.clone());
        Some(doc)
    }

    /// Acknowledges an open alert; returns the document and whether it changed.
    pub fn ack(&mut self, id: &str, by: &str, now_ms: i64) -> Result<(AlertDoc, bool), AckError> {
        if self.cleared.iter().any(|d| d.alert.id == id) {
            return Err(AckError::Cleared(id.to_string()));
        }
        let doc = self
            .open
            .values_mut()
            .find(|d| d.alert.id == id)
            .ok_or_else(|| AckError::NotFound(id.to_string()))?;
        if doc.alert.state == AlertState::Acknowledged {
            return Ok((doc.clone(), false));
        }
        doc.alert.state = AlertState::Acknowledged;
        doc.alert.ts = rfc(now_ms);
        doc.acked_at = Some(rfc(now_ms));
        doc.acked_by = Some(by.to_string());
        doc.revision += 1;
        Ok((doc.clone(), true))
    }

    /// The alert with this id.
    pub fn get(&self, id: &str) -> Option<AlertDoc> {
        self.all().find(|d| d.alert.id == id).cloned()
    }

    /// Open and kept cleared alerts, in no order.
    pub fn all(&self) -> impl Iterator<Item = &AlertDoc> {
        self.open.values().chain(self.cleared.iter())
    }

    /// Whether the alert of `c` is open.
    pub fn is_open(&self, c: HubCondition) -> bool {
        self.open.contains_key(&c)
    }

    /// How many are open.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(free: f64) -> Observation {
        Observation {
            value: Some(free),
            threshold: Some(100.0),
            unit: "B",
            message: format!("{free} bytes free"),
        }
    }

    #[test]
    fn one_open_alert_per_condition_from_raise_to_clear() {
        let mut h = HubAlerts::default();
        let raised = h.raise(HubCondition::DiskLow, obs(10.0), 1_000).unwrap();
        assert_eq!(raised.alert.id, "hub.hub-disk-low.1000");
        assert_eq!(raised.alert.level, AlertLevel::Orange);
        assert_eq!(raised.alert.device, HUB_DEVICE);
        // A repeat updates the value, not a new alert nor a new revision.
        assert!(h.raise(HubCondition::DiskLow, obs(5.0), 2_000).is_none());
        assert_eq!(h.get(&raised.alert.id).unwrap().alert.value, Some(5.0));
        assert_eq!(h.open_count(), 1);

        let (acked, changed) = h.ack(&raised.alert.id, "duty", 3_000).unwrap();
        assert!(changed);
        assert_eq!(acked.alert.state, AlertState::Acknowledged);
        assert!(!h.ack(&raised.alert.id, "duty", 3_500).unwrap().1);

        let cleared = h.clear(HubCondition::DiskLow, "room again", 4_000).unwrap();
        assert_eq!(cleared.alert.state, AlertState::Cleared);
        assert_eq!(cleared.revision, 3);
        assert!(cleared.alert.message.ends_with("(room again)"));
        assert!(h.clear(HubCondition::DiskLow, "again", 5_000).is_none());
        assert!(matches!(
            h.ack(&raised.alert.id, "duty", 6_000),
            Err(AckError::Cleared(_))
        ));
        assert!(matches!(
            h.ack("hub.nothing.1", "duty", 6_000),
            Err(AckError::NotFound(_))
        ));

        // The next episode is a new alert.
        let next = h.raise(HubCondition::DiskLow, obs(1.0), 7_000).unwrap();
        assert_ne!(next.alert.id, raised.alert.id);
        assert_eq!(h.all().count(), 2);
    }

    #[test]
    fn keeps_a_bounded_number_of_cleared_alerts() {
        let mut h = HubAlerts::default();
        for t in 0..(CLEARED_KEPT as i64 + 10) {
            h.raise(HubCondition::StoreFailing, obs(0.0), t * 10);
            h.clear(HubCondition::StoreFailing, "writable", t * 10 + 5);
        }
        assert_eq!(h.all().count(), CLEARED_KEPT);
    }
}
