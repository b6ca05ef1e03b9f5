//! Message lookup for admin tools: QUERY_MESSAGE (12, by key or by
//! UNIQ_KEY through the store's index) and VIEW_MESSAGE_BY_ID (33, by
//! CommitLog offset). Bodies are the stored records byte for byte.

use std::sync::Arc;

use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::header::{
    QueryMessageRequestHeader, QueryMessageResponseHeader, ViewMessageRequestHeader,
};
use apogee_protocol::RemotingCommand;
use apogee_remoting::{processor_fn, ProcessResult, ProcessorRegistry};
use bytes::{Bytes, BytesMut};

use super::admin::{bad_header, fail};
use crate::context::BrokerContext;

/// Java `maxMsgsNumBatch`: the most messages one key query returns.
pub const MAX_MSGS_NUM_BATCH: i32 = 64;
/// Java `defaultQueryMaxNum`: the count used for unique-key queries.
pub const DEFAULT_QUERY_MAX_NUM: i32 = 32;
/// The extField that turns QUERY_MESSAGE into a UNIQ_KEY lookup.
pub const UNIQUE_KEY_QUERY_FLAG: &str = "_UNIQUE_KEY_QUERY";

/// Registers QUERY_MESSAGE and VIEW_MESSAGE_BY_ID.
pub fn register(registry: &ProcessorRegistry, ctx: &Arc<BrokerContext>) {
    let c = Arc::clone(ctx);
    registry.register(
        request_code::QUERY_MESSAGE,
        processor_fn(move |_rc, req| {
            let c = Arc::clone(&c);
            async move { Ok(Some(query_message(&c, &req).await)) as ProcessResult }
        }),
    );
    let c = Arc::clone(ctx);
    registry.register(
        request_code::VIEW_MESSAGE_BY_ID,
        processor_fn(move |_rc, req| {
            let c = Arc::clone(&c);
            async move { Ok(Some(view_message_by_id(&c, &req).await)) as ProcessResult }
        }),
    );
}

/// The number of messages a query may return: unique-key queries use
/// `defaultQueryMaxNum` whatever the caller asked (as Java does), key
/// queries are capped at `maxMsgsNumBatch`.
pub fn effective_max_num(requested: i32, unique_key: bool) -> usize {
    let n = if unique_key {
        DEFAULT_QUERY_MAX_NUM
    } else {
        requested.min(MAX_MSGS_NUM_BATCH)
    };
    usize::try_from(n).unwrap_or(0)
}

/// Concatenates stored records into one body (clients split it again by
/// each record's TOTALSIZE).
pub fn concat_records(records: &[Bytes]) -> Bytes {
    if let [one] = records {
        return one.clone();
    }
    let total: usize = records.iter().map(Bytes::len).sum();
    let mut body = BytesMut::with_capacity(total);
    for r in records {
        body.extend_from_slice(r);
    }
    body.freeze()
}

/// QUERY_MESSAGE: index lookup of `topic#key` within the time window.
pub async fn query_message(ctx: &Arc<BrokerContext>, req: &RemotingCommand) -> RemotingCommand {
    let h: QueryMessageRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return bad_header(req, e),
    };
    // Java compares the raw text with "true"; accept any boolean spelling.
    let unique = h.unique_key_query.unwrap_or(false);
    let max = effective_max_num(h.max_num, unique);
    let store = Arc::clone(&ctx.store);
    let (topic, key) = (h.topic.clone(), h.key.clone());
    let (begin, end) = (h.begin_timestamp, h.end_timestamp);
    // Index and CommitLog reads may fault pages in from disk: keep them off
    // the async workers.
    let result = tokio::task::spawn_blocking(move || {
        if unique {
            store.query_by_unique_key(&topic, &key, max, begin, end)
        } else {
            store.query_by_key(&topic, &key, max, begin, end)
        }
    })
    .await;
    let result = match result {
        Ok(r) => r,
        Err(e) => {
            static QUERY_FAILED: apogee_throttle::LogThrottle =
                apogee_throttle::LogThrottle::new("query task failed");
            apogee_throttle::throttled_warn!(QUERY_FAILED, (), topic = %h.topic, key = %h.key,
                "query task failed: {e}");
            return fail(
                response_code::SYSTEM_ERROR,
                format!("message query failed: {e}"),
            );
        }
    };
    let header = QueryMessageResponseHeader {
        index_last_update_timestamp: result.index_last_update_timestamp,
        index_last_update_phyoffset: result.index_last_update_phy_offset,
    };
    if result.messages.is_empty() {
        // Java's wording, plus what was asked, so the caller can tell a
        // wrong window from a wrong key.
        return fail(
            response_code::QUERY_NOT_FOUND,
            format!(
                "can not find message, maybe time range not correct (topic {}, {} {}, window [{}, {}])",
                h.topic,
                if unique { "unique key" } else { "key" },
                h.key,
                h.begin_timestamp,
                h.end_timestamp
            ),
        )
        .with_header(&header);
    }
    RemotingCommand::response(response_code::SUCCESS, None)
        .with_header(&header)
        .with_body(concat_records(&result.messages))
}

/// VIEW_MESSAGE_BY_ID: the record stored at a CommitLog offset (decoded by
/// the client from an offset message id).
pub async fn view_message_by_id(
    ctx: &Arc<BrokerContext>,
    req: &RemotingCommand,
) -> RemotingCommand {
    let h: ViewMessageRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return bad_header(req, e),
    };
    let store = Arc::clone(&ctx.store);
    let offset = h.offset;
    let found = tokio::task::spawn_blocking(move || store.look_message_by_offset(offset))
        .await
        .ok()
        .flatten();
    match found {
        Some(rec) => RemotingCommand::response(response_code::SUCCESS, None).with_body(rec),
        None => fail(
            response_code::SYSTEM_ERROR,
            format!(
                "can not find message by the offset, {} (no record starts there, or its CommitLog file was deleted; \
                 CommitLog holds [{}, {}))",
                h.offset,
                ctx.store.commit_log_min_offset(),
                ctx.store.commit_log_max_offset()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_num_rules() {
        assert_eq!(effective_max_num(1000, false), 64);
        assert_eq!(effective_max_num(10, false), 10);
        assert_eq!(effective_max_num(-3, false), 0);
        assert_eq!(effective_max_num(1, true), 32);
    }

    #[test]
    fn concat_keeps_order_and_bytes() {
        let a = Bytes::from_static(b"abc");
        let b = Bytes::from_static(b"de");
        assert_eq!(&concat_records(&[a.clone(), b])[..], b"abcde");
        assert_eq!(&concat_records(&[a])[..], b"abc");
        assert!(concat_records(&[]).is_empty());
    }
}
