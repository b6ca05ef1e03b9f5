//! Telemetry sessions: the clients whose bidirectional stream is open, by
//! client id, with what their Settings said. The proxy pushes commands
//! (transaction check-backs) down these streams.

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::pb;

pub type Outbox = mpsc::Sender<Result<pb::TelemetryCommand, tonic::Status>>;

/// One open Telemetry stream.
pub struct Session {
    pub client_type: pb::ClientType,
    /// Topics a producer publishes to.
    pub topics: Vec<String>,
    /// A consumer's group.
    pub group: Option<String>,
    pub outbox: Outbox,
    /// Tells streams of one client apart (a reconnect replaces the entry).
    pub stream_id: u64,
}

/// A transaction the proxy can end: where its half message is.
#[derive(Debug, Clone)]
pub struct TxInfo {
    pub broker_addr: String,
    pub commit_log_offset: i64,
    pub tran_state_table_offset: i64,
    pub topic: String,
    pub at: Instant,
}

#[derive(Default)]
pub struct Sessions {
    by_client: Mutex<HashMap<String, Session>>,
    transactions: Mutex<HashMap<String, TxInfo>>,
}

/// Undecided transactions remembered at most this long (the broker gives
/// up checking long before).
const TX_KEEP: std::time::Duration = std::time::Duration::from_secs(6 * 3600);
/// Bound on remembered transactions: oldest dropped past it.
const TX_MAX: usize = 100_000;

impl Sessions {
    pub fn open(&self, client_id: &str, session: Session) {
        self.by_client.lock().insert(client_id.to_owned(), session);
    }

    /// Removes the client's session if it is still the stream `stream_id`.
    pub fn close(&self, client_id: &str, stream_id: u64) {
        let mut m = self.by_client.lock();
        if m.get(client_id).is_some_and(|s| s.stream_id == stream_id) {
            m.remove(client_id);
        }
    }

    pub fn remove(&self, client_id: &str) {
        self.by_client.lock().remove(client_id);
    }

    pub fn len(&self) -> usize {
        self.by_client.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The FIFO flag and group of a consumer's session.
    pub fn group_of(&self, client_id: &str) -> Option<String> {
        self.by_client
            .lock()
            .get(client_id)
            .and_then(|s| s.group.clone())
    }

    /// A producer stream to ask about a transaction on `topic`: one that
    /// declared the topic, else any producer.
    pub fn producer_for(&self, topic: &str) -> Option<Outbox> {
        let m = self.by_client.lock();
        let producers = || {
            m.values()
                .filter(|s| s.client_type == pb::ClientType::Producer)
        };
        producers()
            .find(|s| s.topics.iter().any(|t| t == topic))
            .or_else(|| producers().next())
            .map(|s| s.outbox.clone())
    }

    pub fn remember_tx(&self, transaction_id: &str, info: TxInfo) {
        let mut m = self.transactions.lock();
        if m.len() >= TX_MAX {
            m.retain(|_, t| t.at.elapsed() < TX_KEEP);
            if m.len() >= TX_MAX {
                if let Some(oldest) = m.iter().min_by_key(|(_, t)| t.at).map(|(k, _)| k.clone()) {
                    m.remove(&oldest);
                }
            }
        }
        m.insert(transaction_id.to_owned(), info);
    }

    pub fn take_tx(&self, transaction_id: &str) -> Option<TxInfo> {
        self.transactions.lock().remove(transaction_id)
    }
}
