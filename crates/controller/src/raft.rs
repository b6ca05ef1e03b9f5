//! openraft glue: the type configuration, a file-backed log store, the
//! state machine around [`ControllerState`], and the network that carries
//! Raft RPCs between controllers over the remoting layer.
//!
//! Files under `controllerStorePath`: `raft-vote.json` and
//! `raft-committed.json` (replaced whole, atomically), `raft-log.jsonl` (one
//! entry per line, appended and fsynced before openraft is told the entries
//! are durable; rewritten whole on the rare truncate or purge), and
//! `raft-snapshot.json` (the last snapshot, so purged entries are not needed
//! after a restart). The state machine itself lives in memory: on start it
//! is the snapshot, and openraft re-applies the committed entries after it.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::{self, Cursor, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use apogee_protocol::RemotingCommand;
use apogee_remoting::RemotingClient;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
    Vote,
};
use parking_lot::Mutex;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::state::{Command, ControllerState, Outcome};

openraft::declare_raft_types!(
    /// The controller group's Raft types.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = BasicNode,
);

pub type Raft = openraft::Raft<TypeConfig>;
type StorageResult<T> = Result<T, StorageError<u64>>;

/// Private request codes of the controller-to-controller Raft RPCs on the
/// peer port (`controllerDLegerPeers`). They are Apogee's own, not
/// RocketMQ's: Apache's controllers speak DLedger or JRaft there instead.
pub mod peer_code {
    pub const APPEND_ENTRIES: i32 = 41_001;
    pub const VOTE: i32 = 41_002;
    pub const INSTALL_SNAPSHOT: i32 = 41_003;
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Writes `bytes` to `path` through a temporary file, fsynced and renamed.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // The rename itself must survive a power cut.
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| io_err(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// What is wrong with `raft-log.jsonl`.
#[derive(Debug, thiserror::Error)]
pub enum LogParseError {
    #[error("line {line} is not a Raft entry (and not a torn last line): {source}")]
    BadLine {
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("last purged index {0} has no successor")]
    PurgedIndexOverflow(u64),
}

/// A [`LogParseError`] with the file it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct LogFileError {
    path: String,
    #[source]
    source: LogParseError,
}

impl LogFileError {
    fn at(path: &Path, source: LogParseError) -> LogFileError {
        LogFileError {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Splits the log's raw bytes on `\n` and parses each line. Only the last,
/// unterminated line may be bad (a torn append, possibly cut inside a UTF-8
/// character): it is dropped and `true` returned. Every terminated line
/// was synced whole, so a bad one is corruption, reported as an error.
fn parse_log(bytes: &[u8]) -> Result<(Vec<Entry<TypeConfig>>, bool), LogParseError> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut line_no = 0usize;
    while !rest.is_empty() {
        line_no += 1;
        let (line, terminated, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], true, &rest[i + 1..]),
            None => (rest, false, &rest[rest.len()..]),
        };
        rest = next;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Entry<TypeConfig>>(line) {
            Ok(e) => out.push(e),
            Err(_) if !terminated => return Ok((out, true)),
            Err(source) => {
                return Err(LogParseError::BadLine {
                    line: line_no,
                    source,
                })
            }
        }
    }
    Ok((out, false))
}

/// Runs file work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io_err(format!("storage task failed: {e}")))?
}

#[derive(Default)]
struct LogInner {
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    last_purged: Option<LogId<u64>>,
    vote: Option<Vote<u64>>,
    committed: Option<LogId<u64>>,
}

/// On-disk form of the log's purge point.
#[derive(Serialize, Deserialize)]
struct LogMeta {
    last_purged: Option<LogId<u64>>,
}

/// The Raft log, kept in memory and mirrored to files.
#[derive(Clone)]
pub struct LogStore {
    dir: PathBuf,
    inner: Arc<Mutex<LogInner>>,
}

impl LogStore {
    /// Loads the log from `dir` (created if missing). A torn last line (a
    /// crash in the middle of an append, no newline yet) was never
    /// acknowledged as durable: it is dropped. Any other bad line is an
    /// error: it may hold committed entries.
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let mut inner = LogInner {
            vote: read_json(&dir.join("raft-vote.json"))?,
            committed: read_json(&dir.join("raft-committed.json"))?,
            last_purged: read_json::<LogMeta>(&dir.join("raft-log-meta.json"))?
                .and_then(|m| m.last_purged),
            ..LogInner::default()
        };
        let log_path = dir.join("raft-log.jsonl");
        let bytes = match std::fs::read(&log_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Created here, with the directory entry made durable once,
                // so appends only need to sync the file's data.
                std::fs::File::create(&log_path)?.sync_all()?;
                std::fs::File::open(dir)?.sync_all()?;
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        let (entries, torn) = parse_log(&bytes).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, LogFileError::at(&log_path, e))
        })?;
        if torn {
            tracing::warn!(file = %log_path.display(), "dropping a torn last Raft log line (crash mid-append)");
        }
        for e in entries {
            // A later line for an index replaces an earlier one (a
            // truncation followed by appends before a rewrite).
            inner.entries.split_off(&e.log_id.index);
            inner.entries.insert(e.log_id.index, e);
        }
        if let Some(p) = inner.last_purged {
            let first = p.index.checked_add(1).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    LogFileError::at(&log_path, LogParseError::PurgedIndexOverflow(p.index)),
                )
            })?;
            inner.entries = inner.entries.split_off(&first);
        }
        let store = LogStore {
            dir: dir.to_path_buf(),
            inner: Arc::new(Mutex::new(inner)),
        };
        if torn {
            store.rewrite()?;
        }
        Ok(store)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("raft-log.jsonl")
    }

    fn encode_lines<'a>(
        entries: impl Iterator<Item = &'a Entry<TypeConfig>>,
    ) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        for e in entries {
            serde_json::to_writer(&mut out, e).map_err(io_err)?;
            out.push(b'\n');
        }
        Ok(out)
    }

    /// Replaces the log file with the entries held in memory.
    fn rewrite(&self) -> io::Result<()> {
        let (bytes, meta) = {
            let inner = self.inner.lock();
            (
                Self::encode_lines(inner.entries.values())?,
                serde_json::to_vec(&LogMeta {
                    last_purged: inner.last_purged,
                })
                .map_err(io_err)?,
            )
        };
        write_atomic(&self.dir.join("raft-log-meta.json"), &meta)?;
        write_atomic(&self.log_path(), &bytes)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let inner = self.inner.lock();
        Ok(inner.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let inner = self.inner.lock();
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(inner.last_purged);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StorageResult<()> {
        let bytes = serde_json::to_vec(vote).map_err(|e| StorageIOError::write_vote(&io_err(e)))?;
        let path = self.dir.join("raft-vote.json");
        blocking(move || write_atomic(&path, &bytes))
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        self.inner.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<u64>>> {
        Ok(self.inner.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StorageResult<()> {
        let bytes =
            serde_json::to_vec(&committed).map_err(|e| StorageIOError::write(&io_err(e)))?;
        let path = self.dir.join("raft-committed.json");
        blocking(move || write_atomic(&path, &bytes))
            .await
            .map_err(|e| StorageIOError::write(&e))?;
        self.inner.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<u64>>> {
        Ok(self.inner.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let bytes =
            Self::encode_lines(entries.iter()).map_err(|e| StorageIOError::write_logs(&e))?;
        {
            let mut inner = self.inner.lock();
            for e in entries {
                inner.entries.insert(e.log_id.index, e);
            }
        }
        let path = self.log_path();
        let res = blocking(move || {
            // open() created the file and synced the directory once.
            let mut f = std::fs::OpenOptions::new().append(true).open(&path)?;
            f.write_all(&bytes)?;
            f.sync_data()
        })
        .await;
        let failed = res.as_ref().err().map(StorageIOError::write_logs);
        callback.log_io_completed(res);
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        self.inner.lock().entries.split_off(&log_id.index);
        let me = self.clone();
        blocking(move || me.rewrite())
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        {
            let mut inner = self.inner.lock();
            let keep = inner.entries.split_off(&(log_id.index + 1));
            inner.entries = keep;
            inner.last_purged = Some(log_id);
        }
        let me = self.clone();
        blocking(move || me.rewrite())
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

/// A snapshot as stored and sent.
#[derive(Serialize, Deserialize, Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, BasicNode>,
    state: ControllerState,
}

#[derive(Default)]
struct SmInner {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    state: ControllerState,
    snapshot: Option<StoredSnapshot>,
    snapshot_seq: u64,
}

/// The state machine: [`ControllerState`] plus what openraft tracks with it.
#[derive(Clone)]
pub struct StateMachine {
    dir: PathBuf,
    inner: Arc<Mutex<SmInner>>,
}

impl StateMachine {
    /// Starts from the snapshot in `dir`, if any.
    pub fn open(dir: &Path) -> io::Result<StateMachine> {
        let snapshot: Option<StoredSnapshot> = read_json(&dir.join("raft-snapshot.json"))?;
        let mut inner = SmInner::default();
        if let Some(s) = snapshot {
            inner.last_applied = s.meta.last_log_id;
            inner.membership = s.meta.last_membership.clone();
            inner.state = s.state.clone();
            inner.snapshot = Some(s);
        }
        Ok(StateMachine {
            dir: dir.to_path_buf(),
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    /// A copy of the replicated state as applied here.
    pub fn read<T>(&self, f: impl FnOnce(&ControllerState) -> T) -> T {
        f(&self.inner.lock().state)
    }

    async fn persist_snapshot(&self, snap: &StoredSnapshot) -> StorageResult<()> {
        let bytes = serde_json::to_vec(snap)
            .map_err(|e| StorageIOError::write_snapshot(Some(snap.meta.signature()), &io_err(e)))?;
        let path = self.dir.join("raft-snapshot.json");
        let sig = snap.meta.signature();
        blocking(move || write_atomic(&path, &bytes))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(sig), &e).into())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let snap = {
            let mut inner = self.inner.lock();
            inner.snapshot_seq += 1;
            let last = inner.last_applied;
            let snapshot_id = match last {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, inner.snapshot_seq),
                None => format!("--{}", inner.snapshot_seq),
            };
            StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: last,
                    last_membership: inner.membership.clone(),
                    snapshot_id,
                },
                state: inner.state.clone(),
            }
        };
        self.persist_snapshot(&snap).await?;
        let data = serde_json::to_vec(&snap.state)
            .map_err(|e| StorageIOError::read_state_machine(&io_err(e)))?;
        let meta = snap.meta.clone();
        self.inner.lock().snapshot = Some(snap);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>)> {
        let inner = self.inner.lock();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Outcome>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.inner.lock();
        let mut out = Vec::new();
        for e in entries {
            inner.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => out.push(Err(crate::state::Refusal::InvalidReplicas(
                    "blank entry".into(),
                ))),
                EntryPayload::Normal(cmd) => {
                    let r = inner.state.apply(&cmd);
                    if let Err(refusal) = &r {
                        tracing::debug!(?cmd, %refusal, "controller command changed nothing");
                    }
                    out.push(r);
                }
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(e.log_id), m);
                    out.push(Err(crate::state::Refusal::InvalidReplicas(
                        "membership entry".into(),
                    )));
                }
            }
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let state: ControllerState = serde_json::from_slice(snapshot.get_ref())
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &io_err(e)))?;
        let snap = StoredSnapshot {
            meta: meta.clone(),
            state,
        };
        self.persist_snapshot(&snap).await?;
        let mut inner = self.inner.lock();
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.state = snap.state.clone();
        inner.snapshot = Some(snap);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let inner = self.inner.lock();
        let Some(s) = &inner.snapshot else {
            return Ok(None);
        };
        let data = serde_json::to_vec(&s.state)
            .map_err(|e| StorageIOError::read_state_machine(&io_err(e)))?;
        Ok(Some(Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// Raft RPCs as remoting requests: the JSON of the openraft request in the
/// body, the JSON of `Result<response, RaftError>` in the answer's body.
#[derive(Clone)]
pub struct Network {
    client: RemotingClient,
    timeout: Duration,
}

impl Network {
    pub fn new(client: RemotingClient, timeout: Duration) -> Network {
        Network { client, timeout }
    }
}

pub struct PeerLink {
    net: Network,
    target: u64,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerLink;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerLink {
        PeerLink {
            net: self.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

impl PeerLink {
    async fn call<Req: Serialize, Resp: DeserializeOwned, E>(
        &self,
        code: i32,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<u64, BasicNode, E>>
    where
        E: std::error::Error + DeserializeOwned,
    {
        let body = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let cmd = RemotingCommand::request(code).with_body(body);
        let resp = self
            .net
            .client
            .invoke(&self.addr, cmd, timeout)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let body = resp.body.as_deref().unwrap_or_default();
        let r: Result<Resp, E> = serde_json::from_slice(body).map_err(|e| {
            RPCError::Network(NetworkError::new(&io_err(format!(
                "bad Raft reply from {} (code {}): {e}",
                self.addr, resp.code
            ))))
        })?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let t = option.hard_ttl().min(self.net.timeout);
        self.call(peer_code::APPEND_ENTRIES, &rpc, t).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        let t = option.hard_ttl().max(self.net.timeout);
        self.call(peer_code::INSTALL_SNAPSHOT, &rpc, t).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let t = option.hard_ttl().min(self.net.timeout);
        self.call(peer_code::VOTE, &rpc, t).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 0), index),
            payload: EntryPayload::Blank,
        }
    }

    #[tokio::test]
    async fn log_survives_reopen_and_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = LogStore::open(dir.path()).unwrap();
            let mut inner = store.inner.lock();
            for i in 1..=3 {
                inner.entries.insert(i, entry(1, i));
            }
            drop(inner);
            store.rewrite().unwrap();
        }
        // A crash mid-append leaves half a line.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("raft-log.jsonl"))
            .unwrap();
        f.write_all(b"{\"log_id\":").unwrap();
        drop(f);
        let mut store = LogStore::open(dir.path()).unwrap();
        let st = store.get_log_state().await.unwrap();
        assert_eq!(st.last_log_id.map(|l| l.index), Some(3));
        store
            .truncate(LogId::new(CommittedLeaderId::new(1, 0), 2))
            .await
            .unwrap();
        store
            .purge(LogId::new(CommittedLeaderId::new(1, 0), 1))
            .await
            .unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        let st = store.get_log_state().await.unwrap();
        assert_eq!(st.last_log_id.map(|l| l.index), Some(1));
        assert_eq!(st.last_purged_log_id.map(|l| l.index), Some(1));
        assert!(store.try_get_log_entries(0..10).await.unwrap().is_empty());
    }
    fn line(term: u64, index: u64) -> Vec<u8> {
        let mut l = serde_json::to_vec(&entry(term, index)).unwrap();
        l.push(b'\n');
        l
    }

    #[test]
    fn a_bad_terminated_line_is_an_error_not_a_drop() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = line(1, 1);
        bytes.extend_from_slice(b"{\"garbage\n");
        bytes.extend(line(1, 2));
        std::fs::write(dir.path().join("raft-log.jsonl"), &bytes).unwrap();
        let err = LogStore::open(dir.path()).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let inner = err
            .get_ref()
            .unwrap()
            .downcast_ref::<LogFileError>()
            .unwrap();
        assert!(matches!(
            inner.source,
            LogParseError::BadLine { line: 2, .. }
        ));
    }

    #[tokio::test]
    async fn a_tail_torn_inside_a_utf8_char_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = line(1, 1);
        // The first byte of a two-byte character, then the crash.
        bytes.extend_from_slice(b"{\"log_id\":\"\xc3");
        std::fs::write(dir.path().join("raft-log.jsonl"), &bytes).unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        let st = store.get_log_state().await.unwrap();
        assert_eq!(st.last_log_id.map(|l| l.index), Some(1));
        // Rewritten without the torn bytes: a second open sees a clean file.
        let on_disk = std::fs::read(dir.path().join("raft-log.jsonl")).unwrap();
        assert_eq!(on_disk, line(1, 1));
    }

    #[test]
    fn open_creates_the_log_file() {
        let dir = tempfile::tempdir().unwrap();
        LogStore::open(dir.path()).unwrap();
        assert!(dir.path().join("raft-log.jsonl").is_file());
    }

    #[test]
    fn a_purged_index_at_u64_max_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let meta = LogMeta {
            last_purged: Some(LogId::new(CommittedLeaderId::new(1, 0), u64::MAX)),
        };
        std::fs::write(
            dir.path().join("raft-log-meta.json"),
            serde_json::to_vec(&meta).unwrap(),
        )
        .unwrap();
        let err = LogStore::open(dir.path()).err().unwrap();
        let inner = err
            .get_ref()
            .unwrap()
            .downcast_ref::<LogFileError>()
            .unwrap();
        assert!(matches!(
            inner.source,
            LogParseError::PurgedIndexOverflow(u64::MAX)
        ));
    }
}
