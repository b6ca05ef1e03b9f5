//! Message commands: queryMsgById, queryMsgByKey, queryMsgByOffset,
//! sendMessage, consumeMessage.

use anyhow::{bail, Context};
use apogee_client::admin::TOOLS_CONSUMER_GROUP;
use apogee_client::{Message, MessageExt, MessageQueue, Producer, PullStatus, SendStatus};
use apogee_protocol::code::request_code;
use apogee_protocol::flags::PermName;
use apogee_protocol::flags::PullSysFlag;
use apogee_protocol::header::PullMessageRequestHeader;
use clap::Args;
use serde_json::{json, Value};

use super::output::{fmt_ms, message_json, parse_time, print_json, print_message, Table};
use super::{is_no_route, Ctx};

/// Producer group of `sendMessage`.
const TOOLS_PRODUCER_GROUP: &str = "TOOLS_PRODUCER";
/// Messages asked for per pull by `consumeMessage`.
const PULL_BATCH: i32 = 32;

#[derive(Args, Debug)]
pub struct QueryByIdArgs {
    /// Message id(s), comma separated: offset message ids, or unique ids with -t.
    #[arg(short = 'i', long = "msg-id", value_delimiter = ',', required = true)]
    ids: Vec<String>,
    /// Topic (needed for unique client ids).
    #[arg(short = 't', long = "topic")]
    topic: Option<String>,
}

#[derive(Args, Debug)]
pub struct QueryByKeyArgs {
    /// Topic.
    #[arg(short = 't', long = "topic")]
    topic: String,
    /// Business key (the KEYS property).
    #[arg(short = 'k', long = "key")]
    key: String,
    /// Earliest store time: now, ms since the epoch or yyyy-MM-dd#HH:mm:ss:SSS.
    #[arg(short = 'b', long = "begin")]
    begin: Option<String>,
    /// Latest store time (default: now).
    #[arg(short = 'e', long = "end")]
    end: Option<String>,
    /// At most this many messages.
    #[arg(short = 'c', long = "max-num", default_value_t = 64)]
    max: i32,
}

#[derive(Args, Debug)]
pub struct QueryByOffsetArgs {
    /// Topic.
    #[arg(short = 't', long = "topic")]
    topic: String,
    /// Broker name (as in topicRoute).
    #[arg(short = 'b', long = "broker-name")]
    broker: String,
    /// Queue id.
    #[arg(short = 'i', long = "queue-id")]
    queue: i32,
    /// Queue offset.
    #[arg(short = 'o', long = "offset")]
    offset: i64,
}

#[derive(Args, Debug)]
pub struct SendArgs {
    /// Topic.
    #[arg(short = 't', long = "topic")]
    topic: String,
    /// Message body.
    #[arg(short = 'p', long = "body")]
    body: String,
    /// Business key(s), space separated.
    #[arg(short = 'k', long = "keys")]
    keys: Option<String>,
    /// Tag.
    #[arg(short = 'c', long = "tags")]
    tags: Option<String>,
    /// Send to this broker name (with -i).
    #[arg(short = 'b', long = "broker-name", requires = "queue")]
    broker: Option<String>,
    /// Send to this queue id (with -b).
    #[arg(short = 'i', long = "queue-id", requires = "broker")]
    queue: Option<i32>,
}

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    /// Topic.
    #[arg(short = 't', long = "topic")]
    topic: String,
    /// Consumer group named in the pulls (offsets are not committed).
    #[arg(short = 'g', long = "group", default_value = TOOLS_CONSUMER_GROUP)]
    group: String,
    /// Only queues of this broker name.
    #[arg(short = 'b', long = "broker-name")]
    broker: Option<String>,
    /// Only this queue id.
    #[arg(short = 'i', long = "queue-id")]
    queue: Option<i32>,
    /// Start at this queue offset (default: the queue's minimum, or -s).
    #[arg(short = 'o', long = "offset")]
    offset: Option<i64>,
    /// Print at most this many messages.
    #[arg(short = 'c', long = "count", default_value_t = 128)]
    count: usize,
    /// Start at the first message stored at or after this time.
    #[arg(short = 's', long = "begin")]
    begin: Option<String>,
    /// Stop at the first message stored at or after this time.
    #[arg(short = 'e', long = "end")]
    end: Option<String>,
    /// Tag expression, e.g. `TagA || TagB`.
    #[arg(long = "sub", default_value = "*")]
    sub: String,
}

fn print_messages(ctx: &Ctx, msgs: &[MessageExt]) {
    if ctx.json {
        print_json(&json!({ "messages": msgs.iter().map(message_json).collect::<Vec<Value>>() }));
        return;
    }
    for (i, m) in msgs.iter().enumerate() {
        if i > 0 {
            outln!();
        }
        print_message(m);
    }
}

pub async fn query_by_id(ctx: &Ctx, a: QueryByIdArgs) -> anyhow::Result<()> {
    let mut found = Vec::new();
    for id in a.ids.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let offset_id = apogee_protocol::message::decode_offset_msg_id(id).is_ok();
        let msgs = match (&a.topic, offset_id) {
            (Some(t), _) => {
                ctx.route(t).await?;
                ctx.admin.query_message_by_id(t, id).await
            }
            (None, true) => ctx.admin.view_message(id).await.map(|m| vec![m]),
            (None, false) => bail!("{id} is not an offset message id; give its topic with -t"),
        }
        .with_context(|| format!("cannot look up message {id}"))?;
        if msgs.is_empty() {
            bail!("no message with id {id}");
        }
        found.extend(msgs);
    }
    print_messages(ctx, &found);
    Ok(())
}

pub async fn query_by_key(ctx: &Ctx, a: QueryByKeyArgs) -> anyhow::Result<()> {
    let begin = a.begin.as_deref().map(parse_time).transpose()?.unwrap_or(0);
    let end = match a.end.as_deref() {
        Some(e) => parse_time(e)?,
        None => super::output::now_ms(),
    };
    if a.max <= 0 {
        bail!("-c must be at least 1");
    }
    ctx.route(&a.topic).await?;
    let msgs = ctx
        .admin
        .query_message_by_key(&a.topic, &a.key, a.max, begin, end)
        .await
        .with_context(|| format!("cannot query key {} in topic {}", a.key, a.topic))?;
    if ctx.json {
        print_messages(ctx, &msgs);
        return Ok(());
    }
    let mut t = Table::new(&["MSG_ID", "BROKER", "QID", "OFFSET", "STORE_TIME", "TAGS"]);
    for m in &msgs {
        t.row(vec![
            m.msg_id.clone(),
            m.broker_name.clone(),
            m.queue_id.to_string(),
            m.queue_offset.to_string(),
            fmt_ms(m.store_timestamp),
            m.tags().unwrap_or("").to_string(),
        ]);
    }
    t.print();
    outln!("\n{} message(s) with key {}", msgs.len(), a.key);
    Ok(())
}

pub async fn query_by_offset(ctx: &Ctx, a: QueryByOffsetArgs) -> anyhow::Result<()> {
    ctx.route(&a.topic).await?;
    let mq = MessageQueue::new(a.topic.clone(), a.broker.clone(), a.queue);
    let m = ctx.admin.message_at(&mq, a.offset).await.with_context(|| {
        format!(
            "cannot read {}:{}:{} at offset {}",
            a.topic, a.broker, a.queue, a.offset
        )
    })?;
    match m {
        Some(m) => {
            print_messages(ctx, std::slice::from_ref(&m));
            Ok(())
        }
        None => bail!(
            "no message at offset {} of queue {} on broker {} (topic {})",
            a.offset,
            a.queue,
            a.broker,
            a.topic
        ),
    }
}

fn status_name(s: SendStatus) -> &'static str {
    match s {
        SendStatus::SendOk => "SEND_OK",
        SendStatus::FlushDiskTimeout => "FLUSH_DISK_TIMEOUT",
        SendStatus::FlushSlaveTimeout => "FLUSH_SLAVE_TIMEOUT",
        SendStatus::SlaveNotAvailable => "SLAVE_NOT_AVAILABLE",
    }
}

pub async fn send_message(ctx: &Ctx, a: SendArgs) -> anyhow::Result<()> {
    let producer = Producer::builder()
        .namesrv_addr(ctx.namesrv.clone())
        .group(TOOLS_PRODUCER_GROUP)
        .send_timeout(ctx.timeout)
        .api_timeout(ctx.timeout)
        .build()
        .context("cannot create a producer")?;
    producer
        .start()
        .await
        .context("cannot start the producer")?;
    let mut msg = Message::new(a.topic.clone(), a.body.clone().into_bytes());
    if let Some(tags) = &a.tags {
        msg.set_tags(tags.clone());
    }
    if let Some(keys) = &a.keys {
        msg.set_keys(keys.split_whitespace());
    }
    let result = match (&a.broker, a.queue) {
        (Some(b), Some(q)) => {
            producer
                .send_to_queue(msg, &MessageQueue::new(a.topic.clone(), b.clone(), q))
                .await
        }
        _ => producer.send(msg).await,
    };
    producer.shutdown().await;
    let r = result.map_err(|e| {
        if is_no_route(&e) {
            anyhow::anyhow!(
                "topic {} does not exist (NameServer {} has no route for it)",
                a.topic,
                ctx.namesrv
            )
        } else {
            anyhow::Error::new(e).context(format!("cannot send to topic {}", a.topic))
        }
    })?;
    if ctx.json {
        print_json(&json!({
            "topic": a.topic,
            "broker_name": r.queue.broker_name,
            "queue_id": r.queue.queue_id,
            "queue_offset": r.queue_offset,
            "msg_id": r.msg_id,
            "offset_msg_id": r.offset_msg_id,
            "status": status_name(r.status),
        }));
        return Ok(());
    }
    let mut t = Table::new(&[
        "BROKER",
        "QID",
        "OFFSET",
        "MSG_ID",
        "OFFSET_MSG_ID",
        "STATUS",
    ]);
    t.row(vec![
        r.queue.broker_name.clone(),
        r.queue.queue_id.to_string(),
        r.queue_offset.to_string(),
        r.msg_id.clone(),
        r.offset_msg_id.clone(),
        status_name(r.status).to_string(),
    ]);
    t.print();
    Ok(())
}

pub async fn consume_message(ctx: &Ctx, a: ConsumeArgs) -> anyhow::Result<()> {
    if a.count == 0 {
        bail!("-c must be at least 1");
    }
    let begin = a.begin.as_deref().map(parse_time).transpose()?;
    let end = a.end.as_deref().map(parse_time).transpose()?;
    let route = ctx.route(&a.topic).await?;
    let mut queues: Vec<MessageQueue> = route
        .queue_datas
        .iter()
        .filter(|qd| PermName::is_readable(qd.perm))
        .filter(|qd| a.broker.as_ref().is_none_or(|b| b == &qd.broker_name))
        .flat_map(|qd| {
            (0..qd.read_queue_nums)
                .map(|q| MessageQueue::new(a.topic.clone(), qd.broker_name.clone(), q))
        })
        .filter(|mq| a.queue.is_none_or(|q| q == mq.queue_id))
        .collect();
    queues.sort();
    if queues.is_empty() {
        bail!("topic {} has no readable queue matching -b/-i", a.topic);
    }
    let inst = ctx.admin.instance();
    let mut out: Vec<MessageExt> = Vec::new();
    'queues: for mq in &queues {
        let min = ctx
            .admin
            .min_offset(mq)
            .await
            .with_context(|| format!("cannot read the min offset of {mq:?}"))?;
        let max = ctx
            .admin
            .max_offset(mq)
            .await
            .with_context(|| format!("cannot read the max offset of {mq:?}"))?;
        let mut next = match (a.offset, begin) {
            (Some(o), _) => o,
            (None, Some(ts)) => ctx.admin.search_offset(mq, ts).await?,
            (None, None) => min,
        }
        .max(min);
        let stop = match end {
            Some(ts) => ctx.admin.search_offset(mq, ts).await?.min(max),
            None => max,
        };
        let addr = inst
            .master_addr_or_refresh(&mq.broker_name, &mq.topic)
            .await?;
        while next < stop && out.len() < a.count {
            let want = (a.count - out.len()).min(PULL_BATCH as usize) as i32;
            let h = PullMessageRequestHeader {
                consumer_group: a.group.clone(),
                topic: mq.topic.clone(),
                queue_id: mq.queue_id,
                queue_offset: next,
                max_msg_nums: want,
                sys_flag: PullSysFlag::build(false, false, true, false, false).0,
                commit_offset: 0,
                suspend_timeout_millis: 0,
                subscription: Some(a.sub.clone()),
                sub_version: 0,
                expression_type: Some("TAG".to_string()),
                ..Default::default()
            };
            let r = inst
                .pull(
                    &addr,
                    &mq.broker_name,
                    request_code::PULL_MESSAGE,
                    &h,
                    ctx.timeout,
                )
                .await
                .with_context(|| format!("cannot pull from {addr}"))?;
            match r.status {
                PullStatus::Found => {
                    for m in r.messages {
                        if m.queue_offset >= stop || out.len() >= a.count {
                            break;
                        }
                        out.push(m);
                    }
                }
                PullStatus::NoNewMsg => continue 'queues,
                PullStatus::NoMatchedMsg | PullStatus::OffsetIllegal => {}
            }
            if r.next_begin_offset <= next {
                continue 'queues;
            }
            next = r.next_begin_offset;
        }
        if out.len() >= a.count {
            break;
        }
    }
    print_messages(ctx, &out);
    if !ctx.json {
        outln!("\n{} message(s) from {} queue(s)", out.len(), queues.len());
    }
    Ok(())
}
