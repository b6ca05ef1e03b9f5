//! AckMessage with many entries: one BATCH_ACK_MESSAGE per broker instead
//! of one ACK_MESSAGE per entry. The broker then writes one `bAck` record per
//! popped batch rather than one `ack` record per message, and the proxy
//! waits for one round trip. A broker that refuses the batch (an older
//! broker without BATCH_ACK_MESSAGE, or an entry it rejects) gets the
//! entries one by one, so each entry still gets its own status.

use std::collections::{BTreeMap, HashMap};

use apogee_protocol::header::{AckMessageRequestHeader, RpcFields};
use apogee_protocol::pop::ExtraInfo;

use crate::backend::Backend;
use crate::error::{ProxyError, Result};
use crate::receipt::ReceiptHandle;

/// Largest distance from a batch's first offset that goes into its bit
/// set; an entry further away is acked on its own (real batches span at
/// most the 32 messages of one pop).
const MAX_BIT: i64 = 4096;

/// One acknowledgement to make: its receipt handle, parsed.
struct Entry<'a> {
    index: usize,
    receipt: &'a str,
    handle: ReceiptHandle,
    info: ExtraInfo<'a>,
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
    let mut by_broker: BTreeMap<String, Vec<Entry<'_>>> = BTreeMap::new();
    for (index, receipt) in receipts.iter().enumerate() {
        let parsed = ReceiptHandle::parse(receipt).and_then(|handle| {
            let info = ExtraInfo::parse(receipt)
                .map_err(|e| ProxyError::BadReceiptHandle(e.why.to_owned()))?;
            Ok((handle, info))
        });
        match parsed {
            Ok((handle, info)) => by_broker
                .entry(handle.broker_name.clone())
                .or_default()
                .push(Entry {
                    index,
                    receipt,
                    handle,
                    info,
                }),
            Err(e) => results[index] = Some(Err(e)),
        }
    }
    let per_broker = by_broker.into_iter().map(|(broker, entries)| async move {
        let addr = match broker_addr(backend, topic, &broker).await {
            Ok(a) => a,
            Err(first) => {
                // Each entry gets the error (asked again: errors are not Clone).
                let mut out = vec![(entries[0].index, Err(first))];
                for en in &entries[1..] {
                    let e = match broker_addr(backend, topic, &broker).await {
                        Ok(_) => ProxyError::BrokerNotFound(broker.clone()),
                        Err(e) => e,
                    };
                    out.push((en.index, Err(e)));
                }
                return out;
            }
        };
        ack_on_broker(backend, &addr, &broker, group, topic, &entries).await
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
            queue_id: e.handle.queue_id,
            extra_info: e.receipt.to_owned(),
            offset: e.handle.queue_offset,
            rpc: RpcFields {
                broker_name: Some(e.handle.broker_name.clone()),
                ..Default::default()
            },
        };
        (e.index, backend.ack(addr, &h).await)
    });
    futures::future::join_all(singles).await
}

/// The BatchAckMessageRequestBody JSON: one ack per popped batch (same
/// queue, checkpoint offset, pop time and revive queue), its offsets as a
/// `java.util.BitSet`'s little-endian bytes in base64 relative to the
/// checkpoint offset. `None` when an entry cannot be expressed that way.
fn batch_body(group: &str, topic: &str, broker: &str, entries: &[Entry<'_>]) -> Option<Vec<u8>> {
    type Key<'a> = (&'a str, i32, i64, i64, i32);
    let mut batches: HashMap<Key<'_>, Vec<u8>> = HashMap::new();
    let mut order: Vec<Key<'_>> = Vec::new();
    for e in entries {
        let i = &e.info;
        let rel = e.handle.queue_offset.checked_sub(i.ck_offset)?;
        if !(0..MAX_BIT).contains(&rel) {
            return None;
        }
        let key = (
            i.retry,
            e.handle.queue_id,
            i.ck_offset,
            i.pop_time,
            i.revive_qid,
        );
        let bits = batches.entry(key).or_insert_with(|| {
            order.push(key);
            Vec::new()
        });
        let (byte, bit) = ((rel / 8) as usize, rel % 8);
        if bits.len() <= byte {
            bits.resize(byte + 1, 0);
        }
        bits[byte] |= 1 << bit;
    }
    let mut out = String::with_capacity(64 + order.len() * 128);
    out.push_str("{\"acks\":[");
    for (n, key) in order.iter().enumerate() {
        let (retry, queue_id, start, pop_time, revive) = *key;
        let bits = batches.get(key)?;
        if n > 0 {
            out.push(',');
        }
        out.push_str("{\"c\":");
        json_str(&mut out, group);
        out.push_str(",\"t\":");
        json_str(&mut out, topic);
        out.push_str(",\"r\":");
        json_str(&mut out, retry);
        out.push_str(&format!(
            ",\"so\":{start},\"q\":{queue_id},\"rq\":{revive},\"pt\":{pop_time},\"b\":\"{}\"}}",
            base64(bits)
        ));
    }
    out.push_str("],\"brokerName\":");
    json_str(&mut out, broker);
    out.push('}');
    Some(out.into_bytes())
}

/// `s` as a JSON string.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(A[(n >> 18) as usize & 63] as char);
        out.push(A[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            A[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            A[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: usize, receipt: &str) -> Entry<'_> {
        Entry {
            index,
            receipt,
            handle: ReceiptHandle::parse(receipt).unwrap(),
            info: ExtraInfo::parse(receipt).unwrap(),
        }
    }

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(&[5, 2]), "BQI=");
        assert_eq!(base64(&[1]), "AQ==");
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
        assert_eq!(base64(&[]), "");
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
        let body = String::from_utf8(body).unwrap();
        assert_eq!(
            body,
            "{\"acks\":[{\"c\":\"G\",\"t\":\"T\",\"r\":\"0\",\"so\":10,\"q\":1,\"rq\":3,\"pt\":1000,\"b\":\"BQ==\"},\
             {\"c\":\"G\",\"t\":\"T\",\"r\":\"0\",\"so\":7,\"q\":2,\"rq\":3,\"pt\":1000,\"b\":\"AQ==\"}],\
             \"brokerName\":\"broker-a\"}"
        );
    }

    #[test]
    fn an_offset_before_its_checkpoint_is_not_batched() {
        let bad = "10 1000 60000 3 0 broker-a 1 9";
        assert!(batch_body("G", "T", "broker-a", &[entry(0, bad)]).is_none());
    }

    #[test]
    fn names_are_escaped() {
        let mut s = String::new();
        json_str(&mut s, "a\"b\\c\u{1}");
        assert_eq!(s, "\"a\\\"b\\\\c\\u0001\"");
    }
}
