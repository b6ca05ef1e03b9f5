//! Consumer pull headers (PULL_MESSAGE 11, LITE_PULL_MESSAGE 361) and the
//! queue lock headers.

command_header! {
    /// PULL_MESSAGE (11) and LITE_PULL_MESSAGE (361).
    pub struct PullMessageRequestHeader : rpc {
        req consumer_group: String => "consumerGroup",
        /// May be `%RETRY%<group>`.
        req topic: String => "topic",
        req queue_id: i32 => "queueId",
        /// First logical offset wanted.
        req queue_offset: i64 => "queueOffset",
        req max_msg_nums: i32 => "maxMsgNums",
        /// `PullSysFlag` bits (see `crate::flags::pull_sys_flag`).
        req sys_flag: i32 => "sysFlag",
        /// Consumer offset to store when the COMMIT_OFFSET bit is set.
        req commit_offset: i64 => "commitOffset",
        /// Long-poll hold time.
        req suspend_timeout_millis: i64 => "suspendTimeoutMillis",
        /// Expression used when the SUBSCRIPTION bit is set.
        opt subscription: String => "subscription",
        req sub_version: i64 => "subVersion",
        /// `TAG` (default) or `SQL92`.
        opt expression_type: String => "expressionType",
        opt max_msg_bytes: i32 => "maxMsgBytes",
        opt request_source: i32 => "requestSource",
        /// Spelled so in Java; proxy only.
        opt proxy_froward_client_id: String => "proxyFrowardClientId",
    }
}

command_header! {
    /// Response to PULL_MESSAGE; `remark` carries the store status name.
    pub struct PullMessageResponseHeader {
        /// Broker id to pull from next (0 = master).
        req suggest_which_broker_id: i64 => "suggestWhichBrokerId",
        req next_begin_offset: i64 => "nextBeginOffset",
        req min_offset: i64 => "minOffset",
        req max_offset: i64 => "maxOffset",
        opt offset_delta: i64 => "offsetDelta",
        opt topic_sys_flag: i32 => "topicSysFlag",
        opt group_sys_flag: i32 => "groupSysFlag",
        /// On NO_PERMISSION: 1 broker, 2 group, 3 topic, 4 broadcasting, 5 subscription.
        opt forbidden_type: i32 => "forbiddenType",
    }
}

command_header! {
    /// LOCK_BATCH_MQ (41): only the inherited fields; the request is the body.
    pub struct LockBatchMqRequestHeader : rpc {}
}

command_header! {
    /// UNLOCK_BATCH_MQ (42): only the inherited fields; the request is the body.
    pub struct UnlockBatchMqRequestHeader : rpc {}
}
