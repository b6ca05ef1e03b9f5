//! GET_BROKER_RUNTIME_INFO (28): the KVTable `mqadmin clusterList` and
//! `brokerStatus` print, with the keys Java's `prepareRuntimeInfo` and the
//! store's runtime info use (values in Java's formats).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use apogee_protocol::body::KVTable;
use apogee_protocol::code::response_code;
use apogee_protocol::command::CURRENT_VERSION;
use apogee_protocol::topic::RMQ_SYS_SCHEDULE_TOPIC;
use apogee_protocol::RemotingCommand;

use super::{fail, ok};
use crate::context::BrokerContext;
use crate::stats::Tps;

/// `MQVersion` name of [`CURRENT_VERSION`] (401).
pub const VERSION_DESC: &str = "V4_9_4";
/// Java's send thread-pool queue capacity (reported for `clusterList`).
const SEND_QUEUE_CAPACITY: usize = 10_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Java `MixAll.humanReadableByteCount(bytes, false)`: `512 B`, `1.5 KiB`.
pub fn human_readable_bytes(bytes: i64) -> String {
    const UNIT: f64 = 1024.0;
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let b = bytes as f64;
    let exp = ((b.ln() / UNIT.ln()) as usize).clamp(1, 6);
    let pre = ['K', 'M', 'G', 'T', 'P', 'E'][exp - 1];
    format!("{:.1} {pre}iB", b / UNIT.powi(exp as i32))
}

/// Java `StoreStatsService.getFormatRuntime`.
pub fn format_runtime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    format!("[ {d} days, {h} hours, {m} minutes, {s} seconds ]")
}

fn tps(t: Tps) -> String {
    t.to_java_string()
}

/// Builds the runtime-info table (may read the CommitLog for the earliest
/// message time: call off the async workers).
pub fn runtime_info(ctx: &BrokerContext) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        m.insert(k.to_owned(), v);
    };
    let store = &ctx.store;
    let stats = &ctx.stats;
    let uptime = ctx.started_at.elapsed();

    put("brokerVersionDesc", VERSION_DESC.to_owned());
    put("brokerVersion", CURRENT_VERSION.to_string());
    put("brokerActive", "true".to_owned());
    put(
        "bootTimestamp",
        (now_ms() - uptime.as_millis() as i64).to_string(),
    );
    put("runtime", format_runtime(uptime.as_secs()));

    // Traffic.
    let (put_total, get_total) = (stats.total_put(), stats.total_get());
    let (put_today, get_today, put_yesterday, get_yesterday) = stats.day_marks();
    put("msgPutTotalTodayNow", put_total.msgs.to_string());
    put("msgGetTotalTodayNow", get_total.msgs.to_string());
    put("msgPutTotalTodayMorning", put_today.to_string());
    put("msgGetTotalTodayMorning", get_today.to_string());
    put("msgPutTotalYesterdayMorning", put_yesterday.to_string());
    put("msgGetTotalYesterdayMorning", get_yesterday.to_string());
    let (put_tps, get_tps) = (stats.put_tps(), stats.get_tps());
    put("putTps", tps(put_tps));
    put("getTransferredTps", tps(get_tps));
    put("getFoundTps", tps(get_tps));
    put("getTotalTps", tps(get_tps));
    put("getMissTps", tps(Tps::default()));
    let puts = put_total.msgs.max(1);
    put("putMessageTimesTotal", puts.to_string());
    put("putMessageSizeTotal", put_total.bytes.to_string());
    put(
        "putMessageAverageSize",
        (put_total.bytes as f64 / puts as f64).to_string(),
    );
    put(
        "putMessageEntireTimeMax",
        stats.last_put_latency().as_millis().to_string(),
    );

    // Store.
    let ratio = (store.disk_used_percent() / 100.0).to_string();
    put("commitLogDiskRatio", ratio.clone());
    put(
        &format!(
            "commitLogDiskRatio_{}",
            store
                .config()
                .store_path_root_dir
                .join("commitlog")
                .display()
        ),
        ratio.clone(),
    );
    put("consumeQueueDiskRatio", ratio);
    let (min, max) = (store.commit_log_min_offset(), store.commit_log_max_offset());
    put("commitLogMinOffset", min.to_string());
    put("commitLogMaxOffset", max.to_string());
    put(
        "dispatchBehindBytes",
        (max - store.dispatched_offset()).max(0).to_string(),
    );
    put(
        "remainHowManyDataToFlush",
        human_readable_bytes((max - store.commit_log_flushed_offset()).max(0)),
    );
    put(
        "earliestMessageTimeStamp",
        store
            .earliest_message_time_store()
            .unwrap_or(-1)
            .to_string(),
    );
    put("pageCacheLockTimeMills", "0".to_owned());
    put("startAcceptSendRequestTimeStamp", "0".to_owned());
    put("remainTransientStoreBufferNumbs", "0".to_owned());

    // Request queues: sends in flight stand for Java's send pool queue.
    put("sendThreadPoolQueueSize", stats.inflight_puts().to_string());
    put(
        "sendThreadPoolQueueCapacity",
        SEND_QUEUE_CAPACITY.to_string(),
    );
    put("sendThreadPoolQueueHeadWaitTimeMills", "0".to_owned());
    for pool in ["pull", "litePull", "query", "ack"] {
        put(&format!("{pool}ThreadPoolQueueSize"), "0".to_owned());
        put(
            &format!("{pool}ThreadPoolQueueHeadWaitTimeMills"),
            "0".to_owned(),
        );
    }

    // Delayed delivery: Java's `scheduleMessageOffset_<level>` is
    // "<delivered offset>,<max offset>" of the level's queue.
    for (level, off) in ctx.schedule.level_offsets() {
        let max_off = store.max_offset(RMQ_SYS_SCHEDULE_TOPIC, level - 1);
        put(
            &format!("scheduleMessageOffset_{level}"),
            format!("{off},{max_off}"),
        );
    }
    for k in ["timerReadBehind", "timerOffsetBehind", "timerCongestNum"] {
        put(k, "0".to_owned());
    }
    put("timerEnqueueTps", "0.0".to_owned());
    put("timerDequeueTps", "0.0".to_owned());

    // Apogee's own keys (Java tools print every key they get).
    let half = crate::transaction::half_counts(ctx);
    put(
        "transactionHalfUndecided",
        format!(
            "{}{}",
            if half.upper_bound { "<=" } else { "" },
            half.undecided
        ),
    );
    put(
        "popInflightTotal",
        ctx.pop_revive.inflight_total().to_string(),
    );
    m
}

pub(super) async fn get_broker_runtime_info(ctx: &Arc<BrokerContext>) -> RemotingCommand {
    let c = Arc::clone(ctx);
    match tokio::task::spawn_blocking(move || runtime_info(&c)).await {
        Ok(table) => ok().with_body(KVTable { table }.encode()),
        Err(e) => fail(
            response_code::SYSTEM_ERROR,
            format!("runtime info failed: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_readable_matches_java() {
        assert_eq!(human_readable_bytes(0), "0 B");
        assert_eq!(human_readable_bytes(1023), "1023 B");
        assert_eq!(human_readable_bytes(1024), "1.0 KiB");
        assert_eq!(human_readable_bytes(1536), "1.5 KiB");
        assert_eq!(human_readable_bytes(5 * 1024 * 1024), "5.0 MiB");
    }

    #[test]
    fn runtime_format() {
        assert_eq!(
            format_runtime(90_061),
            "[ 1 days, 1 hours, 1 minutes, 1 seconds ]"
        );
    }
}
