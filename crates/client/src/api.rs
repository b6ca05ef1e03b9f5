//! Typed broker calls shared by the consumers and the admin client (Java
//! `MQClientAPIImpl`): pull, offsets, group membership, queue locks and
//! send-back. Each turns a refusal into [`ClientError::Broker`].

use std::collections::BTreeSet;
use std::time::Duration;

use apogee_protocol::body::{
    GetConsumerListByGroupResponseBody, LockBatchRequestBody, LockBatchResponseBody,
};
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::header::{
    ConsumerSendMsgBackRequestHeader, GetConsumerListByGroupRequestHeader,
    GetMaxOffsetRequestHeader, GetMaxOffsetResponseHeader, GetMinOffsetRequestHeader,
    GetMinOffsetResponseHeader, PullMessageRequestHeader, PullMessageResponseHeader,
    QueryConsumerOffsetRequestHeader, QueryConsumerOffsetResponseHeader, SearchOffsetRequestHeader,
    SearchOffsetResponseHeader, UpdateConsumerOffsetRequestHeader,
};
use apogee_protocol::message::decode_stored_many;

use crate::error::{ClientError, Result};
use crate::instance::ClientInstance;
use crate::message::{MessageExt, MessageQueue};

/// What a pull found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullStatus {
    /// Messages were returned.
    Found,
    /// Nothing new (PULL_NOT_FOUND).
    NoNewMsg,
    /// Messages exist but none matched the filter (PULL_RETRY_IMMEDIATELY).
    NoMatchedMsg,
    /// The requested offset is outside the queue (PULL_OFFSET_MOVED).
    OffsetIllegal,
}

/// The answer to a pull.
#[derive(Debug, Clone)]
pub struct PullResult {
    pub status: PullStatus,
    pub next_begin_offset: i64,
    pub min_offset: i64,
    pub max_offset: i64,
    pub suggest_which_broker_id: i64,
    pub messages: Vec<MessageExt>,
}

impl ClientInstance {
    /// PULL_MESSAGE (or LITE_PULL_MESSAGE) to `addr`; the RPC waits up to
    /// `timeout` (which must exceed the header's suspend time).
    pub async fn pull(
        &self,
        addr: &str,
        broker_name: &str,
        code: i32,
        header: &PullMessageRequestHeader,
        timeout: Duration,
    ) -> Result<PullResult> {
        let cmd = Self::request_with(code, header);
        let resp = self.remoting.invoke(addr, cmd, timeout).await?;
        let status = match resp.code {
            response_code::SUCCESS => PullStatus::Found,
            response_code::PULL_NOT_FOUND => PullStatus::NoNewMsg,
            response_code::PULL_RETRY_IMMEDIATELY => PullStatus::NoMatchedMsg,
            response_code::PULL_OFFSET_MOVED => PullStatus::OffsetIllegal,
            _ => return Err(ClientError::broker(addr, &resp)),
        };
        let h: PullMessageResponseHeader = resp.decode_header()?;
        let messages = match (&resp.body, status) {
            (Some(body), PullStatus::Found) => decode_stored_many(body, false)
                .into_iter()
                .map(|d| MessageExt::from_decoded(d, broker_name))
                .collect(),
            _ => Vec::new(),
        };
        Ok(PullResult {
            status,
            next_begin_offset: h.next_begin_offset,
            min_offset: h.min_offset,
            max_offset: h.max_offset,
            suggest_which_broker_id: h.suggest_which_broker_id,
            messages,
        })
    }

    /// QUERY_CONSUMER_OFFSET; `Ok(None)` when the broker has none (QUERY_NOT_FOUND).
    pub async fn query_consumer_offset(
        &self,
        addr: &str,
        group: &str,
        mq: &MessageQueue,
    ) -> Result<Option<i64>> {
        let h = QueryConsumerOffsetRequestHeader {
            consumer_group: group.to_string(),
            topic: mq.topic.clone(),
            queue_id: mq.queue_id,
            ..Default::default()
        };
        let resp = self
            .invoke(
                addr,
                Self::request_with(request_code::QUERY_CONSUMER_OFFSET, &h),
            )
            .await?;
        match resp.code {
            response_code::SUCCESS => Ok(Some(
                resp.decode_header::<QueryConsumerOffsetResponseHeader>()?
                    .offset,
            )),
            response_code::QUERY_NOT_FOUND => Ok(None),
            _ => Err(ClientError::broker(addr, &resp)),
        }
    }

    /// UPDATE_CONSUMER_OFFSET, oneway (the periodic persist) or awaited.
    pub async fn update_consumer_offset(
        &self,
        addr: &str,
        group: &str,
        mq: &MessageQueue,
        offset: i64,
        oneway: bool,
    ) -> Result<()> {
        let h = UpdateConsumerOffsetRequestHeader {
            consumer_group: group.to_string(),
            topic: mq.topic.clone(),
            queue_id: mq.queue_id,
            commit_offset: offset,
            ..Default::default()
        };
        let mut cmd = Self::request_with(request_code::UPDATE_CONSUMER_OFFSET, &h);
        if oneway {
            cmd.mark_oneway();
            self.remoting.invoke_oneway(addr, cmd).await?;
            Ok(())
        } else {
            self.invoke_ok(addr, cmd).await.map(|_| ())
        }
    }

    pub async fn max_offset(&self, addr: &str, mq: &MessageQueue) -> Result<i64> {
        let h = GetMaxOffsetRequestHeader {
            topic: mq.topic.clone(),
            queue_id: mq.queue_id,
            ..Default::default()
        };
        let resp = self
            .invoke_ok(addr, Self::request_with(request_code::GET_MAX_OFFSET, &h))
            .await?;
        Ok(resp.decode_header::<GetMaxOffsetResponseHeader>()?.offset)
    }

    pub async fn min_offset(&self, addr: &str, mq: &MessageQueue) -> Result<i64> {
        let h = GetMinOffsetRequestHeader {
            topic: mq.topic.clone(),
            queue_id: mq.queue_id,
            ..Default::default()
        };
        let resp = self
            .invoke_ok(addr, Self::request_with(request_code::GET_MIN_OFFSET, &h))
            .await?;
        Ok(resp.decode_header::<GetMinOffsetResponseHeader>()?.offset)
    }

    /// SEARCH_OFFSET_BY_TIMESTAMP (lower boundary).
    pub async fn search_offset(
        &self,
        addr: &str,
        mq: &MessageQueue,
        timestamp: i64,
    ) -> Result<i64> {
        let h = SearchOffsetRequestHeader {
            topic: mq.topic.clone(),
            queue_id: mq.queue_id,
            timestamp,
            ..Default::default()
        };
        let resp = self
            .invoke_ok(
                addr,
                Self::request_with(request_code::SEARCH_OFFSET_BY_TIMESTAMP, &h),
            )
            .await?;
        Ok(resp.decode_header::<SearchOffsetResponseHeader>()?.offset)
    }

    /// GET_CONSUMER_LIST_BY_GROUP: the client ids of a group's live members.
    pub async fn consumer_ids(&self, addr: &str, group: &str) -> Result<Vec<String>> {
        let h = GetConsumerListByGroupRequestHeader {
            consumer_group: group.to_string(),
            ..Default::default()
        };
        let resp = self
            .invoke_ok(
                addr,
                Self::request_with(request_code::GET_CONSUMER_LIST_BY_GROUP, &h),
            )
            .await?;
        let body = resp.body.as_deref().unwrap_or(b"{}");
        Ok(GetConsumerListByGroupResponseBody::decode(body)?.consumer_id_list)
    }

    /// LOCK_BATCH_MQ: the queues this client now holds.
    pub async fn lock_batch(
        &self,
        addr: &str,
        group: &str,
        mqs: BTreeSet<MessageQueue>,
    ) -> Result<BTreeSet<MessageQueue>> {
        let body = LockBatchRequestBody {
            consumer_group: group.to_string(),
            client_id: self.client_id.clone(),
            only_this_broker: false,
            mq_set: mqs,
        };
        let cmd = Self::request(request_code::LOCK_BATCH_MQ).with_body(body.encode());
        let resp = self.invoke_ok(addr, cmd).await?;
        let body = resp.body.as_deref().unwrap_or(b"{}");
        Ok(LockBatchResponseBody::decode(body)?.lock_ok_mq_set)
    }

    /// UNLOCK_BATCH_MQ.
    pub async fn unlock_batch(
        &self,
        addr: &str,
        group: &str,
        mqs: BTreeSet<MessageQueue>,
        oneway: bool,
    ) -> Result<()> {
        let body = LockBatchRequestBody {
            consumer_group: group.to_string(),
            client_id: self.client_id.clone(),
            only_this_broker: false,
            mq_set: mqs,
        };
        let mut cmd = Self::request(request_code::UNLOCK_BATCH_MQ).with_body(body.encode());
        if oneway {
            cmd.mark_oneway();
            self.remoting.invoke_oneway(addr, cmd).await?;
            Ok(())
        } else {
            self.invoke_ok(addr, cmd).await.map(|_| ())
        }
    }

    /// CONSUMER_SEND_MSG_BACK: hands a failed message back for retry
    /// (`delay_level` 0 lets the broker choose; -1 sends it to the DLQ).
    pub async fn send_msg_back(
        &self,
        addr: &str,
        group: &str,
        msg: &MessageExt,
        delay_level: i32,
        max_reconsume_times: i32,
    ) -> Result<()> {
        let h = ConsumerSendMsgBackRequestHeader {
            offset: msg.commit_log_offset,
            group: group.to_string(),
            delay_level,
            origin_msg_id: Some(msg.msg_id.clone()),
            origin_topic: Some(msg.topic.clone()),
            unit_mode: false,
            max_reconsume_times: Some(max_reconsume_times),
            ..Default::default()
        };
        self.invoke_ok(
            addr,
            Self::request_with(request_code::CONSUMER_SEND_MSG_BACK, &h),
        )
        .await
        .map(|_| ())
    }
}
