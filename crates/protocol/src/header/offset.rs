//! Offset and message-lookup headers: consumer offsets, max/min/search
//! offsets, earliest store time, QUERY_MESSAGE and VIEW_MESSAGE_BY_ID.

command_header! {
    /// QUERY_CONSUMER_OFFSET (14).
    pub struct QueryConsumerOffsetRequestHeader : rpc {
        req consumer_group: String => "consumerGroup",
        req topic: String => "topic",
        req queue_id: i32 => "queueId",
        /// 5.x: `Some(false)` asks for QUERY_NOT_FOUND instead of offset 0.
        opt set_zero_if_not_found: bool => "setZeroIfNotFound",
    }
}

command_header! {
    /// Response to QUERY_CONSUMER_OFFSET.
    pub struct QueryConsumerOffsetResponseHeader {
        req offset: i64 => "offset",
    }
}

command_header! {
    /// UPDATE_CONSUMER_OFFSET (15).
    pub struct UpdateConsumerOffsetRequestHeader : rpc {
        req consumer_group: String => "consumerGroup",
        req topic: String => "topic",
        req queue_id: i32 => "queueId",
        req commit_offset: i64 => "commitOffset",
    }
}

command_header! {
    /// Response to UPDATE_CONSUMER_OFFSET (no fields).
    pub struct UpdateConsumerOffsetResponseHeader {}
}

command_header! {
    /// GET_MAX_OFFSET (30).
    pub struct GetMaxOffsetRequestHeader : rpc {
        req topic: String => "topic",
        req queue_id: i32 => "queueId",
        /// 5.x; Java primitive defaulting to true.
        def committed: bool = true => "committed",
    }
}

command_header! {
    /// Response to GET_MAX_OFFSET: the number of entries ever written.
    pub struct GetMaxOffsetResponseHeader {
        req offset: i64 => "offset",
    }
}

command_header! {
    /// GET_MIN_OFFSET (31).
    pub struct GetMinOffsetRequestHeader : rpc {
        req topic: String => "topic",
        req queue_id: i32 => "queueId",
    }
}

command_header! {
    /// Response to GET_MIN_OFFSET.
    pub struct GetMinOffsetResponseHeader {
        req offset: i64 => "offset",
    }
}

command_header! {
    /// SEARCH_OFFSET_BY_TIMESTAMP (29).
    pub struct SearchOffsetRequestHeader : rpc {
        req topic: String => "topic",
        req queue_id: i32 => "queueId",
        /// Milliseconds since the epoch.
        req timestamp: i64 => "timestamp",
        /// `LOWER` (default) or `UPPER`, any case.
        opt boundary_type: String => "boundaryType",
    }
}

impl SearchOffsetRequestHeader {
    /// True when the caller asked for the upper boundary; anything else
    /// (absent, `LOWER`, unknown text) means lower, as in Java.
    pub fn is_upper_boundary(&self) -> bool {
        self.boundary_type
            .as_deref()
            .is_some_and(|b| b.trim().eq_ignore_ascii_case("UPPER"))
    }
}

command_header! {
    /// Response to SEARCH_OFFSET_BY_TIMESTAMP.
    pub struct SearchOffsetResponseHeader {
        req offset: i64 => "offset",
    }
}

command_header! {
    /// GET_EARLIEST_MSG_STORETIME (32).
    pub struct GetEarliestMsgStoretimeRequestHeader : rpc {
        req topic: String => "topic",
        req queue_id: i32 => "queueId",
    }
}

command_header! {
    /// Response to GET_EARLIEST_MSG_STORETIME.
    pub struct GetEarliestMsgStoretimeResponseHeader {
        req timestamp: i64 => "timestamp",
    }
}

command_header! {
    /// QUERY_MESSAGE (12): index lookup of `topic#key` in a time window.
    pub struct QueryMessageRequestHeader : rpc {
        req topic: String => "topic",
        req key: String => "key",
        req max_num: i32 => "maxNum",
        req begin_timestamp: i64 => "beginTimestamp",
        req end_timestamp: i64 => "endTimestamp",
        /// Not a Java header field: the `_UNIQUE_KEY_QUERY` extField
        /// (lookup by UNIQ_KEY rather than by user key).
        opt unique_key_query: bool => "_UNIQUE_KEY_QUERY",
    }
}

command_header! {
    /// Response to QUERY_MESSAGE.
    pub struct QueryMessageResponseHeader {
        req index_last_update_timestamp: i64 => "indexLastUpdateTimestamp",
        req index_last_update_phyoffset: i64 => "indexLastUpdatePhyoffset",
    }
}

command_header! {
    /// VIEW_MESSAGE_BY_ID (33).
    pub struct ViewMessageRequestHeader {
        /// 5.x.
        opt topic: String => "topic",
        /// Commit-log offset.
        req offset: i64 => "offset",
    }
}

command_header! {
    /// Response to VIEW_MESSAGE_BY_ID (no fields; the body is the message).
    pub struct ViewMessageResponseHeader {}
}
