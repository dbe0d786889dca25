//! Twins whose document changed since it was last published.
//!
//! Reported values and online state change far more often than anyone needs the retained twin
//! document (live values travel in the feeds), so changes only mark the twin here and the
//! pipeline's twin rounds publish each marked twin once per round.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;

use parking_lot::Mutex;

use crate::registry::DeviceIdx;

/// Marked twins, each listed once until its document is out.
#[derive(Debug)]
pub struct Stale {
    flags: Vec<AtomicBool>,
    list: Mutex<Vec<DeviceIdx>>,
}

impl Stale {
    /// Nothing marked, room for `devices`.
    pub fn new(devices: usize) -> Stale {
        Stale {
            flags: (0..devices).map(|_| AtomicBool::new(false)).collect(),
            list: Mutex::new(Vec::new()),
        }
    }

    /// Marks a twin (a no-op when it is already marked).
    pub fn mark(&self, d: DeviceIdx) {
        if let Some(f) = self.flags.get(d as usize)
            && !f.swap(true, Relaxed)
        {
            self.list.lock().push(d);
        }
    }

    /// Every marked twin, in marking order; they stay marked until [`Stale::clear`].
    pub fn take(&self) -> Vec<DeviceIdx> {
        std::mem::take(&mut *self.list.lock())
    }

    /// Unmarks a twin just before its document is built: a change after this marks it again.
    pub fn clear(&self, d: DeviceIdx) {
        if let Some(f) = self.flags.get(d as usize) {
            f.store(false, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_twin_is_listed_once_until_cleared() {
        let s = Stale::new(3);
        s.mark(2);
        s.mark(0);
        s.mark(2);
        s.mark(7); // not a device: ignored
        assert_eq!(s.take(), vec![2, 0]);
        assert!(s.take().is_empty());
        // Taken but not cleared: still marked, so not listed again.
        s.mark(2);
        assert!(s.take().is_empty());
        s.clear(2);
        s.mark(2);
        assert_eq!(s.take(), vec![2]);
    }
}
