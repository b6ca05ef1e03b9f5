//! Client-management headers: heartbeat, unregistration, consumer lists,
//! and the broker-to-client calls (ids changed, running info, direct
//! consumption, offset reset, status).

command_header! {
    /// HEART_BEAT (34): no own fields; the body is the heartbeat data.
    pub struct HeartbeatRequestHeader : rpc {}
}

command_header! {
    /// UNREGISTER_CLIENT (35).
    pub struct UnregisterClientRequestHeader : rpc {
        req client_id: String => "clientID",
        opt producer_group: String => "producerGroup",
        opt consumer_group: String => "consumerGroup",
    }
}

command_header! {
    /// Response to UNREGISTER_CLIENT (no fields).
    pub struct UnregisterClientResponseHeader {}
}

command_header! {
    /// GET_CONSUMER_LIST_BY_GROUP (38).
    pub struct GetConsumerListByGroupRequestHeader : rpc {
        req consumer_group: String => "consumerGroup",
    }
}

command_header! {
    /// Response to GET_CONSUMER_LIST_BY_GROUP (no fields; the ids are the body).
    pub struct GetConsumerListByGroupResponseHeader {}
}

command_header! {
    /// NOTIFY_CONSUMER_IDS_CHANGED (40), broker to consumer, oneway.
    pub struct NotifyConsumerIdsChangedRequestHeader : rpc {
        req consumer_group: String => "consumerGroup",
    }
}

command_header! {
    /// GET_CONSUMER_RUNNING_INFO (307), admin to broker to client.
    pub struct GetConsumerRunningInfoRequestHeader : rpc {
        req consumer_group: String => "consumerGroup",
        req client_id: String => "clientId",
        def jstack_enable: bool = false => "jstackEnable",
    }
}

command_header! {
    /// CONSUME_MESSAGE_DIRECTLY (309).
    pub struct ConsumeMessageDirectlyResultRequestHeader : rpc {
        req consumer_group: String => "consumerGroup",
        opt client_id: String => "clientId",
        opt msg_id: String => "msgId",
        /// An own field in Java (besides the inherited `bname`).
        opt broker_name: String => "brokerName",
        opt topic: String => "topic",
        opt topic_sys_flag: i32 => "topicSysFlag",
        opt group_sys_flag: i32 => "groupSysFlag",
    }
}

command_header! {
    /// INVOKE_BROKER_TO_RESET_OFFSET (222) and RESET_CONSUMER_CLIENT_OFFSET (220).
    pub struct ResetOffsetRequestHeader : rpc {
        req group: String => "group",
        req topic: String => "topic",
        /// -1 = all queues.
        def queue_id: i32 = -1 => "queueId",
        opt offset: i64 => "offset",
        req timestamp: i64 => "timestamp",
        req is_force: bool => "isForce",
    }
}

command_header! {
    /// GET_CONSUMER_STATUS_FROM_CLIENT (221) and
    /// INVOKE_BROKER_TO_GET_CONSUMER_STATUS (223).
    pub struct GetConsumerStatusRequestHeader : rpc {
        req topic: String => "topic",
        req group: String => "group",
        opt client_addr: String => "clientAddr",
    }
}
