//! GET_BROKER_EPOCH_CACHE (1007): this replica's epoch list and CommitLog
//! end as Apache's `EpochEntryCache` JSON (what mqadmin `getBrokerEpoch`
//! prints). A replica joining a new master reads the master's with it to
//! find where their logs stop agreeing; a master reads its slaves' ends with
//! it to keep the SyncStateSet.

use apogee_protocol::code::response_code;
use apogee_protocol::RemotingCommand;
use apogee_store::epoch::EpochFile;
use serde_json::json;

use super::{fail, ok};
use crate::context::BrokerContext;

pub async fn get_broker_epoch_cache(ctx: &BrokerContext) -> RemotingCommand {
    // A master that is not confirmed yet may not have recorded its epoch:
    // its list would mislead a replica deciding what to cut.
    if ctx.config.is_master() && ctx.is_write_fenced() {
        return fail(
            response_code::SYSTEM_BUSY,
            "this master is not confirmed by the controller yet; its epoch list is not final",
        );
    }
    let root = ctx.config.store.store_path_root_dir.clone();
    let loaded = tokio::task::spawn_blocking(move || EpochFile::load(&root)).await;
    let file = match loaded {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => return fail(response_code::SYSTEM_ERROR, e.to_string()),
        Err(e) => {
            return fail(
                response_code::SYSTEM_ERROR,
                format!("epoch file task failed: {e}"),
            )
        }
    };
    let max = ctx.store.commit_log_max_offset();
    let entries = file.entries();
    let list: Vec<_> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let end = entries.get(i + 1).map_or(max, |n| n.start_offset as i64);
            json!({ "epoch": e.epoch, "startOffset": e.start_offset, "endOffset": end })
        })
        .collect();
    let body = json!({
        "clusterName": ctx.config.broker_cluster_name,
        "brokerName": ctx.config.broker_name,
        "brokerId": ctx.config.broker_id,
        "epochList": list,
        "maxOffset": max,
    });
    ok().with_body(body.to_string())
}
