//! Stopping the hub's tasks: one type for every group of tasks that stops together.
//!
//! A [`Shutdown`] owns the tasks it spawned and the signal they watch. [`Shutdown::stop`] raises
//! the signal and joins every task, logging any that panicked, so nothing the hub started is
//! left running or dropped unjoined. The hub stops its groups in order (the pipeline drains
//! first, then timers and the alert writer, then the HTTP API, then maintenance), which is why
//! there is one group per phase rather than one signal for all.

use std::future::Future;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A group of tasks that stop on one signal.
#[derive(Debug)]
pub struct Shutdown {
    name: &'static str,
    trigger: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

/// What a task of a group holds: it resolves [`Signal::recv`] once the group stops.
#[derive(Clone, Debug)]
pub struct Signal {
    rx: watch::Receiver<bool>,
}

impl Signal {
    /// Resolves when the group is told to stop (at once if it already was). Cancel-safe, so it
    /// can sit in a `select!` loop.
    pub async fn recv(&mut self) {
        // An error means the trigger was dropped without `stop`: that is a stop too.
        let _ = self.rx.wait_for(|stop| *stop).await;
    }

    /// Whether the group was told to stop.
    pub fn is_set(&self) -> bool {
        *self.rx.borrow()
    }
}

impl Shutdown {
    /// An empty group; `name` appears in the log if one of its tasks fails.
    pub fn new(name: &'static str) -> Shutdown {
        let (trigger, _) = watch::channel(false);
        Shutdown {
            name,
            trigger,
            tasks: Vec::new(),
        }
    }

    /// A signal for a task of this group that is spawned elsewhere (or that is not a task,
    /// like the HTTP streams of the API).
    pub fn signal(&self) -> Signal {
        Signal {
            rx: self.trigger.subscribe(),
        }
    }

    /// Spawns `task` in this group; the closure gets the group's signal.
    pub fn spawn<F, Fut>(&mut self, task: &'static str, make: F)
    where
        F: FnOnce(Signal) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let fut = make(self.signal());
        self.tasks.push((task, tokio::spawn(fut)));
    }

    /// Raises the signal and waits for every task of the group.
    pub async fn stop(self) {
        let _ = self.trigger.send(true);
        for (task, handle) in self.tasks {
            if let Err(e) = handle.await {
                tracing::error!(group = self.name, task, "task failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn stop_raises_the_signal_and_joins_every_task() {
        let finished = Arc::new(AtomicUsize::new(0));
        let mut group = Shutdown::new("test");
        for _ in 0..3 {
            let f = finished.clone();
            group.spawn("waiter", move |mut signal| async move {
                signal.recv().await;
                f.fetch_add(1, Ordering::SeqCst);
            });
        }
        let outside = group.signal();
        assert!(!outside.is_set());
        group.stop().await;
        assert_eq!(finished.load(Ordering::SeqCst), 3);
        assert!(outside.is_set());
    }

    #[tokio::test]
    async fn a_panicking_task_does_not_stop_the_others_from_being_joined() {
        let finished = Arc::new(AtomicUsize::new(0));
        let mut group = Shutdown::new("test");
        group.spawn("panics", |_| async { panic!("on purpose") });
        let f = finished.clone();
        group.spawn("waits", move |mut signal| async move {
            signal.recv().await;
            f.fetch_add(1, Ordering::SeqCst);
        });
        group.stop().await;
        assert_eq!(finished.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_signal_taken_after_stop_resolves_at_once() {
        let group = Shutdown::new("test");
        let mut late = group.signal();
        group.stop().await;
        late.recv().await;
        assert!(late.is_set());
    }
}
