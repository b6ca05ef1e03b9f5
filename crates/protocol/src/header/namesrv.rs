//! NameServer request/response headers (`header/namesrv/*` in Java, plus
//! `GetTopicsByClusterRequestHeader`, which the NameServer serves).

command_header! {
    /// GET_ROUTEINFO_BY_TOPIC (105).
    pub struct GetRouteInfoRequestHeader : rpc {
        req topic: String => "topic",
        /// 5.x: the client only understands standard JSON route bodies.
        opt accept_standard_json_only: bool => "acceptStandardJsonOnly",
    }
}

command_header! {
    /// REGISTER_BROKER (103); the body is the registration body (reference 5.5).
    pub struct RegisterBrokerRequestHeader {
        req broker_name: String => "brokerName",
        /// `ip:mainPort`.
        req broker_addr: String => "brokerAddr",
        req cluster_name: String => "clusterName",
        /// `ip:haPort`.
        req ha_server_addr: String => "haServerAddr",
        /// 0 = master.
        req broker_id: i64 => "brokerId",
        opt heartbeat_timeout_millis: i64 => "heartbeatTimeoutMillis",
        /// Absent on "old" brokers.
        opt enable_acting_master: bool => "enableActingMaster",
        /// The body is compressed (4.9.x `compressedRegister`).
        def compressed: bool = false => "compressed",
        /// `CRC32(body) & 0x7FFFFFFF`; 0 means "not checked".
        def body_crc32: i32 = 0 => "bodyCrc32",
        /// Not a Java header field: the `__ZONE_NAME` extField some brokers add.
        opt zone_name: String => "__ZONE_NAME",
    }
}

command_header! {
    /// Response to REGISTER_BROKER.
    pub struct RegisterBrokerResponseHeader {
        opt ha_server_addr: String => "haServerAddr",
        /// Filled for slaves when their master is alive.
        opt master_addr: String => "masterAddr",
    }
}

command_header! {
    /// UNREGISTER_BROKER (104).
    pub struct UnRegisterBrokerRequestHeader {
        req broker_name: String => "brokerName",
        req broker_addr: String => "brokerAddr",
        req cluster_name: String => "clusterName",
        req broker_id: i64 => "brokerId",
    }
}

command_header! {
    /// BROKER_HEARTBEAT (904).
    pub struct BrokerHeartbeatRequestHeader {
        req cluster_name: String => "clusterName",
        req broker_addr: String => "brokerAddr",
        req broker_name: String => "brokerName",
        opt broker_id: i64 => "brokerId",
        opt epoch: i32 => "epoch",
        opt max_offset: i64 => "maxOffset",
        opt confirm_offset: i64 => "confirmOffset",
        /// Spelled `Mills` in Java.
        opt heartbeat_timeout_mills: i64 => "heartbeatTimeoutMills",
        opt election_priority: i32 => "electionPriority",
    }
}

command_header! {
    /// QUERY_DATA_VERSION (322); the body is the broker's `DataVersion`.
    pub struct QueryDataVersionRequestHeader {
        req broker_name: String => "brokerName",
        req broker_addr: String => "brokerAddr",
        req cluster_name: String => "clusterName",
        req broker_id: i64 => "brokerId",
    }
}

command_header! {
    /// Response to QUERY_DATA_VERSION.
    pub struct QueryDataVersionResponseHeader {
        req changed: bool => "changed",
    }
}

command_header! {
    /// PUT_KV_CONFIG (100).
    pub struct PutKVConfigRequestHeader {
        req namespace: String => "namespace",
        req key: String => "key",
        req value: String => "value",
    }
}

command_header! {
    /// GET_KV_CONFIG (101).
    pub struct GetKVConfigRequestHeader {
        req namespace: String => "namespace",
        req key: String => "key",
    }
}

command_header! {
    /// Response to GET_KV_CONFIG.
    pub struct GetKVConfigResponseHeader {
        opt value: String => "value",
    }
}

command_header! {
    /// DELETE_KV_CONFIG (102).
    pub struct DeleteKVConfigRequestHeader {
        req namespace: String => "namespace",
        req key: String => "key",
    }
}

command_header! {
    /// GET_KVLIST_BY_NAMESPACE (219).
    pub struct GetKVListByNamespaceRequestHeader {
        req namespace: String => "namespace",
    }
}

command_header! {
    /// DELETE_TOPIC_IN_NAMESRV (216).
    pub struct DeleteTopicFromNamesrvRequestHeader : rpc {
        req topic: String => "topic",
        /// When set, only this cluster's brokers are removed from the topic.
        opt cluster_name: String => "clusterName",
    }
}

command_header! {
    /// REGISTER_TOPIC_IN_NAMESRV (217); the body is a `TopicRouteData`.
    pub struct RegisterTopicRequestHeader : rpc {
        req topic: String => "topic",
    }
}

command_header! {
    /// Registers order-topic configuration (`RegisterOrderTopicRequestHeader`).
    pub struct RegisterOrderTopicRequestHeader {
        req topic: String => "topic",
        req order_topic_string: String => "orderTopicString",
    }
}

command_header! {
    /// GET_TOPICS_BY_CLUSTER (224).
    pub struct GetTopicsByClusterRequestHeader {
        req cluster: String => "cluster",
    }
}

command_header! {
    /// WIPE_WRITE_PERM_OF_BROKER (205).
    pub struct WipeWritePermOfBrokerRequestHeader {
        req broker_name: String => "brokerName",
    }
}

command_header! {
    /// Response to WIPE_WRITE_PERM_OF_BROKER.
    pub struct WipeWritePermOfBrokerResponseHeader {
        req wipe_topic_count: i32 => "wipeTopicCount",
    }
}

command_header! {
    /// ADD_WRITE_PERM_OF_BROKER (327).
    pub struct AddWritePermOfBrokerRequestHeader {
        req broker_name: String => "brokerName",
    }
}

command_header! {
    /// Response to ADD_WRITE_PERM_OF_BROKER.
    pub struct AddWritePermOfBrokerResponseHeader {
        req add_topic_count: i32 => "addTopicCount",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ProtocolError;
    use crate::header::CommandHeader;
    use crate::RemotingCommand;

    #[test]
    fn register_broker_decodes_java_shape() {
        let mut cmd = RemotingCommand::request(crate::code::request_code::REGISTER_BROKER);
        for (k, v) in [
            ("brokerName", "broker-a"),
            ("brokerAddr", "10.0.0.1:10911"),
            ("clusterName", "DefaultCluster"),
            ("haServerAddr", "10.0.0.1:10912"),
            ("brokerId", " 0 "),
            ("compressed", "false"),
            ("bodyCrc32", "12345"),
            ("enableActingMaster", "0"),
        ] {
            cmd.set_ext(k, v);
        }
        let h: RegisterBrokerRequestHeader = cmd.decode_header().unwrap();
        assert_eq!(h.broker_name, "broker-a");
        assert_eq!(h.broker_id, 0);
        assert_eq!(h.body_crc32, 12345);
        assert_eq!(h.enable_acting_master, Some(false));
        assert_eq!(h.heartbeat_timeout_millis, None);
        assert!(!h.compressed);
    }

    #[test]
    fn register_broker_defaults_and_missing_field() {
        let mut ext = crate::ext_fields::ExtFields::new();
        for (k, v) in [
            ("brokerName", "b"),
            ("brokerAddr", "a:1"),
            ("clusterName", "c"),
            ("haServerAddr", "a:2"),
        ] {
            ext.insert(k, v);
        }
        assert_eq!(
            RegisterBrokerRequestHeader::read_ext(&ext),
            Err(ProtocolError::MissingField("brokerId"))
        );
        ext.insert("brokerId", "1");
        let h = RegisterBrokerRequestHeader::read_ext(&ext).unwrap();
        assert_eq!((h.compressed, h.body_crc32), (false, 0));
        // Java always emits its primitive/defaulted fields.
        let cmd = RemotingCommand::request(0).with_header(&h);
        assert_eq!(cmd.ext("bodyCrc32"), Some("0"));
        assert_eq!(cmd.ext("compressed"), Some("false"));
        assert_eq!(cmd.ext("heartbeatTimeoutMillis"), None);
    }
}
