//! Small JSON config files under `<storePathRootDir>/config`: atomic writes
//! (temp file, fsync, rename) and reads that fall back to Java's `.bak` copy.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{BrokerError, Result};

/// `<root>/config/<name>`.
pub(crate) fn config_path(root: &Path, name: &str) -> PathBuf {
    root.join("config").join(name)
}

/// Replaces `path` with `data` so that a crash leaves either the old or the
/// new content, never a torn file.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    fs::create_dir_all(dir).map_err(|e| BrokerError::io("create config dir", dir, e))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        let mut f =
            fs::File::create(&tmp).map_err(|e| BrokerError::io("create temp file", &tmp, e))?;
        f.write_all(data)
            .and_then(|_| f.sync_data())
            .map_err(|e| BrokerError::io("write temp file", &tmp, e))?;
        drop(f);
        fs::rename(&tmp, path).map_err(|e| BrokerError::io("rename config file", path, e))
    })();
    if let Err(e) = written {
        // On a full disk the write fails; leave the old file and no litter.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // Make the rename itself durable; failure here only weakens durability.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The file's content, or its `.bak` (written by Java brokers) when the file
/// is missing or empty; `None` when neither exists.
pub(crate) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    let mut bak = path.as_os_str().to_owned();
    bak.push(".bak");
    for p in [path.to_path_buf(), PathBuf::from(bak)] {
        match fs::read(&p) {
            Ok(data) if !data.iter().all(u8::is_ascii_whitespace) => return Ok(Some(data)),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(BrokerError::io("read config file", &p, e)),
        }
    }
    Ok(None)
}

/// Runs a file write off the async workers when called inside a tokio
/// runtime (multi-thread), inline otherwise.
pub(crate) fn run_blocking(f: impl FnOnce() + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            h.spawn_blocking(f);
        }
        Err(_) => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_then_read_and_bak_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let p = config_path(dir.path(), "x.json");
        assert_eq!(read_optional(&p).unwrap(), None);
        write_atomic(&p, b"{\"a\":1}").unwrap();
        assert_eq!(read_optional(&p).unwrap().unwrap(), b"{\"a\":1}");
        fs::remove_file(&p).unwrap();
        fs::write(dir.path().join("config/x.json.bak"), b"{}").unwrap();
        assert_eq!(read_optional(&p).unwrap().unwrap(), b"{}");
    }
}
