//! Receipt handles: the broker's POP `extraInfo` handed to gRPC clients as
//! is (`ckOffset popTime invisibleTime reviveQid retryFlag brokerName
//! queueId queueOffset`), parsed here to route acks back to the broker.

use apogee_protocol::pop::{self, ExtraInfo};

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
        let (e, queue_offset) = Self::check(s)?;
        Ok(ReceiptHandle {
            retry: e.retry.to_owned(),
            broker_name: e.broker_name.to_owned(),
            queue_id: e.queue_id,
            queue_offset,
        })
    }

    /// Validates `s` as [`ReceiptHandle::parse`] does and returns its fields
    /// borrowed, with the queue offset a valid handle always names (an ack
    /// of many entries needs no owned copies).
    pub fn check(s: &str) -> Result<(ExtraInfo<'_>, i64)> {
        let bad = |why: &str| ProxyError::BadReceiptHandle(why.to_owned());
        if s.is_empty() {
            return Err(bad("the receipt handle is empty"));
        }
        if s.len() > MAX_LEN {
            return Err(bad("the receipt handle is too long"));
        }
        // The format is the broker's (protocol::pop); a gRPC handle must
        // also name its message's queue offset.
        let e = ExtraInfo::parse(s).map_err(|e| bad(e.why))?;
        if s.bytes().filter(|&b| b == b' ').count() != 7 {
            return Err(bad("expected 8 space-separated fields"));
        }
        if e.queue_id < 0 {
            return Err(bad("queue id is not a non-negative number"));
        }
        let queue_offset = e
            .queue_offset
            .filter(|o| *o >= 0)
            .ok_or_else(|| bad("queue offset is not a non-negative number"))?;
        Ok((e, queue_offset))
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
            "1" => pop::retry_topic_v1(topic, group),
            "2" => pop::retry_topic_v2(topic, group),
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
