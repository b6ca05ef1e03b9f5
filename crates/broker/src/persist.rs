//! Small JSON config files under `<storePathRootDir>/config`, written and
//! read through the store's [`Vfs`] (so tests can fail them or cut the power).
//!
//! Each table has one [`TableWriter`]: a long-lived thread that rewrites the
//! file whenever the table changed. Changes only bump a generation counter;
//! the thread encodes the *current* table, so a burst of N changes costs a
//! handful of writes, at most one is in flight, and the latest state wins.
//! A failed write (full disk, I/O error) keeps the previous file (atomic
//! replace, no `.tmp` left), is logged once per window, and is retried with
//! backoff; the in-memory table is never affected.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use apogee_store::vfs::{self, Vfs, VfsRef};
use parking_lot::{Condvar, Mutex};

use crate::error::{BrokerError, Result, SaveError};

/// `<root>/config/<name>`.
pub(crate) fn config_path(root: &Path, name: &str) -> PathBuf {
    root.join("config").join(name)
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

/// Replaces `path` with `data` so that a crash or power loss leaves either
/// the old or the new content, never a torn file, and a failure leaves the
/// old file and no `.tmp`.
pub(crate) fn save(vfs: &dyn Vfs, path: &Path, data: &[u8]) -> Result<(), SaveError> {
    let dir = vfs::parent_dir(path);
    if !vfs.exists(&dir) {
        create_dir_durable(vfs, &dir)
            .map_err(|(path, source)| SaveError::CreateDir { path, source })?;
    }
    vfs::write_atomic(vfs, path, data)?;
    Ok(())
}

/// Creates `dir` and its missing parents, syncing each parent so that the
/// new names (and the files about to be created in `dir`) survive a power
/// loss. The error names the directory that failed.
pub(crate) fn create_dir_durable(
    vfs: &dyn Vfs,
    dir: &Path,
) -> Result<(), (PathBuf, std::io::Error)> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !vfs.exists(a))
        .collect();
    vfs.create_dir_all(dir)
        .map_err(|e| (dir.to_path_buf(), e))?;
    for d in missing.iter().rev() {
        let parent = vfs::parent_dir(d);
        vfs.sync_dir(&parent).map_err(|e| (parent, e))?;
    }
    Ok(())
}

/// The file's content, or its `.bak` (written by Java brokers) when the file
/// is missing or empty; `None` when neither exists.
pub(crate) fn read_optional(vfs: &dyn Vfs, path: &Path) -> Result<Option<Vec<u8>>> {
    let mut bak = path.as_os_str().to_owned();
    bak.push(".bak");
    for p in [path.to_path_buf(), PathBuf::from(bak)] {
        match vfs::read_file(vfs, &p) {
            Ok(Some(data)) if !data.iter().all(u8::is_ascii_whitespace) => return Ok(Some(data)),
            Ok(_) => continue,
            Err(e) => return Err(BrokerError::io("read config file", &p, e)),
        }
    }
    Ok(None)
}

/// Encodes the table as it is now (called on the writer thread).
pub(crate) type Snapshot = Box<dyn Fn() -> Vec<u8> + Send + Sync>;

/// Counters of one table's writer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PersistStats {
    /// Files written successfully.
    pub writes: u64,
    /// Writes that failed (each retried later).
    pub failures: u64,
    /// A change is not on disk yet.
    pub pending: bool,
}

/// Shortest pause between two writes of one table. Also twice the last
/// write's duration: a huge table being changed without pause then keeps
/// the writer busy at most a third of the time, whatever the change rate.
const MIN_GAP: Duration = Duration::from_millis(50);
/// Retry delays after a failed write.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

#[derive(Default)]
struct State {
    /// Bumped by every change.
    requested: u64,
    /// The generation the file holds.
    written: u64,
    /// Nothing written since the table was loaded: `flush` must write.
    never_written: bool,
    /// Generation of the latest failed attempt, and its error.
    failed_gen: u64,
    last_error: Option<Arc<SaveError>>,
    writes: u64,
    failures: u64,
    /// Failures since the last successful write.
    failing: u64,
    /// A `flush` waits: skip the pause and the backoff.
    urgent: bool,
    stop: bool,
    /// The writer thread is alive (else `flush` writes inline).
    running: bool,
}

struct Shared {
    /// The file name, for logs.
    name: &'static str,
    path: PathBuf,
    vfs: VfsRef,
    snapshot: Snapshot,
    state: Mutex<State>,
    cv: Condvar,
}

/// One table's background writer; see the module docs.
pub(crate) struct TableWriter {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl TableWriter {
    /// Starts the writer of `path`. A `.tmp` left by a write that a crash
    /// interrupted is removed first.
    pub(crate) fn start(
        name: &'static str,
        path: PathBuf,
        vfs: VfsRef,
        snapshot: Snapshot,
    ) -> Result<TableWriter> {
        let tmp = tmp_path(&path);
        if vfs.exists(&tmp) {
            if let Err(e) = vfs.remove_file(&tmp) {
                tracing::warn!(path = %tmp.display(), error = %e,
                    "cannot remove a leftover temporary config file");
            }
        }
        let shared = Arc::new(Shared {
            name,
            path,
            vfs,
            snapshot,
            state: Mutex::new(State {
                never_written: true,
                running: true,
                ..State::default()
            }),
            cv: Condvar::new(),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("apogee-save-{name}"))
            .spawn(move || run(&s))
            .map_err(|e| BrokerError::io("spawn config writer thread", &shared.path, e))?;
        Ok(TableWriter {
            shared,
            thread: Some(thread),
        })
    }

    /// The table changed: the writer saves it soon. Never blocks on I/O.
    pub(crate) fn mark_dirty(&self) {
        self.shared.state.lock().requested += 1;
        // All: a `flush` caller may be waiting on the same condvar.
        self.shared.cv.notify_all();
    }

    /// Saves the table as it is now and waits for the file (blocking I/O):
    /// `Ok` once a write that includes every change made before the call
    /// is durable, the error of the attempt that should have done so
    /// otherwise.
    pub(crate) fn flush(&self) -> Result<()> {
        let sh = &self.shared;
        let mut st = sh.state.lock();
        if st.never_written && st.requested == st.written {
            st.requested += 1;
        }
        let target = st.requested;
        let failures = st.failures;
        st.urgent = true;
        sh.cv.notify_all();
        loop {
            if st.written >= target {
                return Ok(());
            }
            if st.failures > failures && st.failed_gen >= target {
                let source = st.last_error.clone();
                drop(st);
                return Err(match source {
                    Some(source) => BrokerError::ConfigSave {
                        path: sh.path.clone(),
                        source,
                    },
                    None => BrokerError::Start("config writer lost its error".into()),
                });
            }
            if !st.running {
                // The thread is gone (it panicked): save from here.
                drop(st);
                return attempt(sh).map_err(|source| BrokerError::ConfigSave {
                    path: sh.path.clone(),
                    source,
                });
            }
            sh.cv.wait(&mut st);
        }
    }

    pub(crate) fn stats(&self) -> PersistStats {
        let st = self.shared.state.lock();
        PersistStats {
            writes: st.writes,
            failures: st.failures,
            pending: st.requested > st.written,
        }
    }
}

impl Drop for TableWriter {
    fn drop(&mut self) {
        self.shared.state.lock().stop = true;
        self.shared.cv.notify_all();
        // The thread saves pending changes before it exits. Outside tokio,
        // wait for it; on an async worker, let it finish on its own rather
        // than block there.
        if let Some(t) = self.thread.take() {
            if tokio::runtime::Handle::try_current().is_err() && t.join().is_err() {
                tracing::error!(file = self.shared.name, "config writer thread panicked");
            }
        }
    }
}

/// Marks the thread gone when it exits, even by a panic.
struct Running<'a>(&'a Shared);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.state.lock().running = false;
        self.0.cv.notify_all();
    }
}

/// One save of the current table; updates the counters and wakes waiters.
fn attempt(sh: &Shared) -> Result<(), Arc<SaveError>> {
    let gen = sh.state.lock().requested;
    let data = (sh.snapshot)();
    let res = save(&*sh.vfs, &sh.path, &data).map_err(Arc::new);
    let mut st = sh.state.lock();
    match &res {
        Ok(()) => {
            if st.failing > 0 {
                tracing::info!(
                    file = sh.name,
                    failed_writes = st.failing,
                    "config file saved again"
                );
            }
            st.failing = 0;
            st.written = st.written.max(gen);
            st.never_written = false;
            st.writes += 1;
            st.last_error = None;
        }
        Err(e) => {
            // Per attempt while the disk stays full: once, then a count.
            static SAVE_FAILED: apogee_throttle::LogThrottle =
                apogee_throttle::LogThrottle::new("cannot save config file");
            apogee_throttle::throttled_error!(SAVE_FAILED, sh.name, file = sh.name,
                error = %e, "cannot save config file; the previous one is kept, retrying");
            st.failed_gen = gen;
            st.failures += 1;
            st.failing += 1;
            st.last_error = Some(Arc::clone(e));
        }
    }
    drop(st);
    sh.cv.notify_all();
    res
}

fn run(sh: &Shared) {
    let _running = Running(sh);
    // Earliest time of the next write (pause between writes, or backoff).
    let mut not_before: Option<Instant> = None;
    let mut retry = RETRY_FIRST;
    let mut final_done = false;
    loop {
        {
            let mut st = sh.state.lock();
            loop {
                let dirty = st.requested > st.written;
                if st.stop && (!dirty || final_done) {
                    return;
                }
                if dirty {
                    match not_before {
                        Some(at) if !st.urgent && !st.stop && Instant::now() < at => {
                            sh.cv.wait_until(&mut st, at);
                            continue;
                        }
                        _ => break,
                    }
                }
                sh.cv.wait(&mut st);
            }
            if st.stop {
                final_done = true;
            }
            st.urgent = false;
        }
        let started = Instant::now();
        match attempt(sh) {
            Ok(()) => {
                retry = RETRY_FIRST;
                not_before = Some(Instant::now() + MIN_GAP.max(started.elapsed() * 2));
            }
            Err(_) => {
                not_before = Some(Instant::now() + retry);
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn writer(dir: &Path, counter: Arc<AtomicU64>) -> TableWriter {
        TableWriter::start(
            "x.json",
            config_path(dir, "x.json"),
            vfs::real(),
            Box::new(move || format!("{{\"n\":{}}}", counter.load(Ordering::SeqCst)).into_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn atomic_write_then_read_and_bak_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let v = vfs::real();
        let p = config_path(dir.path(), "x.json");
        assert_eq!(read_optional(&*v, &p).unwrap(), None);
        save(&*v, &p, b"{\"a\":1}").unwrap();
        assert_eq!(read_optional(&*v, &p).unwrap().unwrap(), b"{\"a\":1}");
        std::fs::remove_file(&p).unwrap();
        std::fs::write(dir.path().join("config/x.json.bak"), b"{}").unwrap();
        assert_eq!(read_optional(&*v, &p).unwrap().unwrap(), b"{}");
    }

    #[test]
    fn a_burst_of_changes_costs_few_writes_and_the_latest_wins() {
        let dir = tempfile::tempdir().unwrap();
        let n = Arc::new(AtomicU64::new(0));
        let w = writer(dir.path(), Arc::clone(&n));
        for i in 1..=10_000 {
            n.store(i, Ordering::SeqCst);
            w.mark_dirty();
        }
        w.flush().unwrap();
        let s = w.stats();
        assert!(s.writes < 20, "{s:?}");
        assert!(!s.pending);
        let text = std::fs::read_to_string(config_path(dir.path(), "x.json")).unwrap();
        assert_eq!(text, "{\"n\":10000}");
        // Nothing changed: flush writes nothing more.
        w.flush().unwrap();
        assert_eq!(w.stats().writes, s.writes);
    }

    #[test]
    fn drop_saves_pending_changes_and_flush_writes_an_unchanged_table() {
        let dir = tempfile::tempdir().unwrap();
        let n = Arc::new(AtomicU64::new(7));
        let p = config_path(dir.path(), "x.json");
        {
            let w = writer(dir.path(), Arc::clone(&n));
            w.flush().unwrap();
            assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"n\":7}");
            // Keep the writer in its pause so the change is still pending.
            w.mark_dirty();
            n.store(8, Ordering::SeqCst);
            w.mark_dirty();
        }
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"n\":8}");
        // A leftover temporary file is removed at start.
        std::fs::write(tmp_path(&p), b"{\"n\":").unwrap();
        let _w = writer(dir.path(), n);
        assert!(!tmp_path(&p).exists());
    }
}
