//! Administration headers (mqadmin / dashboard): topics, groups, stats,
//! connections, broker config and a few maintenance calls.

command_header! {
    /// UPDATE_AND_CREATE_TOPIC (17).
    pub struct CreateTopicRequestHeader : rpc {
        req topic: String => "topic",
        req default_topic: String => "defaultTopic",
        req read_queue_nums: i32 => "readQueueNums",
        req write_queue_nums: i32 => "writeQueueNums",
        /// `PermName` bits.
        req perm: i32 => "perm",
        /// `SINGLE_TAG` or `MULTI_TAG`.
        req topic_filter_type: String => "topicFilterType",
        opt topic_sys_flag: i32 => "topicSysFlag",
        /// Required in Java but defaulted there; lenient here.
        def order: bool = false => "order",
        /// `+k=v,+k2=v2,-k3` syntax.
        opt attributes: String => "attributes",
        def force: bool = false => "force",
    }
}

command_header! {
    /// DELETE_TOPIC_IN_BROKER (215).
    pub struct DeleteTopicRequestHeader : rpc {
        req topic: String => "topic",
    }
}

command_header! {
    /// GET_ALL_TOPIC_CONFIG (21). 5.x paging; old clients send no header at
    /// all, so `topicSeq` (required in Java) is optional here.
    pub struct GetAllTopicConfigRequestHeader {
        opt topic_seq: i32 => "topicSeq",
        opt data_version: String => "dataVersion",
        opt max_topic_num: i32 => "maxTopicNum",
    }
}

command_header! {
    /// Response to a paged GET_ALL_TOPIC_CONFIG.
    pub struct GetAllTopicConfigResponseHeader {
        req total_topic_num: i32 => "totalTopicNum",
    }
}

command_header! {
    /// GET_ALL_SUBSCRIPTIONGROUP_CONFIG (201), 5.x paging; optional like
    /// [`GetAllTopicConfigRequestHeader`].
    pub struct GetAllSubscriptionGroupRequestHeader {
        opt group_seq: i32 => "groupSeq",
        opt data_version: String => "dataVersion",
        opt max_group_num: i32 => "maxGroupNum",
    }
}

command_header! {
    /// Response to a paged GET_ALL_SUBSCRIPTIONGROUP_CONFIG.
    pub struct GetAllSubscriptionGroupResponseHeader {
        req total_group_num: i32 => "totalGroupNum",
    }
}

command_header! {
    /// GET_TOPIC_STATS_INFO (202).
    pub struct GetTopicStatsInfoRequestHeader : rpc {
        req topic: String => "topic",
    }
}

command_header! {
    /// GET_CONSUME_STATS (208).
    pub struct GetConsumeStatsRequestHeader : rpc {
        req consumer_group: String => "consumerGroup",
        opt topic: String => "topic",
        /// `;`-separated topics.
        opt topic_list: String => "topicList",
    }
}

command_header! {
    /// GET_BROKER_CONSUME_STATS (317).
    pub struct GetConsumeStatsInBrokerHeader {
        req is_order: bool => "isOrder",
    }
}

command_header! {
    /// GET_CONSUMER_CONNECTION_LIST (203).
    pub struct GetConsumerConnectionListRequestHeader : rpc {
        req consumer_group: String => "consumerGroup",
    }
}

command_header! {
    /// GET_PRODUCER_CONNECTION_LIST (204).
    pub struct GetProducerConnectionListRequestHeader : rpc {
        req producer_group: String => "producerGroup",
    }
}

command_header! {
    /// GET_TOPIC_CONFIG (351).
    pub struct GetTopicConfigRequestHeader : rpc {
        req topic: String => "topic",
    }
}

command_header! {
    /// GET_SUBSCRIPTIONGROUP_CONFIG (352).
    pub struct GetSubscriptionGroupConfigRequestHeader : rpc {
        req group: String => "group",
    }
}

command_header! {
    /// QUERY_TOPIC_CONSUME_BY_WHO (300).
    pub struct QueryTopicConsumeByWhoRequestHeader : rpc {
        req topic: String => "topic",
    }
}

command_header! {
    /// QUERY_TOPICS_BY_CONSUMER (343).
    pub struct QueryTopicsByConsumerRequestHeader : rpc {
        req group: String => "group",
    }
}

command_header! {
    /// QUERY_SUBSCRIPTION_BY_CONSUMER (345).
    pub struct QuerySubscriptionByConsumerRequestHeader : rpc {
        req group: String => "group",
        opt topic: String => "topic",
    }
}

command_header! {
    /// DELETE_SUBSCRIPTIONGROUP (207).
    pub struct DeleteSubscriptionGroupRequestHeader : rpc {
        req group_name: String => "groupName",
        def clean_offset: bool = false => "cleanOffset",
    }
}

command_header! {
    /// Response to GET_BROKER_CONFIG (26; the request has no header, the
    /// response body is the properties text). UPDATE_BROKER_CONFIG (25) has
    /// no header either.
    pub struct GetBrokerConfigResponseHeader {
        req version: String => "version",
    }
}

command_header! {
    /// QUERY_CONSUME_TIME_SPAN (303).
    pub struct QueryConsumeTimeSpanRequestHeader : rpc {
        req topic: String => "topic",
        req group: String => "group",
    }
}

command_header! {
    /// QUERY_CORRECTION_OFFSET (308).
    pub struct QueryCorrectionOffsetHeader : rpc {
        opt filter_groups: String => "filterGroups",
        req compare_group: String => "compareGroup",
        req topic: String => "topic",
    }
}

command_header! {
    /// CLONE_GROUP_OFFSET (314).
    pub struct CloneGroupOffsetRequestHeader : rpc {
        req src_group: String => "srcGroup",
        req dest_group: String => "destGroup",
        opt topic: String => "topic",
        def offline: bool = false => "offline",
    }
}

command_header! {
    /// VIEW_BROKER_STATS_DATA (315).
    pub struct ViewBrokerStatsDataRequestHeader {
        req stats_name: String => "statsName",
        req stats_key: String => "statsKey",
    }
}

command_header! {
    /// GET_BROKER_MEMBER_GROUP (901).
    pub struct GetBrokerMemberGroupRequestHeader {
        req cluster_name: String => "clusterName",
        req broker_name: String => "brokerName",
    }
}

command_header! {
    /// RESUME_CHECK_HALF_MESSAGE (323).
    pub struct ResumeCheckHalfMessageRequestHeader {
        opt topic: String => "topic",
        opt msg_id: String => "msgId",
    }
}

command_header! {
    /// UPDATE_AND_GET_GROUP_FORBIDDEN (353).
    pub struct UpdateGroupForbiddenRequestHeader : rpc {
        req group: String => "group",
        req topic: String => "topic",
        opt readable: bool => "readable",
    }
}
