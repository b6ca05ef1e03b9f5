//! Well-known property names (`MessageConst`, reference 6.2). Values are the
//! exact strings Java clients and brokers put in the properties string.

pub const KEYS: &str = "KEYS";
pub const TAGS: &str = "TAGS";
pub const WAIT_STORE_MSG_OK: &str = "WAIT";
pub const DELAY_TIME_LEVEL: &str = "DELAY";
pub const RETRY_TOPIC: &str = "RETRY_TOPIC";
pub const REAL_TOPIC: &str = "REAL_TOPIC";
pub const REAL_QUEUE_ID: &str = "REAL_QID";
pub const TRANSACTION_PREPARED: &str = "TRAN_MSG";
pub const PRODUCER_GROUP: &str = "PGROUP";
pub const MIN_OFFSET: &str = "MIN_OFFSET";
pub const MAX_OFFSET: &str = "MAX_OFFSET";
pub const BUYER_ID: &str = "BUYER_ID";
pub const ORIGIN_MESSAGE_ID: &str = "ORIGIN_MESSAGE_ID";
pub const TRANSFER_FLAG: &str = "TRANSFER_FLAG";
pub const CORRECTION_FLAG: &str = "CORRECTION_FLAG";
pub const MQ2_FLAG: &str = "MQ2_FLAG";
pub const RECONSUME_TIME: &str = "RECONSUME_TIME";
pub const MSG_REGION: &str = "MSG_REGION";
pub const TRACE_SWITCH: &str = "TRACE_ON";
pub const UNIQ_CLIENT_MESSAGE_ID_KEYIDX: &str = "UNIQ_KEY";
/// Short alias of [`UNIQ_CLIENT_MESSAGE_ID_KEYIDX`].
pub const UNIQ_KEY: &str = UNIQ_CLIENT_MESSAGE_ID_KEYIDX;
pub const EXTEND_UNIQ_INFO: &str = "EXTEND_UNIQ_INFO";
pub const MAX_RECONSUME_TIMES: &str = "MAX_RECONSUME_TIMES";
pub const CONSUME_START_TIMESTAMP: &str = "CONSUME_START_TIME";
pub const INNER_NUM: &str = "INNER_NUM";
pub const INNER_BASE: &str = "INNER_BASE";
pub const DUP_INFO: &str = "DUP_INFO";
pub const CHECK_IMMUNITY_TIME_IN_SECONDS: &str = "CHECK_IMMUNITY_TIME_IN_SECONDS";
pub const TRANSACTION_PREPARED_QUEUE_OFFSET: &str = "TRAN_PREPARED_QUEUE_OFFSET";
pub const TRANSACTION_ID: &str = "__transactionId__";
pub const TRANSACTION_CHECK_TIMES: &str = "TRANSACTION_CHECK_TIMES";
pub const INSTANCE_ID: &str = "INSTANCE_ID";
pub const CORRELATION_ID: &str = "CORRELATION_ID";
pub const MESSAGE_REPLY_TO_CLIENT: &str = "REPLY_TO_CLIENT";
pub const MESSAGE_TTL: &str = "TTL";
pub const REPLY_MESSAGE_ARRIVE_TIME: &str = "ARRIVE_TIME";
pub const PUSH_REPLY_TIME: &str = "PUSH_REPLY_TIME";
pub const CLUSTER: &str = "CLUSTER";
pub const MESSAGE_TYPE: &str = "MSG_TYPE";
pub const POP_CK: &str = "POP_CK";
pub const POP_CK_OFFSET: &str = "POP_CK_OFFSET";
pub const FIRST_POP_TIME: &str = "1ST_POP_TIME";
pub const SHARDING_KEY: &str = "__SHARDINGKEY";
pub const FORWARD_QUEUE_ID: &str = "PROPERTY_FORWARD_QUEUE_ID";
pub const REDIRECT: &str = "REDIRECT";
pub const INNER_MULTI_DISPATCH: &str = "INNER_MULTI_DISPATCH";
pub const INNER_MULTI_QUEUE_OFFSET: &str = "INNER_MULTI_QUEUE_OFFSET";
pub const TRACE_CONTEXT: &str = "TRACE_CONTEXT";
pub const TIMER_DELAY_SEC: &str = "TIMER_DELAY_SEC";
pub const TIMER_DELIVER_MS: &str = "TIMER_DELIVER_MS";
pub const BORN_HOST: &str = "__BORNHOST";
pub const BORN_TIMESTAMP: &str = "BORN_TIMESTAMP";
pub const TIMER_ENQUEUE_MS: &str = "TIMER_ENQUEUE_MS";
pub const TIMER_DEQUEUE_MS: &str = "TIMER_DEQUEUE_MS";
pub const TIMER_ROLL_TIMES: &str = "TIMER_ROLL_TIMES";
pub const TIMER_OUT_MS: &str = "TIMER_OUT_MS";
pub const TIMER_DEL_UNIQKEY: &str = "TIMER_DEL_UNIQKEY";
pub const TIMER_DEL_MS: &str = "TIMER_DEL_MS";
pub const TIMER_DELAY_LEVEL: &str = "TIMER_DELAY_LEVEL";
pub const TIMER_DELAY_MS: &str = "TIMER_DELAY_MS";
/// Name of the optional whole-record CRC trailer property (reference 6.9).
pub const CRC32: &str = "__CRC32#";
pub const DLQ_ORIGIN_TOPIC: &str = "DLQ_ORIGIN_TOPIC";
pub const DLQ_ORIGIN_MESSAGE_ID: &str = "DLQ_ORIGIN_MESSAGE_ID";

/// Properties whose name starts with this are client-local and never stored.
pub const TRANSIENT_PREFIX: &str = "__RMQ.TRANSIENT.";
pub const TRANSIENT_TOPIC_CONFIG: &str = "__RMQ.TRANSIENT.TOPIC_SYS_FLAG";
pub const TRANSIENT_GROUP_CONFIG: &str = "__RMQ.TRANSIENT.GROUP_SYS_FLAG";

/// Separator between the business keys inside `KEYS`.
pub const KEY_SEPARATOR: &str = " ";

/// Value of `MSG_TYPE` on request/reply replies.
pub const REPLY_MESSAGE_FLAG: &str = "reply";

/// The names Java reserves for the system (`MessageConst.STRING_HASH_SET`):
/// a user property with one of these names is refused by Java clients.
pub const SYSTEM_PROPERTIES: &[&str] = &[
    TRACE_SWITCH,
    MSG_REGION,
    KEYS,
    TAGS,
    WAIT_STORE_MSG_OK,
    DELAY_TIME_LEVEL,
    RETRY_TOPIC,
    REAL_TOPIC,
    REAL_QUEUE_ID,
    TRANSACTION_PREPARED,
    PRODUCER_GROUP,
    MIN_OFFSET,
    MAX_OFFSET,
    BUYER_ID,
    ORIGIN_MESSAGE_ID,
    TRANSFER_FLAG,
    CORRECTION_FLAG,
    MQ2_FLAG,
    RECONSUME_TIME,
    UNIQ_CLIENT_MESSAGE_ID_KEYIDX,
    MAX_RECONSUME_TIMES,
    CONSUME_START_TIMESTAMP,
    POP_CK,
    POP_CK_OFFSET,
    FIRST_POP_TIME,
    TRANSACTION_PREPARED_QUEUE_OFFSET,
    DUP_INFO,
    EXTEND_UNIQ_INFO,
    INSTANCE_ID,
    CORRELATION_ID,
    MESSAGE_REPLY_TO_CLIENT,
    MESSAGE_TTL,
    REPLY_MESSAGE_ARRIVE_TIME,
    PUSH_REPLY_TIME,
    CLUSTER,
    MESSAGE_TYPE,
    INNER_MULTI_QUEUE_OFFSET,
    TIMER_DELAY_MS,
    TIMER_DELAY_SEC,
    TIMER_DELIVER_MS,
    TIMER_ENQUEUE_MS,
    TIMER_DEQUEUE_MS,
    TIMER_ROLL_TIMES,
    TIMER_OUT_MS,
    TIMER_DEL_UNIQKEY,
    TIMER_DELAY_LEVEL,
    BORN_HOST,
    BORN_TIMESTAMP,
    DLQ_ORIGIN_TOPIC,
    DLQ_ORIGIN_MESSAGE_ID,
    CRC32,
];

/// True if `name` is reserved for the system (see [`SYSTEM_PROPERTIES`]).
pub fn is_system_property(name: &str) -> bool {
    SYSTEM_PROPERTIES.contains(&name)
}

/// True if `name` must not be written to the store.
pub fn is_transient(name: &str) -> bool {
    name.starts_with(TRANSIENT_PREFIX)
}
