//! GET_BROKER_HA_STATUS (907): the replication state as Java's
//! `HARuntimeInfo` JSON (what mqadmin `haStatus` prints): on a master, each
//! connected slave's acknowledged offset, distance and in-sync state; on a
//! slave, its link to the master.

use apogee_protocol::RemotingCommand;
use serde_json::json;

use super::ok;
use crate::context::BrokerContext;

pub fn get_broker_ha_status(ctx: &BrokerContext) -> RemotingCommand {
    let master_end = ctx.store.commit_log_max_offset();
    let connections: Vec<_> = ctx
        .ha_server()
        .map(|s| s.slaves())
        .unwrap_or_default()
        .into_iter()
        .map(|s| {
            json!({
                "addr": s.addr.to_string(),
                "slaveAckOffset": s.ack_offset,
                "diff": master_end - s.ack_offset.max(0),
                "inSync": s.in_sync,
                "transferredByteInSecond": s.bytes_last_second,
                "transferFromWhere": s.next_transfer,
            })
        })
        .collect();
    let in_sync = connections
        .iter()
        .filter(|c| c["inSync"].as_bool() == Some(true))
        .count();
    let client = match ctx.ha_client.get() {
        Some(c) => json!({
            "masterAddr": c.master_addr().unwrap_or_default(),
            "transferredByteInSecond": c.bytes_last_second(),
            "maxOffset": master_end,
            "lastReadTimestamp": c.last_read_ms(),
            "lastWriteTimestamp": c.last_write_ms(),
            "masterFlushOffset": 0,
        }),
        None => json!({}),
    };
    let body = json!({
        "master": ctx.config.is_master(),
        "masterCommitLogMaxOffset": master_end,
        "inSyncSlaveNums": in_sync,
        "haConnectionInfo": connections,
        "haClientRuntimeInfo": client,
    });
    ok().with_body(body.to_string().into_bytes())
}
