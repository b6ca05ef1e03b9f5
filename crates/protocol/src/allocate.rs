//! Queue allocation strategies (Java `AllocateMessageQueueStrategy`):
//! averagely, averagely-by-circle and consistent hash. Every member of a
//! group runs the same strategy over the same sorted inputs, so together
//! they cover each queue exactly once; the results match the Java client's,
//! so Java and Rust members can share a group. The broker runs the same
//! strategies for QUERY_ASSIGNMENT (server-side rebalancing).

use std::collections::BTreeMap;

use md5::{Digest, Md5};

use crate::body::MessageQueue;

/// Picks this client's share of a topic's queues.
pub trait AllocateStrategy: Send + Sync {
    /// `all_queues` and `all_clients` are sorted; `client_id` is one of
    /// `all_clients` (otherwise nothing is allocated).
    fn allocate(
        &self,
        group: &str,
        client_id: &str,
        all_queues: &[MessageQueue],
        all_clients: &[String],
    ) -> Vec<MessageQueue>;

    fn name(&self) -> &'static str;
}

fn index_of(client_id: &str, all_clients: &[String]) -> Option<usize> {
    all_clients.iter().position(|c| c == client_id)
}

/// Contiguous blocks, the first `queues % clients` members taking one
/// extra (Java `AllocateMessageQueueAveragely`, the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllocateAveragely;

impl AllocateStrategy for AllocateAveragely {
    fn allocate(
        &self,
        _group: &str,
        client_id: &str,
        all_queues: &[MessageQueue],
        all_clients: &[String],
    ) -> Vec<MessageQueue> {
        let Some(index) = index_of(client_id, all_clients) else {
            return Vec::new();
        };
        let (q, c) = (all_queues.len(), all_clients.len());
        if q == 0 {
            return Vec::new();
        }
        let m = q % c;
        let average = if q <= c {
            1
        } else if m > 0 && index < m {
            q / c + 1
        } else {
            q / c
        };
        let start = if m > 0 && index < m {
            index * average
        } else {
            index * average + m
        };
        let range = average.min(q.saturating_sub(start));
        (0..range)
            .map(|i| all_queues[(start + i) % q].clone())
            .collect()
    }

    fn name(&self) -> &'static str {
        "AVG"
    }
}

/// Every `clients`-th queue starting at the member's index (Java
/// `AllocateMessageQueueAveragelyByCircle`).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllocateAveragelyByCircle;

impl AllocateStrategy for AllocateAveragelyByCircle {
    fn allocate(
        &self,
        _group: &str,
        client_id: &str,
        all_queues: &[MessageQueue],
        all_clients: &[String],
    ) -> Vec<MessageQueue> {
        let Some(index) = index_of(client_id, all_clients) else {
            return Vec::new();
        };
        all_queues
            .iter()
            .enumerate()
            .filter(|(i, _)| i % all_clients.len() == index)
            .map(|(_, q)| q.clone())
            .collect()
    }

    fn name(&self) -> &'static str {
        "AVG_BY_CIRCLE"
    }
}

/// A consistent-hash ring of clients with virtual nodes (Java
/// `AllocateMessageQueueConsistentHash`: MD5, first 4 bytes, node keys
/// `clientId-i`, queue keys `MessageQueue [topic=…, brokerName=…, queueId=…]`).
#[derive(Debug, Clone, Copy)]
pub struct AllocateConsistentHash {
    pub virtual_nodes: usize,
}

impl Default for AllocateConsistentHash {
    fn default() -> Self {
        AllocateConsistentHash { virtual_nodes: 10 }
    }
}

fn md5_hash(key: &str) -> u64 {
    let digest = Md5::digest(key.as_bytes());
    digest
        .iter()
        .take(4)
        .fold(0u64, |h, b| (h << 8) | u64::from(*b))
}

fn queue_key(q: &MessageQueue) -> String {
    format!(
        "MessageQueue [topic={}, brokerName={}, queueId={}]",
        q.topic, q.broker_name, q.queue_id
    )
}

impl AllocateStrategy for AllocateConsistentHash {
    fn allocate(
        &self,
        _group: &str,
        client_id: &str,
        all_queues: &[MessageQueue],
        all_clients: &[String],
    ) -> Vec<MessageQueue> {
        if index_of(client_id, all_clients).is_none() {
            return Vec::new();
        }
        let mut ring: BTreeMap<u64, &str> = BTreeMap::new();
        for c in all_clients {
            for i in 0..self.virtual_nodes.max(1) {
                ring.insert(md5_hash(&format!("{c}-{i}")), c.as_str());
            }
        }
        all_queues
            .iter()
            .filter(|q| {
                let h = md5_hash(&queue_key(q));
                let owner = ring
                    .range(h..)
                    .next()
                    .or_else(|| ring.iter().next())
                    .map(|(_, c)| *c);
                owner == Some(client_id)
            })
            .cloned()
            .collect()
    }

    fn name(&self) -> &'static str {
        "CONSISTENT_HASH"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn queues(n: i32) -> Vec<MessageQueue> {
        let mut v: Vec<_> = (0..n)
            .map(|i| MessageQueue::new("T", if i % 2 == 0 { "a" } else { "b" }, i / 2))
            .collect();
        v.sort();
        v
    }

    fn clients(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}@1")).collect()
    }

    fn check_partition(s: &dyn AllocateStrategy, nq: i32, nc: usize) -> Vec<Vec<MessageQueue>> {
        let qs = queues(nq);
        let cs = clients(nc);
        let parts: Vec<_> = cs.iter().map(|c| s.allocate("g", c, &qs, &cs)).collect();
        let all: Vec<_> = parts.iter().flatten().cloned().collect();
        let set: BTreeSet<_> = all.iter().cloned().collect();
        assert_eq!(all.len(), set.len(), "{} gave a queue twice", s.name());
        assert_eq!(set.len(), qs.len(), "{} lost a queue", s.name());
        parts
    }

    #[test]
    fn averagely_matches_java_layout() {
        let parts = check_partition(&AllocateAveragely, 8, 3);
        assert_eq!(
            parts.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![3, 3, 2]
        );
        let qs = queues(8);
        assert_eq!(parts[0], qs[0..3].to_vec());
        assert_eq!(parts[2], qs[6..8].to_vec());
        // more clients than queues: the extra ones get nothing
        let qs = queues(2);
        let cs = clients(4);
        assert_eq!(
            AllocateAveragely.allocate("g", &cs[1], &qs, &cs),
            vec![qs[1].clone()]
        );
        assert!(AllocateAveragely.allocate("g", &cs[3], &qs, &cs).is_empty());
        assert!(AllocateAveragely
            .allocate("g", "stranger", &qs, &cs)
            .is_empty());
        for (q, c) in [(1, 1), (7, 2), (16, 5), (3, 7)] {
            check_partition(&AllocateAveragely, q, c);
        }
    }

    #[test]
    fn by_circle_interleaves() {
        let parts = check_partition(&AllocateAveragelyByCircle, 8, 3);
        let qs = queues(8);
        assert_eq!(parts[1], vec![qs[1].clone(), qs[4].clone(), qs[7].clone()]);
        check_partition(&AllocateAveragelyByCircle, 5, 7);
    }

    #[test]
    fn consistent_hash_partitions_and_moves_little() {
        let s = AllocateConsistentHash::default();
        check_partition(&s, 32, 3);
        check_partition(&s, 5, 8);
        // adding a member only takes queues away, never shuffles the rest
        let qs = queues(32);
        let three = clients(3);
        let four = clients(4);
        for c in &three {
            let before: BTreeSet<_> = s.allocate("g", c, &qs, &three).into_iter().collect();
            let after: BTreeSet<_> = s.allocate("g", c, &qs, &four).into_iter().collect();
            assert!(after.is_subset(&before));
        }
    }

    #[test]
    fn md5_prefix_hash_is_stable() {
        // MD5("") = d41d8cd9…: first four bytes as an unsigned number.
        assert_eq!(md5_hash(""), 0xd41d8cd9);
    }
}
