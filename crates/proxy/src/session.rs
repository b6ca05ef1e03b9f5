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
    /// The client's language, from its Settings (decides the digest form).
    pub language: pb::Language,
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

    /// The language a client declared (Unspecified before its Settings).
    pub fn language_of(&self, client_id: &str) -> pb::Language {
        self.by_client
            .lock()
            .get(client_id)
            .map_or(pb::Language::Unspecified, |s| s.language)
    }

    /// A producer stream to ask about a transaction on `topic`: one that
    /// declared the topic, else any producer; with its language.
    pub fn producer_for(&self, topic: &str) -> Option<(Outbox, pb::Language)> {
        let m = self.by_client.lock();
        let producers = || {
            m.values()
                .filter(|s| s.client_type == pb::ClientType::Producer)
        };
        producers()
            .find(|s| s.topics.iter().any(|t| t == topic))
            .or_else(|| producers().next())
            .map(|s| (s.outbox.clone(), s.language))
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

/// Separates the parts of a transaction id.
const TX_SEP: char = '.';

/// A transaction id that carries what END_TRANSACTION needs: the half
/// message's offset id (store host + CommitLog offset) and its queue offset.
/// Any proxy in front of the cluster can end the transaction with it, even
/// one that did not send the half message or was restarted since.
pub fn transaction_id(offset_msg_id: &str, queue_offset: i64) -> String {
    format!("{offset_msg_id}{TX_SEP}{queue_offset}")
}

/// The half message a transaction id names: (store host address, CommitLog
/// offset, queue offset); `None` for an id this proxy did not make.
pub fn parse_transaction_id(id: &str) -> Option<(std::net::SocketAddr, i64, i64)> {
    let (msg_id, queue_offset) = id.rsplit_once(TX_SEP)?;
    let queue_offset = queue_offset.parse::<i64>().ok().filter(|o| *o >= 0)?;
    let (host, commit_log_offset) = apogee_protocol::message::decode_offset_msg_id(msg_id).ok()?;
    Some((host, commit_log_offset, queue_offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_ids_round_trip() {
        let host: std::net::SocketAddr = "127.0.0.1:10911".parse().unwrap();
        let off = apogee_protocol::message::offset_msg_id(host, 4096);
        let id = transaction_id(&off, 7);
        assert_eq!(parse_transaction_id(&id), Some((host, 4096, 7)));
        for bad in [
            "",
            "abc",
            "abc.1",
            &format!("{off}.-1"),
            &format!("{off}.x"),
            &off,
        ] {
            assert_eq!(parse_transaction_id(bad), None, "{bad:?}");
        }
    }
}
