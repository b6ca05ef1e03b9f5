//! Latency-based fault avoidance (Java `MQFaultStrategy` +
//! `LatencyFaultToleranceImpl`): a send that failed or was slow marks its
//! broker unavailable for a while, and queue selection prefers brokers
//! that are available.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use crate::message::MessageQueue;
use crate::route::TopicPublishInfo;

/// Latency thresholds (ms) …
pub const LATENCY_MAX: [u64; 7] = [50, 100, 550, 1000, 2000, 3000, 15000];
/// … and how long (ms) a broker is avoided after a send that slow.
pub const NOT_AVAILABLE_DURATION: [u64; 7] = [0, 0, 30000, 60000, 120000, 180000, 600000];
/// A failed send counts as this latency (ms) (Java 5 isolation).
pub const ISOLATION_LATENCY: u64 = 10_000;

#[derive(Debug, Clone, Copy)]
struct FaultItem {
    latency: u64,
    available_from: Instant,
}

/// Which brokers to avoid, and picks of queues that respect it.
#[derive(Debug)]
pub struct FaultStrategy {
    enabled: bool,
    items: RwLock<HashMap<String, FaultItem>>,
}

impl FaultStrategy {
    pub fn new(enabled: bool) -> Self {
        FaultStrategy {
            enabled,
            items: RwLock::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Avoid time for a send that took `latency_ms`.
    pub fn not_available_duration(latency_ms: u64) -> Duration {
        for i in (0..LATENCY_MAX.len()).rev() {
            if latency_ms >= LATENCY_MAX[i] {
                return Duration::from_millis(NOT_AVAILABLE_DURATION[i]);
            }
        }
        Duration::ZERO
    }

    /// Records a send's outcome; `isolation` marks a failure.
    pub fn update(&self, broker: &str, latency: Duration, isolation: bool) {
        if !self.enabled {
            return;
        }
        let ms = if isolation {
            ISOLATION_LATENCY
        } else {
            latency.as_millis() as u64
        };
        let dur = Self::not_available_duration(ms);
        // Most sends are fast and find nothing to change: no clock read and
        // no write lock unless the entry actually changes.
        if dur.is_zero() {
            if self.items.read().contains_key(broker) {
                self.items.write().remove(broker);
            }
            return;
        }
        let item = FaultItem {
            latency: ms,
            available_from: Instant::now() + dur,
        };
        self.items.write().insert(broker.to_string(), item);
    }

    pub fn is_available(&self, broker: &str) -> bool {
        match self.items.read().get(broker) {
            None => true,
            Some(i) => Instant::now() >= i.available_from,
        }
    }

    /// Picks the queue for the next attempt, avoiding `last_broker` (the
    /// broker of the previous failed attempt) and unavailable brokers
    /// where possible.
    pub fn select<'a>(
        &self,
        info: &'a TopicPublishInfo,
        last_broker: Option<&str>,
    ) -> Option<&'a MessageQueue> {
        let n = info.queues.len();
        if n == 0 {
            return None;
        }
        if !self.enabled {
            return info.select_queue(last_broker);
        }
        let items = self.items.read();
        if items.is_empty() {
            drop(items);
            return info.select_queue(last_broker);
        }
        let now = Instant::now();
        let available = |b: &str| items.get(b).is_none_or(|i| now >= i.available_from);
        let start = info.next_index();
        // 1: available and not the broker that just failed
        for i in 0..n {
            let mq = &info.queues[(start + i) % n];
            if available(&mq.broker_name) && Some(mq.broker_name.as_str()) != last_broker {
                return Some(mq);
            }
        }
        // 2: any available
        for i in 0..n {
            let mq = &info.queues[(start + i) % n];
            if available(&mq.broker_name) {
                return Some(mq);
            }
        }
        // 3: every broker is avoided: the one that becomes available
        // first (then lowest latency), Java's pickOneAtLeast in spirit.
        let best = info
            .queues
            .iter()
            .map(|q| q.broker_name.as_str())
            .filter_map(|b| items.get(b).map(|i| (i.available_from, i.latency, b)))
            .min()
            .map(|(_, _, b)| b.to_string());
        drop(items);
        if let Some(b) = best {
            let count = info.queue_count_of(&b);
            if count > 0 {
                let k = start % count;
                return info.queues.iter().filter(|q| q.broker_name == b).nth(k);
            }
        }
        info.select_queue(last_broker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apogee_protocol::body::{BrokerData, QueueData, TopicRouteData};
    use std::sync::Arc;

    fn info() -> TopicPublishInfo {
        let mut r = TopicRouteData::default();
        for name in ["a", "b"] {
            r.queue_datas.push(QueueData {
                broker_name: name.into(),
                read_queue_nums: 4,
                write_queue_nums: 4,
                perm: 6,
                topic_sys_flag: 0,
            });
            let mut bd = BrokerData {
                broker_name: name.into(),
                ..Default::default()
            };
            bd.broker_addrs.insert(0, format!("{name}:1"));
            r.broker_datas.push(bd);
        }
        TopicPublishInfo::from_route("T", Arc::new(r))
    }

    #[test]
    fn durations_follow_java_table() {
        assert_eq!(FaultStrategy::not_available_duration(10), Duration::ZERO);
        assert_eq!(FaultStrategy::not_available_duration(120), Duration::ZERO);
        assert_eq!(
            FaultStrategy::not_available_duration(600),
            Duration::from_secs(30)
        );
        assert_eq!(
            FaultStrategy::not_available_duration(ISOLATION_LATENCY),
            Duration::from_secs(180)
        );
        assert_eq!(
            FaultStrategy::not_available_duration(20_000),
            Duration::from_secs(600)
        );
    }

    #[test]
    fn failed_broker_is_skipped_until_it_recovers() {
        let f = FaultStrategy::new(true);
        let info = info();
        f.update("a", Duration::from_millis(5), true);
        assert!(!f.is_available("a"));
        for _ in 0..50 {
            assert_eq!(f.select(&info, None).unwrap().broker_name, "b");
        }
        // a fast successful send clears the mark
        f.update("a", Duration::from_millis(1), false);
        assert!(f.is_available("a"));
        let picked: std::collections::HashSet<_> = (0..50)
            .map(|_| f.select(&info, None).unwrap().broker_name.clone())
            .collect();
        assert_eq!(picked.len(), 2);
    }

    #[test]
    fn all_unavailable_still_picks_something() {
        let f = FaultStrategy::new(true);
        let info = info();
        f.update("a", Duration::from_millis(700), false); // 30 s
        f.update("b", Duration::ZERO, true); // 180 s
                                             // a recovers first
        assert_eq!(f.select(&info, None).unwrap().broker_name, "a");
    }

    #[test]
    fn disabled_strategy_round_robins_and_avoids_last() {
        let f = FaultStrategy::new(false);
        let info = info();
        f.update("a", Duration::ZERO, true);
        assert!(f.is_available("a"));
        for _ in 0..10 {
            assert_eq!(f.select(&info, Some("b")).unwrap().broker_name, "a");
        }
    }
}
