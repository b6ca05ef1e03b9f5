//! What the broker still has to tell its NameServers.
//!
//! A topic change only records the topic's name in the pending set of every
//! NameServer and wakes that NameServer's registration task, which sends the
//! accumulated topics in one incremental REGISTER_BROKER (Java's
//! `registerIncrementBrokerData`). While a registration is in flight the
//! names pile up, so a burst of N creations costs a handful of requests, not
//! N. Changes an incremental registration cannot express (a deleted topic,
//! a new broker permission) ask for a full one.

use std::collections::HashSet;
use std::sync::Arc;

use apogee_protocol::body::TopicConfigSerializeWrapper;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// The registration a NameServer's task owes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterWork {
    /// The whole topic table.
    Full,
    /// Only these topics (their current configs and the current data version).
    Topics(Vec<String>),
}

/// A registration ready to encode and send.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// The whole topic table, read when encoded.
    Full,
    /// The changed topics' configs and the data version, read together.
    Increment(TopicConfigSerializeWrapper),
}

impl Outgoing {
    /// What to put back in the slot if sending it failed.
    pub fn work(&self) -> RegisterWork {
        match self {
            Outgoing::Full => RegisterWork::Full,
            Outgoing::Increment(w) => {
                RegisterWork::Topics(w.topic_config_table.keys().cloned().collect())
            }
        }
    }
}

#[derive(Default)]
struct Pending {
    topics: HashSet<String>,
    full: bool,
}

/// One NameServer's pending registration and the wake-up of its task.
#[derive(Default)]
pub struct RegisterSlot {
    pending: Mutex<Pending>,
    wake: Notify,
}

impl RegisterSlot {
    /// Takes what is pending (and clears it); None when nothing is.
    pub fn take(&self) -> Option<RegisterWork> {
        let mut p = self.pending.lock();
        if p.full {
            p.full = false;
            p.topics.clear();
            return Some(RegisterWork::Full);
        }
        if p.topics.is_empty() {
            return None;
        }
        Some(RegisterWork::Topics(p.topics.drain().collect()))
    }

    /// Whether anything is pending.
    pub fn has_pending(&self) -> bool {
        let p = self.pending.lock();
        p.full || !p.topics.is_empty()
    }

    /// Puts work back after a failed attempt (merged with newer changes).
    pub fn restore(&self, work: RegisterWork) {
        let mut p = self.pending.lock();
        match work {
            RegisterWork::Full => p.full = true,
            RegisterWork::Topics(names) => p.topics.extend(names),
        }
    }

    /// Resolves when something was marked since the last wake-up.
    pub async fn changed(&self) {
        self.wake.notified().await
    }

    fn mark(&self, topic: Option<&str>) {
        {
            let mut p = self.pending.lock();
            match topic {
                Some(t) if !p.full => {
                    if !p.topics.contains(t) {
                        p.topics.insert(t.to_string());
                    }
                }
                Some(_) => {}
                None => p.full = true,
            }
        }
        self.wake.notify_one();
    }
}

/// Fans topic changes out to the registration task of every NameServer.
#[derive(Default)]
pub struct RegisterSignal {
    slots: Mutex<Vec<Arc<RegisterSlot>>>,
}

impl RegisterSignal {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new slot that sees every change from now on.
    pub fn subscribe(&self) -> Arc<RegisterSlot> {
        let slot = Arc::new(RegisterSlot::default());
        self.slots.lock().push(Arc::clone(&slot));
        slot
    }

    /// `topic` was created or changed: register it soon.
    pub fn topic_changed(&self, topic: &str) {
        for s in self.slots.lock().iter() {
            s.mark(Some(topic));
        }
    }

    /// Something only a full registration carries changed.
    pub fn full(&self) {
        for s in self.slots.lock().iter() {
            s.mark(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_coalesce_and_full_wins() {
        let sig = RegisterSignal::new();
        assert!(sig.slots.lock().is_empty());
        sig.topic_changed("before-subscribe");
        let a = sig.subscribe();
        let b = sig.subscribe();
        assert_eq!(a.take(), None);
        for i in 0..100 {
            sig.topic_changed(&format!("T{}", i % 10));
        }
        let Some(RegisterWork::Topics(mut names)) = a.take() else {
            panic!("expected topics");
        };
        names.sort();
        assert_eq!(names.len(), 10);
        assert_eq!(a.take(), None);
        sig.topic_changed("X");
        sig.full();
        sig.topic_changed("Y");
        assert_eq!(b.take(), Some(RegisterWork::Full));
        assert_eq!(b.take(), None);
        b.restore(RegisterWork::Topics(vec!["Z".into()]));
        assert_eq!(b.take(), Some(RegisterWork::Topics(vec!["Z".into()])));
    }
}
