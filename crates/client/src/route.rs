//! Turning a NameServer route into what producers and consumers use: the
//! publish list (writable queues on brokers with a master, or the
//! `orderTopicConf` layout) and the subscribe set (readable queues).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use apogee_protocol::body::TopicRouteData;
use apogee_protocol::flags::PermName;

use crate::instance::MASTER_ID;
use crate::message::MessageQueue;

/// A topic's publish list (Java `TopicPublishInfo`).
#[derive(Debug)]
pub struct TopicPublishInfo {
    /// The route came from `orderTopicConf` (global order layout).
    pub order_topic: bool,
    pub queues: Vec<MessageQueue>,
    pub route: Arc<TopicRouteData>,
    /// Round-robin position shared by all senders of this topic.
    send_which_queue: AtomicUsize,
}

impl TopicPublishInfo {
    /// Builds the publish list of `topic` from `route`.
    pub fn from_route(topic: &str, route: Arc<TopicRouteData>) -> Self {
        let mut queues = Vec::new();
        let order_conf = route
            .order_topic_conf
            .as_deref()
            .filter(|c| !c.trim().is_empty());
        if let Some(conf) = order_conf {
            // "brokerName:queueNums;brokerName2:queueNums"
            for item in conf.split(';') {
                let mut parts = item.split(':');
                let (Some(name), Some(num)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let num: i32 = num.trim().parse().unwrap_or(0);
                for i in 0..num {
                    queues.push(MessageQueue::new(topic, name.trim(), i));
                }
            }
        } else {
            let mut qds = route.queue_datas.clone();
            qds.sort_by(|a, b| a.broker_name.cmp(&b.broker_name));
            for qd in qds {
                if !PermName::is_writeable(qd.perm) {
                    continue;
                }
                let has_master = route
                    .broker_datas
                    .iter()
                    .find(|b| b.broker_name == qd.broker_name)
                    .is_some_and(|b| b.broker_addrs.contains_key(&MASTER_ID));
                if !has_master {
                    continue;
                }
                for i in 0..qd.write_queue_nums.max(0) {
                    queues.push(MessageQueue::new(topic, qd.broker_name.clone(), i));
                }
            }
        }
        let start = rand::random::<usize>() % 1024;
        TopicPublishInfo {
            order_topic: order_conf.is_some(),
            queues,
            route,
            send_which_queue: AtomicUsize::new(start),
        }
    }

    pub fn ok(&self) -> bool {
        !self.queues.is_empty()
    }

    /// Next round-robin position.
    pub fn next_index(&self) -> usize {
        self.send_which_queue.fetch_add(1, Ordering::Relaxed)
    }

    /// Round robin, skipping `last_broker` if another broker has a queue.
    pub fn select_queue(&self, last_broker: Option<&str>) -> Option<&MessageQueue> {
        let n = self.queues.len();
        if n == 0 {
            return None;
        }
        if let Some(last) = last_broker {
            for _ in 0..n {
                let mq = &self.queues[self.next_index() % n];
                if mq.broker_name != last {
                    return Some(mq);
                }
            }
        }
        Some(&self.queues[self.next_index() % n])
    }

    /// Write queue count of a broker in this topic.
    pub fn queue_count_of(&self, broker: &str) -> usize {
        self.queues
            .iter()
            .filter(|q| q.broker_name == broker)
            .count()
    }
}

/// Readable queues of `topic` (Java `topicRouteData2TopicSubscribeInfo`).
pub fn subscribe_queues(topic: &str, route: &TopicRouteData) -> BTreeSet<MessageQueue> {
    let mut out = BTreeSet::new();
    for qd in &route.queue_datas {
        if PermName::is_readable(qd.perm) {
            for i in 0..qd.read_queue_nums.max(0) {
                out.insert(MessageQueue::new(topic, qd.broker_name.clone(), i));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use apogee_protocol::body::{BrokerData, QueueData};

    fn route(brokers: &[(&str, i32, i32, bool)]) -> TopicRouteData {
        let mut r = TopicRouteData::default();
        for (name, n, perm, master) in brokers {
            r.queue_datas.push(QueueData {
                broker_name: name.to_string(),
                read_queue_nums: *n,
                write_queue_nums: *n,
                perm: *perm,
                topic_sys_flag: 0,
            });
            let mut bd = BrokerData {
                broker_name: name.to_string(),
                cluster: "c".into(),
                ..Default::default()
            };
            bd.broker_addrs
                .insert(if *master { 0 } else { 1 }, format!("{name}:1"));
            r.broker_datas.push(bd);
        }
        r
    }

    #[test]
    fn publish_list_skips_unwritable_and_masterless() {
        let r = Arc::new(route(&[
            ("b", 2, 6, true),
            ("a", 3, 6, true),
            ("ro", 4, 4, true),
            ("slave", 4, 6, false),
        ]));
        let info = TopicPublishInfo::from_route("T", r.clone());
        let names: Vec<_> = info
            .queues
            .iter()
            .map(|q| format!("{}{}", q.broker_name, q.queue_id))
            .collect();
        assert_eq!(names, vec!["a0", "a1", "a2", "b0", "b1"]);
        assert!(!info.order_topic);
        // the read-only broker is still subscribable
        let sub = subscribe_queues("T", &r);
        assert_eq!(sub.len(), 2 + 3 + 4 + 4);
    }

    #[test]
    fn order_topic_conf_defines_layout() {
        let mut r = route(&[("a", 8, 6, true)]);
        r.order_topic_conf = Some("a:2;b:1".into());
        let info = TopicPublishInfo::from_route("T", Arc::new(r));
        assert!(info.order_topic);
        assert_eq!(info.queues.len(), 3);
        assert_eq!(info.queues[2], MessageQueue::new("T", "b", 0));
    }

    #[test]
    fn select_avoids_last_broker() {
        let info = TopicPublishInfo::from_route(
            "T",
            Arc::new(route(&[("a", 4, 6, true), ("b", 1, 6, true)])),
        );
        for _ in 0..20 {
            assert_eq!(info.select_queue(Some("a")).unwrap().broker_name, "b");
        }
        let only_a = TopicPublishInfo::from_route("T", Arc::new(route(&[("a", 4, 6, true)])));
        assert_eq!(only_a.select_queue(Some("a")).unwrap().broker_name, "a");
    }
}
