//! AckMessage with many entries: one BATCH_ACK_MESSAGE per broker instead
//! of one ACK_MESSAGE per entry. The broker then writes one `bAck` record per
//! popped batch rather than one `ack` record per message, and the proxy
//! waits for one round trip. A broker that refuses the batch (an older
//! broker without BATCH_ACK_MESSAGE, or an entry it rejects) gets the
//! entries one by one, so each entry still gets its own status.

use std::collections::BTreeMap;

use apogee_protocol::header::{AckMessageRequestHeader, RpcFields};
use apogee_protocol::pop::{self, ExtraInfo};

use crate::backend::Backend;
use crate::error::{ProxyError, Result};
use crate::receipt::ReceiptHandle;

/// One acknowledgement to make: its receipt handle, parsed once (fields
/// borrowed from it).
struct Entry<'a> {
    index: usize,
    receipt: &'a str,
    info: ExtraInfo<'a>,
    queue_offset: i64,
}

/// Acknowledges every receipt of `group` on `topic`; one result per
/// receipt, in order.
pub async fn ack_all(
    backend: &Backend,
    group: &str,
    topic: &str,
    receipts: &[&str],
) -> Vec<Result<()>> {
    let mut results: Vec<Option<Result<()>>> = receipts.iter().map(|_| None).collect();
    // Entries by the broker that holds their message.
    let mut by_broker: BTreeMap<&str, Vec<Entry<'_>>> = BTreeMap::new();
    for (index, receipt) in receipts.iter().enumerate() {
        match ReceiptHandle::check(receipt) {
            Ok((info, queue_offset)) => {
                by_broker.entry(info.broker_name).or_default().push(Entry {
                    index,
                    receipt,
                    info,
                    queue_offset,
                })
            }
            Err(e) => results[index] = Some(Err(e)),
        }
    }
    let per_broker = by_broker.into_iter().map(|(broker, entries)| async move {
        let addr = match broker_addr(backend, topic, broker).await {
            Ok(a) => a,
            Err(first) => {
                // Each entry gets the error (asked again: errors are not Clone).
                let mut out = vec![(entries[0].index, Err(first))];
                for en in &entries[1..] {
                    let e = match broker_addr(backend, topic, broker).await {
                        Ok(_) => ProxyError::BrokerNotFound(broker.to_owned()),
                        Err(e) => e,
                    };
                    out.push((en.index, Err(e)));
                }
                return out;
            }
        };
        ack_on_broker(backend, &addr, broker, group, topic, &entries).await
    });
    for done in futures::future::join_all(per_broker).await {
        for (index, r) in done {
            results[index] = Some(r);
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(ProxyError::BadRequest("entry not acknowledged".into()))))
        .collect()
}

async fn broker_addr(backend: &Backend, topic: &str, broker: &str) -> Result<String> {
    if let Ok(a) = backend.master_addr_by_name(broker) {
        return Ok(a);
    }
    let route = backend.route(topic).await?;
    backend.master_addr(&route, broker)
}

/// A single entry goes as ACK_MESSAGE; several as one BATCH_ACK_MESSAGE,
/// falling back to ACK_MESSAGE each if the broker refuses the batch.
async fn ack_on_broker(
    backend: &Backend,
    addr: &str,
    broker: &str,
    group: &str,
    topic: &str,
    entries: &[Entry<'_>],
) -> Vec<(usize, Result<()>)> {
    if entries.len() > 1 {
        match batch_body(group, topic, broker, entries) {
            Some(body) => match backend.batch_ack(addr, body).await {
                Ok(()) => return entries.iter().map(|e| (e.index, Ok(()))).collect(),
                Err(e) => {
                    tracing::debug!(broker, error = %e, "batch ack refused; acking one by one")
                }
            },
            None => tracing::debug!(broker, "entries do not fit a batch ack; acking one by one"),
        }
    }
    let singles = entries.iter().map(|e| async move {
        let h = AckMessageRequestHeader {
            consumer_group: group.to_owned(),
            topic: topic.to_owned(),
            queue_id: e.info.queue_id,
            extra_info: e.receipt.to_owned(),
            offset: e.queue_offset,
            rpc: RpcFields {
                broker_name: Some(e.info.broker_name.to_owned()),
                ..Default::default()
            },
        };
        (e.index, backend.ack(addr, &h).await)
    });
    futures::future::join_all(singles).await
}

/// The BatchAckMessageRequestBody JSON ([`pop::BatchAckBody`]): one ack per
/// popped batch (same queue, checkpoint offset, pop time and revive queue),
/// its offsets as a bit set relative to the checkpoint offset. `None` when
/// an entry cannot be expressed that way (the bit set would leave it out,
/// and the entry would be reported acked without being so).
fn batch_body(group: &str, topic: &str, broker: &str, entries: &[Entry<'_>]) -> Option<Vec<u8>> {
    type Key<'a> = (&'a str, i32, i64, i64, i32);
    let mut batches: BTreeMap<Key<'_>, (i64, Vec<i64>)> = BTreeMap::new();
    for e in entries {
        let i = &e.info;
        let rel = e.queue_offset.checked_sub(i.ck_offset)?;
        if !usize::try_from(rel).is_ok_and(|d| d < pop::MAX_BATCH_ACK_SPAN) {
            return None;
        }
        let key = (i.retry, i.queue_id, i.ck_offset, i.pop_time, i.revive_qid);
        batches
            .entry(key)
            .or_insert_with(|| (i.invisible_time, Vec::new()))
            .1
            .push(e.queue_offset);
    }
    let acks = batches
        .into_iter()
        .map(
            |((retry, queue_id, start, pop_time, revive), (invisible, offsets))| {
                let mut a = pop::BatchAck {
                    consumer_group: group.to_owned(),
                    topic: topic.to_owned(),
                    retry: retry.to_owned(),
                    start_offset: start,
                    queue_id,
                    revive_queue_id: revive,
                    pop_time,
                    invisible_time: invisible,
                    bit_set: None,
                };
                a.set_offsets(offsets);
                a
            },
        )
        .collect();
    serde_json::to_vec(&pop::BatchAckBody {
        broker_name: Some(broker.to_owned()),
        acks: Some(acks),
    })
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: usize, receipt: &str) -> Entry<'_> {
        let (info, queue_offset) = ReceiptHandle::check(receipt).unwrap();
        Entry {
            index,
            receipt,
            info,
            queue_offset,
        }
    }

    #[test]
    fn one_ack_per_popped_batch_with_its_offsets_as_bits() {
        // Two messages of one pop (checkpoint at 10) and one of another queue.
        let a = "10 1000 60000 3 0 broker-a 1 10";
        let b = "10 1000 60000 3 0 broker-a 1 12";
        let c = "7 1000 60000 3 0 broker-a 2 7";
        let body = batch_body(
            "G",
            "T",
            "broker-a",
            &[entry(0, a), entry(1, b), entry(2, c)],
        )
        .unwrap();
        let body: pop::BatchAckBody = serde_json::from_slice(&body).unwrap();
        assert_eq!(body.broker_name.as_deref(), Some("broker-a"));
        let acks = body.acks.unwrap();
        assert_eq!(acks.len(), 2);
        let q1 = acks.iter().find(|a| a.queue_id == 1).unwrap();
        assert_eq!(
            (
                q1.consumer_group.as_str(),
                q1.topic.as_str(),
                q1.retry.as_str()
            ),
            ("G", "T", "0")
        );
        assert_eq!(
            (q1.start_offset, q1.pop_time, q1.revive_queue_id),
            (10, 1000, 3)
        );
        // Offsets 10 and 12 from 10: bits 0 and 2.
        assert_eq!(q1.bit_bytes(), Some(vec![0b101]));
        let q2 = acks.iter().find(|a| a.queue_id == 2).unwrap();
        assert_eq!((q2.start_offset, q2.bit_bytes()), (7, Some(vec![1])));
    }

    #[test]
    fn an_offset_outside_its_checkpoint_is_not_batched() {
        let before = "10 1000 60000 3 0 broker-a 1 9";
        assert!(batch_body("G", "T", "broker-a", &[entry(0, before)]).is_none());
        let far = format!("0 1000 60000 3 0 broker-a 1 {}", pop::MAX_BATCH_ACK_SPAN);
        assert!(batch_body("G", "T", "broker-a", &[entry(0, &far)]).is_none());
    }
}
