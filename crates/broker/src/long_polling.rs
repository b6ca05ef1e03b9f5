//! Long polling (`PullRequestHoldService`): pulls that found nothing wait
//! here, keyed by (topic, queue), until a matching message is dispatched to
//! their queue, their hold time ends, or the periodic re-check (every 5 s,
//! or `shortPollingTimeMills` with long polling off) sees the queue grow.
//!
//! Each parked pull is one table entry holding a oneshot sender; the pull's
//! own task awaits the receiver with a timeout, so there is no polling loop
//! per request and thousands of parked pulls cost a few hundred bytes each.
//! The table mutex is never held across an await.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use apogee_store::{MessageArrivingListener, MessageStore};
use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

use crate::config::BrokerConfig;
use crate::filter::SubscriptionFilter;

/// Re-check period with long polling on (Java: 5 s).
pub const LONG_POLLING_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Why a parked pull resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// A message (matching the filter, when its tags code was known) reached
    /// the queue at or beyond the requested offset.
    Arrived,
    /// The hold time ran out.
    Timeout,
    /// The service is shutting down.
    Shutdown,
}

struct Parked {
    id: u64,
    /// The offset the pull asked for; any max offset above it is news.
    offset: i64,
    filter: Arc<SubscriptionFilter>,
    tx: oneshot::Sender<Wake>,
}

type Table = HashMap<String, HashMap<i32, Vec<Parked>>>;

struct Inner {
    table: Mutex<Table>,
    parked: AtomicUsize,
    next_id: AtomicU64,
    store: Mutex<Option<Weak<MessageStore>>>,
    stopped: AtomicBool,
    stop: Arc<Notify>,
    check_interval: Duration,
    long_polling: bool,
    short_polling: Duration,
}

impl Inner {
    /// Wakes the parked pulls of (topic, queue) that `max_offset` (and the
    /// tags code, when known) satisfies.
    fn notify(
        &self,
        topic: &str,
        queue_id: i32,
        max_offset: i64,
        tags_code: Option<i64>,
        properties: Option<&[u8]>,
    ) {
        if self.parked.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut woken = Vec::new();
        {
            let mut t = self.table.lock();
            let Some(queues) = t.get_mut(topic) else {
                return;
            };
            let Some(list) = queues.get_mut(&queue_id) else {
                return;
            };
            let mut i = 0;
            while i < list.len() {
                let p = &list[i];
                if max_offset > p.offset && p.filter.matches_arrival(tags_code, properties) {
                    woken.push(list.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            if list.is_empty() {
                queues.remove(&queue_id);
                if queues.is_empty() {
                    t.remove(topic);
                }
            }
        }
        self.parked.fetch_sub(woken.len(), Ordering::AcqRel);
        // Sent outside the lock; a pull whose receiver is gone is simply dropped.
        for p in woken {
            let _ = p.tx.send(Wake::Arrived);
        }
    }

    fn remove(&self, topic: &str, queue_id: i32, id: u64) {
        let mut t = self.table.lock();
        let Some(queues) = t.get_mut(topic) else {
            return;
        };
        let Some(list) = queues.get_mut(&queue_id) else {
            return;
        };
        if let Some(pos) = list.iter().position(|p| p.id == id) {
            list.swap_remove(pos);
            self.parked.fetch_sub(1, Ordering::AcqRel);
        }
        if list.is_empty() {
            queues.remove(&queue_id);
            if queues.is_empty() {
                t.remove(topic);
            }
        }
    }

    /// The periodic re-check: every parked queue whose max offset moved past
    /// a pull's offset wakes that pull (the tags code is unknown here, so
    /// the filter lets it through, as Java's check does). Entries whose
    /// waiter is gone are dropped.
    fn check_all(&self, store: &MessageStore) {
        if self.parked.load(Ordering::Acquire) == 0 {
            return;
        }
        let keys: Vec<(String, i32, i64)> = {
            let mut t = self.table.lock();
            let mut dropped = 0;
            for queues in t.values_mut() {
                for list in queues.values_mut() {
                    let before = list.len();
                    list.retain(|p| !p.tx.is_closed());
                    dropped += before - list.len();
                }
                queues.retain(|_, l| !l.is_empty());
            }
            t.retain(|_, q| !q.is_empty());
            self.parked.fetch_sub(dropped, Ordering::AcqRel);
            t.iter()
                .flat_map(|(topic, queues)| {
                    queues.iter().map(move |(q, list)| {
                        let min = list.iter().map(|p| p.offset).min().unwrap_or(i64::MAX);
                        (topic.clone(), *q, min)
                    })
                })
                .collect()
        };
        // Store reads happen without the table lock.
        for (topic, q, min_offset) in keys {
            let max = store.max_offset(&topic, q);
            if max > min_offset {
                self.notify(&topic, q, max, None, None);
            }
        }
    }

    fn wake_all(&self, why: Wake) {
        let all: Vec<Parked> = {
            let mut t = self.table.lock();
            let v = t
                .drain()
                .flat_map(|(_, q)| q.into_values().flatten())
                .collect::<Vec<_>>();
            self.parked.store(0, Ordering::Release);
            v
        };
        for p in all {
            let _ = p.tx.send(why);
        }
    }
}

/// Parks pulls that found nothing (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct PullRequestHoldService {
    inner: Arc<Inner>,
}

impl PullRequestHoldService {
    /// From `longPollingEnable` and `shortPollingTimeMills`.
    pub fn new(cfg: &BrokerConfig) -> Self {
        Self::with_polling(cfg.long_polling_enable, cfg.short_polling_time_mills)
    }

    /// `long_polling_enable` = false caps every hold at `short_polling`
    /// (Java `shortPollingTimeMills`, 1 s) and re-checks at that period.
    pub fn with_polling(long_polling_enable: bool, short_polling: Duration) -> Self {
        let check_interval = if long_polling_enable {
            LONG_POLLING_CHECK_INTERVAL
        } else {
            short_polling.max(Duration::from_millis(10))
        };
        Self::with_check_interval(long_polling_enable, short_polling, check_interval)
    }

    /// Like [`PullRequestHoldService::new`] with an explicit re-check period.
    pub fn with_check_interval(
        long_polling_enable: bool,
        short_polling: Duration,
        check_interval: Duration,
    ) -> Self {
        PullRequestHoldService {
            inner: Arc::new(Inner {
                table: Mutex::new(HashMap::new()),
                parked: AtomicUsize::new(0),
                next_id: AtomicU64::new(1),
                store: Mutex::new(None),
                stopped: AtomicBool::new(false),
                stop: Arc::new(Notify::new()),
                check_interval,
                long_polling: long_polling_enable,
                short_polling,
            }),
        }
    }

    /// Starts the periodic re-check against `store` (needs a tokio runtime).
    /// The task holds only weak references, so it never keeps the store or
    /// this service alive; it ends at [`PullRequestHoldService::shutdown`].
    pub fn start(&self, store: &Arc<MessageStore>) {
        *self.inner.store.lock() = Some(Arc::downgrade(store));
        let weak = Arc::downgrade(&self.inner);
        let stop_signal = Arc::clone(&self.inner.stop);
        let period = self.inner.check_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                if inner.stopped.load(Ordering::Acquire) {
                    return;
                }
                let store = inner.store.lock().as_ref().and_then(Weak::upgrade);
                if let Some(store) = store {
                    inner.check_all(&store);
                }
                drop(inner);
                let stop = stop_signal.notified();
                tokio::pin!(stop);
                // Register interest before re-checking the flag so a
                // shutdown between the two is not missed.
                stop.as_mut().enable();
                if weak
                    .upgrade()
                    .is_none_or(|i| i.stopped.load(Ordering::Acquire))
                {
                    return;
                }
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop => return,
                }
            }
        });
    }

    /// Answers every parked pull (they re-run and reply) and stops the
    /// periodic task. Pulls parked afterwards return at once.
    pub fn shutdown(&self) {
        self.inner.stopped.store(true, Ordering::Release);
        self.inner.stop.notify_waiters();
        self.inner.wake_all(Wake::Shutdown);
    }

    /// How long a pull asking for `suspend_timeout` is actually held.
    pub fn hold_time(&self, suspend_timeout: Duration) -> Duration {
        if self.inner.long_polling {
            suspend_timeout
        } else {
            self.inner.short_polling
        }
    }

    /// Parks a pull for (topic, queue) that wants messages from `offset`
    /// passing `filter`. The returned handle is awaited with
    /// [`ParkedPull::wait`]; dropping it unparks the pull.
    pub fn park(
        &self,
        topic: &str,
        queue_id: i32,
        offset: i64,
        filter: Arc<SubscriptionFilter>,
    ) -> ParkedPull {
        let (tx, rx) = oneshot::channel();
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        if self.inner.stopped.load(Ordering::Acquire) {
            let _ = tx.send(Wake::Shutdown);
        } else {
            let mut t = self.inner.table.lock();
            t.entry(topic.to_owned())
                .or_default()
                .entry(queue_id)
                .or_default()
                .push(Parked {
                    id,
                    offset,
                    filter,
                    tx,
                });
            self.inner.parked.fetch_add(1, Ordering::AcqRel);
        }
        ParkedPull {
            inner: Arc::clone(&self.inner),
            topic: topic.to_owned(),
            queue_id,
            id,
            rx: Some(rx),
        }
    }

    /// Parks and waits in one call (see [`PullRequestHoldService::park`]).
    pub async fn suspend(
        &self,
        topic: &str,
        queue_id: i32,
        offset: i64,
        filter: Arc<SubscriptionFilter>,
        timeout: Duration,
    ) -> Wake {
        self.park(topic, queue_id, offset, filter)
            .wait(timeout)
            .await
    }

    /// A message was dispatched to (topic, queue); `max_offset` is the
    /// queue's next offset. Wakes the pulls it satisfies.
    pub fn notify_message_arriving(&self, topic: &str, queue_id: i32, max_offset: i64) {
        self.inner.notify(topic, queue_id, max_offset, None, None);
    }

    /// Like [`PullRequestHoldService::notify_message_arriving`] with the
    /// message's tags code, so pulls whose filter rejects it stay parked.
    pub fn notify_message_arriving_with_tags(
        &self,
        topic: &str,
        queue_id: i32,
        max_offset: i64,
        tags_code: i64,
    ) {
        self.inner
            .notify(topic, queue_id, max_offset, Some(tags_code), None);
    }

    /// The store listener to install with
    /// `MessageStore::set_message_arriving_listener`. It refers to this
    /// service's state only (not to the broker context), so no reference
    /// cycle through the store is created.
    pub fn listener(&self) -> Arc<dyn MessageArrivingListener> {
        Arc::new(HoldListener {
            inner: Arc::clone(&self.inner),
        })
    }

    /// Pulls parked right now.
    pub fn parked_count(&self) -> usize {
        self.inner.parked.load(Ordering::Acquire)
    }
}

struct HoldListener {
    inner: Arc<Inner>,
}

impl MessageArrivingListener for HoldListener {
    fn arriving(
        &self,
        topic: &str,
        queue_id: i32,
        logic_offset: i64,
        tags_code: i64,
        _store_timestamp: i64,
    ) {
        self.inner.notify(
            topic,
            queue_id,
            logic_offset.saturating_add(1),
            Some(tags_code),
            None,
        );
    }

    fn arriving_with_properties(
        &self,
        topic: &str,
        queue_id: i32,
        logic_offset: i64,
        tags_code: i64,
        _store_timestamp: i64,
        properties: &[u8],
    ) {
        // SQL92 pulls stay parked when the new message fails their filter.
        self.inner.notify(
            topic,
            queue_id,
            logic_offset.saturating_add(1),
            Some(tags_code),
            Some(properties),
        );
    }
}

/// A parked pull; unparks itself when dropped.
pub struct ParkedPull {
    inner: Arc<Inner>,
    topic: String,
    queue_id: i32,
    id: u64,
    rx: Option<oneshot::Receiver<Wake>>,
}

impl ParkedPull {
    /// Waits for a wake-up or `timeout`, whichever comes first.
    pub async fn wait(mut self, timeout: Duration) -> Wake {
        let Some(rx) = self.rx.take() else {
            return Wake::Timeout;
        };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(w)) => w,
            // The sender vanished without a word: only a shutdown drains the
            // table that way.
            Ok(Err(_)) => Wake::Shutdown,
            Err(_) => Wake::Timeout,
        }
    }
}

impl Drop for ParkedPull {
    fn drop(&mut self) {
        // Woken entries were already removed; this finds nothing for them.
        self.inner.remove(&self.topic, self.queue_id, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::TagMessageFilter;
    use apogee_protocol::message::tags_hash_code;
    use std::time::Instant;

    fn svc() -> PullRequestHoldService {
        PullRequestHoldService::with_polling(true, Duration::from_secs(1))
    }

    #[tokio::test]
    async fn sql_pull_wakes_only_for_matching_properties() {
        let s = svc();
        let e = apogee_filter::Expression::compile("a > 3").unwrap();
        let p = s.park("T", 0, 0, Arc::new(SubscriptionFilter::Sql(Arc::new(e))));
        let l = s.listener();
        l.arriving_with_properties("T", 0, 0, 0, 1, b"a\x011\x02");
        l.arriving_with_properties("T", 0, 1, 0, 1, b"b\x019\x02");
        assert_eq!(s.parked_count(), 1);
        l.arriving_with_properties("T", 0, 2, 0, 1, b"a\x017\x02");
        assert_eq!(s.parked_count(), 0);
        assert_eq!(p.wait(Duration::from_secs(30)).await, Wake::Arrived);
    }

    #[tokio::test]
    async fn wakes_on_matching_arrival() {
        let s = svc();
        let f = Arc::new(SubscriptionFilter::from(
            TagMessageFilter::from_tag_expression("TagA"),
        ));
        let p = s.park("T", 1, 5, f);
        assert_eq!(s.parked_count(), 1);
        // Other queue, old offset, other tag: no wake.
        s.notify_message_arriving("T", 2, 10);
        s.notify_message_arriving("T", 1, 5);
        s.notify_message_arriving_with_tags("T", 1, 6, tags_hash_code("TagB"));
        assert_eq!(s.parked_count(), 1);
        s.notify_message_arriving_with_tags("T", 1, 6, tags_hash_code("TagA"));
        assert_eq!(s.parked_count(), 0);
        let start = Instant::now();
        assert_eq!(p.wait(Duration::from_secs(30)).await, Wake::Arrived);
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn times_out_and_unparks() {
        let s = svc();
        let w = s
            .suspend(
                "T",
                0,
                0,
                Arc::new(SubscriptionFilter::all()),
                Duration::from_millis(30),
            )
            .await;
        assert_eq!(w, Wake::Timeout);
        assert_eq!(s.parked_count(), 0);
        assert!(s.inner.table.lock().is_empty());
    }

    #[tokio::test]
    async fn dropping_a_handle_unparks_and_shutdown_wakes_all() {
        let s = svc();
        let a = s.park("T", 0, 0, Arc::new(SubscriptionFilter::all()));
        let b = s.park("T", 0, 0, Arc::new(SubscriptionFilter::all()));
        drop(a);
        assert_eq!(s.parked_count(), 1);
        s.shutdown();
        assert_eq!(b.wait(Duration::from_secs(30)).await, Wake::Shutdown);
        let c = s.park("T", 0, 0, Arc::new(SubscriptionFilter::all()));
        assert_eq!(c.wait(Duration::from_secs(30)).await, Wake::Shutdown);
        assert_eq!(s.parked_count(), 0);
    }

    #[tokio::test]
    async fn listener_reports_next_offset() {
        let s = svc();
        let l = s.listener();
        let p = s.park("T", 3, 7, Arc::new(SubscriptionFilter::all()));
        // The message at offset 6 is not news for a pull at 7.
        l.arriving("T", 3, 6, 0, 0);
        assert_eq!(s.parked_count(), 1);
        l.arriving("T", 3, 7, 0, 0);
        assert_eq!(p.wait(Duration::from_secs(30)).await, Wake::Arrived);
    }

    #[tokio::test]
    async fn thousands_of_parked_pulls() {
        let s = svc();
        let handles: Vec<_> = (0..5000)
            .map(|i| s.park("T", i % 8, 0, Arc::new(SubscriptionFilter::all())))
            .collect();
        assert_eq!(s.parked_count(), 5000);
        for q in 0..8 {
            s.notify_message_arriving("T", q, 1);
        }
        assert_eq!(s.parked_count(), 0);
        for h in handles {
            assert_eq!(h.wait(Duration::from_secs(30)).await, Wake::Arrived);
        }
    }

    #[test]
    fn short_polling_caps_the_hold() {
        let s = PullRequestHoldService::with_polling(false, Duration::from_millis(1000));
        assert_eq!(
            s.hold_time(Duration::from_secs(15)),
            Duration::from_millis(1000)
        );
        assert_eq!(
            svc().hold_time(Duration::from_secs(15)),
            Duration::from_secs(15)
        );
    }
}
