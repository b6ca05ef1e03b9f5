//! Transactional sends (Java `TransactionMQProducer`): a half message is
//! stored invisible to consumers, the local transaction runs, and
//! END_TRANSACTION commits or rolls it back. A half message left undecided
//! (the producer died, or answered "unknown") is checked back by the broker
//! with CHECK_TRANSACTION_STATE to a live producer of the group, which asks
//! its [`TransactionChecker`] and answers with END_TRANSACTION.

use std::sync::Arc;

use apogee_protocol::code::request_code;
use apogee_protocol::header::{CheckTransactionStateRequestHeader, EndTransactionRequestHeader};
use apogee_protocol::message::{decode_offset_msg_id, decode_stored, keys, sysflag};
use apogee_protocol::RemotingCommand;
use apogee_remoting::{processor_fn, ProcessorRegistry};
use apogee_throttle::{throttled_warn, LogThrottle};

use crate::error::{ClientError, Result};
use crate::instance::ClientInstance;
use crate::message::MessageExt;
use crate::producer::SendResult;

/// The outcome of a local transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalTransactionState {
    /// Deliver the message.
    Commit,
    /// Drop it: consumers never see it.
    Rollback,
    /// Not decided yet: the broker asks again later (check-back).
    Unknown,
}

impl LocalTransactionState {
    /// END_TRANSACTION's `commitOrRollback` value.
    fn code(self) -> i32 {
        match self {
            LocalTransactionState::Commit => sysflag::TRANSACTION_COMMIT_TYPE,
            LocalTransactionState::Rollback => sysflag::TRANSACTION_ROLLBACK_TYPE,
            LocalTransactionState::Unknown => sysflag::TRANSACTION_NOT_TYPE,
        }
    }
}

/// Answers the broker's check-back for a half message whose transaction
/// outcome it does not know. Runs on a blocking thread: it may query a
/// database.
pub trait TransactionChecker: Send + Sync + 'static {
    fn check(&self, msg: &MessageExt) -> LocalTransactionState;
}

impl<F> TransactionChecker for F
where
    F: Fn(&MessageExt) -> LocalTransactionState + Send + Sync + 'static,
{
    fn check(&self, msg: &MessageExt) -> LocalTransactionState {
        self(msg)
    }
}

/// The result of [`crate::Producer::send_in_transaction`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionSendResult {
    /// The half message's send result.
    pub send: SendResult,
    /// What the local transaction decided (Rollback when the half message
    /// was not stored).
    pub state: LocalTransactionState,
}

/// The END_TRANSACTION request.
fn end_request(h: &EndTransactionRequestHeader, remark: Option<String>) -> RemotingCommand {
    let mut cmd = ClientInstance::request_with(request_code::END_TRANSACTION, h);
    cmd.remark = remark;
    cmd
}

/// Ends the transaction of a stored half message (one-way, as Java does:
/// a lost END_TRANSACTION is made up for by the check-back).
pub(crate) async fn end_after_send(
    instance: &ClientInstance,
    group: &str,
    send: &SendResult,
    state: LocalTransactionState,
    remark: Option<String>,
) -> Result<()> {
    let (_, commit_log_offset) = decode_offset_msg_id(&send.offset_msg_id)
        .map_err(|e| ClientError::InvalidArgument(format!("offset message id: {e}")))?;
    let addr = instance
        .master_addr_or_refresh(&send.queue.broker_name, &send.queue.topic)
        .await?;
    let h = EndTransactionRequestHeader {
        topic: Some(send.queue.topic.clone()),
        producer_group: group.to_string(),
        tran_state_table_offset: send.queue_offset,
        commit_log_offset,
        commit_or_rollback: state.code(),
        from_transaction_check: false,
        msg_id: send.msg_id.clone(),
        transaction_id: send.transaction_id.clone(),
        ..Default::default()
    };
    let cmd = end_request(&h, remark);
    instance.remoting.invoke_oneway(&addr, cmd).await?;
    Ok(())
}

static BAD_CHECK: LogThrottle = LogThrottle::new("bad transaction check-back");

/// Serves CHECK_TRANSACTION_STATE with `checker`.
pub(crate) fn register_checker(registry: &ProcessorRegistry, checker: Arc<dyn TransactionChecker>) {
    registry.register(
        request_code::CHECK_TRANSACTION_STATE,
        processor_fn(move |rc, req: RemotingCommand| {
            let checker = Arc::clone(&checker);
            let channel = rc.channel().clone();
            let broker = rc.peer_addr();
            async move {
                let h: CheckTransactionStateRequestHeader = match req.decode_header() {
                    Ok(h) => h,
                    Err(e) => {
                        throttled_warn!(BAD_CHECK, (), %broker, error = %e, "bad CHECK_TRANSACTION_STATE header");
                        return Ok(None);
                    }
                };
                let body = req.body.clone().unwrap_or_default();
                let msg = match decode_stored(&body, false) {
                    Ok((d, _)) => MessageExt::from_decoded(d, ""),
                    Err(e) => {
                        throttled_warn!(BAD_CHECK, (), %broker, error = %e, "CHECK_TRANSACTION_STATE carries no readable message");
                        return Ok(None);
                    }
                };
                let group = msg
                    .properties
                    .get(keys::PRODUCER_GROUP)
                    .cloned()
                    .unwrap_or_default();
                let msg_id = msg
                    .properties
                    .get(keys::UNIQ_KEY)
                    .cloned()
                    .or_else(|| h.msg_id.clone())
                    .unwrap_or_default();
                let topic = msg.topic.clone();
                // The checker may block (a database lookup): off the workers.
                let state = match tokio::task::spawn_blocking(move || checker.check(&msg)).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "transaction checker failed; the broker will ask again");
                        return Ok(None);
                    }
                };
                let end = EndTransactionRequestHeader {
                    topic: Some(topic),
                    producer_group: group,
                    tran_state_table_offset: h.tran_state_table_offset,
                    commit_log_offset: h.commit_log_offset,
                    commit_or_rollback: state.code(),
                    from_transaction_check: true,
                    msg_id,
                    transaction_id: h.transaction_id.clone(),
                    ..Default::default()
                };
                let cmd = end_request(&end, None);
                if let Err(e) = channel.send_oneway(cmd).await {
                    throttled_warn!(BAD_CHECK, (), %broker, error = %e, "cannot answer a check-back");
                }
                Ok(None)
            }
        }),
    );
}
