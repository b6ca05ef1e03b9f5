//! POP consumption headers (Apache 5.x): POP_MESSAGE (200050), ACK_MESSAGE
//! (200051) and CHANGE_MESSAGE_INVISIBLETIME (200053). Field names and
//! required-ness follow Apache's `PopMessageRequestHeader` and friends.

command_header! {
    /// POP_MESSAGE (200050).
    pub struct PopMessageRequestHeader : rpc {
        req consumer_group: String => "consumerGroup",
        req topic: String => "topic",
        /// -1: any queue of the topic.
        req queue_id: i32 => "queueId",
        req max_msg_nums: i32 => "maxMsgNums",
        /// Milliseconds the popped messages stay invisible to other pops.
        req invisible_time: i64 => "invisibleTime",
        /// Long-polling time in milliseconds (0: answer at once).
        req poll_time: i64 => "pollTime",
        req born_time: i64 => "bornTime",
        /// Where a group without progress starts: 0 MIN (first offset), 1 MAX.
        req init_mode: i32 => "initMode",
        /// `TAG` (default) or `SQL92`.
        opt exp_type: String => "expType",
        opt exp: String => "exp",
        opt order: bool => "order",
        opt attempt_id: String => "attemptId",
    }
}

command_header! {
    /// Response to POP_MESSAGE.
    pub struct PopMessageResponseHeader {
        req pop_time: i64 => "popTime",
        req invisible_time: i64 => "invisibleTime",
        req revive_qid: i32 => "reviveQid",
        /// Messages left behind the popped ones.
        req rest_num: i64 => "restNum",
        /// `retry-flag queueId startOffset` entries joined by `;`.
        opt start_offset_info: String => "startOffsetInfo",
        /// `retry-flag queueId offset,offset…` entries joined by `;`.
        opt msg_offset_info: String => "msgOffsetInfo",
        opt order_count_info: String => "orderCountInfo",
    }
}

command_header! {
    /// ACK_MESSAGE (200051).
    pub struct AckMessageRequestHeader : rpc {
        req consumer_group: String => "consumerGroup",
        req topic: String => "topic",
        req queue_id: i32 => "queueId",
        /// The receipt handle (`POP_CK`) of the message.
        req extra_info: String => "extraInfo",
        /// Queue offset of the acknowledged message.
        req offset: i64 => "offset",
    }
}

command_header! {
    /// CHANGE_MESSAGE_INVISIBLETIME (200053).
    pub struct ChangeInvisibleTimeRequestHeader : rpc {
        req consumer_group: String => "consumerGroup",
        req topic: String => "topic",
        req queue_id: i32 => "queueId",
        req extra_info: String => "extraInfo",
        req offset: i64 => "offset",
        /// New invisible time in milliseconds, counted from now.
        req invisible_time: i64 => "invisibleTime",
    }
}

command_header! {
    /// Response to CHANGE_MESSAGE_INVISIBLETIME.
    pub struct ChangeInvisibleTimeResponseHeader {
        req pop_time: i64 => "popTime",
        req invisible_time: i64 => "invisibleTime",
        req revive_qid: i32 => "reviveQid",
    }
}

command_header! {
    /// PEEK_MESSAGE (200052): messages from the group's POP progress,
    /// nothing moved and nothing made invisible.
    pub struct PeekMessageRequestHeader : rpc {
        req topic: String => "topic",
        /// -1: any queue.
        req queue_id: i32 => "queueId",
        req max_msg_nums: i32 => "maxMsgNums",
        req consumer_group: String => "consumerGroup",
    }
}

command_header! {
    /// NOTIFICATION (200054): whether a POP would find messages, long-polled.
    pub struct NotificationRequestHeader : rpc {
        req consumer_group: String => "consumerGroup",
        req topic: String => "topic",
        /// -1: any queue.
        req queue_id: i32 => "queueId",
        req poll_time: i64 => "pollTime",
        req born_time: i64 => "bornTime",
        opt order: bool => "order",
        opt attempt_id: String => "attemptId",
    }
}

command_header! {
    /// Response to NOTIFICATION.
    pub struct NotificationResponseHeader {
        req has_msg: bool => "hasMsg",
        def polling_full: bool = false => "pollingFull",
    }
}

command_header! {
    /// POLLING_INFO (200055): how many POP requests are held for a queue.
    pub struct PollingInfoRequestHeader : rpc {
        req consumer_group: String => "consumerGroup",
        req topic: String => "topic",
        req queue_id: i32 => "queueId",
    }
}

command_header! {
    /// Response to POLLING_INFO.
    pub struct PollingInfoResponseHeader {
        req polling_num: i32 => "pollingNum",
    }
}
