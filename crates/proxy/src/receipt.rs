//! Receipt handles: the broker's POP `extraInfo` handed to gRPC clients as
//! is (`ckOffset popTime invisibleTime reviveQid retryFlag brokerName
//! queueId queueOffset`), parsed here to route acks back to the broker.

use apogee_protocol::topic::RETRY_GROUP_TOPIC_PREFIX;

use crate::error::{ProxyError, Result};

/// The fields of a receipt handle the proxy needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptHandle {
    pub retry: String,
    pub broker_name: String,
    pub queue_id: i32,
    pub queue_offset: i64,
}

/// Longest handle accepted (a real one is well under 200 bytes).
const MAX_LEN: usize = 1024;

impl ReceiptHandle {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| ProxyError::BadReceiptHandle(why.to_owned());
        if s.is_empty() {
            return Err(bad("the receipt handle is empty"));
        }
        if s.len() > MAX_LEN {
            return Err(bad("the receipt handle is too long"));
        }
        let f: Vec<&str> = s.split(' ').collect();
        if f.len() != 8 {
            return Err(bad("expected 8 space-separated fields"));
        }
        for (i, what) in [
            (0, "checkpoint offset"),
            (1, "pop time"),
            (2, "invisible time"),
        ] {
            f[i].parse::<i64>()
                .map_err(|_| bad(&format!("{what} is not a number")))?;
        }
        f[3].parse::<i32>()
            .map_err(|_| bad("revive queue id is not a number"))?;
        if !matches!(f[4], "0" | "1" | "2") {
            return Err(bad("retry flag is not 0, 1 or 2"));
        }
        if f[5].is_empty() {
            return Err(bad("broker name is empty"));
        }
        let queue_id = f[6]
            .parse::<i32>()
            .ok()
            .filter(|q| *q >= 0)
            .ok_or_else(|| bad("queue id is not a non-negative number"))?;
        let queue_offset = f[7]
            .parse::<i64>()
            .ok()
            .filter(|o| *o >= 0)
            .ok_or_else(|| bad("queue offset is not a non-negative number"))?;
        Ok(ReceiptHandle {
            retry: f[4].to_owned(),
            broker_name: f[5].to_owned(),
            queue_id,
            queue_offset,
        })
    }

    /// The handle after CHANGE_MESSAGE_INVISIBLETIME: the broker wrote a
    /// new checkpoint starting at this message.
    pub fn renewed(&self, pop_time: i64, invisible_time: i64, revive_qid: i32) -> String {
        format!(
            "{o} {pop_time} {invisible_time} {revive_qid} {} {} {} {o}",
            self.retry,
            self.broker_name,
            self.queue_id,
            o = self.queue_offset
        )
    }

    /// The topic the message was popped from.
    pub fn real_topic(&self, topic: &str, group: &str) -> String {
        match self.retry.as_str() {
            "1" => format!("{RETRY_GROUP_TOPIC_PREFIX}{group}_{topic}"),
            "2" => format!("{RETRY_GROUP_TOPIC_PREFIX}{group}+{topic}"),
            _ => topic.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_renews() {
        let h = ReceiptHandle::parse("12 1700000000000 30000 3 0 broker-a 2 12").unwrap();
        assert_eq!(h.broker_name, "broker-a");
        assert_eq!((h.queue_id, h.queue_offset), (2, 12));
        assert_eq!(h.renewed(5, 6000, 4), "12 5 6000 4 0 broker-a 2 12");
        assert_eq!(h.real_topic("T", "G"), "T");
    }

    #[test]
    fn malformed_handles_are_errors() {
        for bad in [
            "",
            "x",
            "1 2 3 4 5 b 1 1",
            "1 2 3 4 0 b -1 1",
            "1 2 3 4 0 b 1 -1",
            "1 2 3 4 0  1 1",
            "a 2 3 4 0 b 1 1",
            "1 2 3 4 0 b 1 1 9",
        ] {
            assert!(ReceiptHandle::parse(bad).is_err(), "{bad:?}");
        }
        assert!(ReceiptHandle::parse(&"9".repeat(5000)).is_err());
    }
}
