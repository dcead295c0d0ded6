//! A detached engine's log: `<db>.log`, next to the database, bounded in size. When the file
//! passes [`MAX_BYTES`] it becomes `<db>.log.1` (replacing the one before) and a new file is
//! started, so the log of an engine that runs for months takes at most twice the bound.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Size at which the log is rotated.
pub const MAX_BYTES: u64 = 10 * 1024 * 1024;

struct State {
    path: PathBuf,
    file: File,
    len: u64,
    max: u64,
}

/// Where a detached engine's `tracing` output goes. Cheap to clone.
#[derive(Clone)]
pub struct LogFile(Arc<Mutex<State>>);

fn open(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl LogFile {
    pub fn open(path: &Path) -> std::io::Result<LogFile> {
        Self::with_bound(path, MAX_BYTES)
    }

    fn with_bound(path: &Path, max: u64) -> std::io::Result<LogFile> {
        let file = open(path)?;
        let len = file.metadata()?.len();
        Ok(LogFile(Arc::new(Mutex::new(State {
            path: path.to_path_buf(),
            file,
            len,
            max,
        }))))
    }
}

impl State {
    fn rotate(&mut self) -> std::io::Result<()> {
        let mut old = self.path.as_os_str().to_owned();
        old.push(".1");
        std::fs::rename(&self.path, PathBuf::from(old))?;
        self.file = open(&self.path)?;
        self.len = 0;
        Ok(())
    }
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut st = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if st.len > 0 && st.len + buf.len() as u64 > st.max {
            // A failed rotation keeps writing to the file we have: a log line is never lost
            // for the sake of the bound.
            let _ = st.rotate();
        }
        // A line that cannot be written (a full disk) is dropped, not reported: the caller is
        // the log itself, and the engine's work must not stop over its log.
        match st.file.write(buf) {
            Ok(n) => {
                st.len += n as u64;
                Ok(n)
            }
            Err(_) => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .file
            .flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogFile {
    type Writer = LogFile;

    fn make_writer(&'a self) -> LogFile {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_rotates_at_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.log");
        let mut log = LogFile::with_bound(&path, 100).unwrap();
        for _ in 0..25 {
            log.write_all(b"0123456789\n").unwrap();
        }
        let now = std::fs::metadata(&path).unwrap().len();
        let old = std::fs::metadata(dir.path().join("e.log.1")).unwrap().len();
        assert!(now <= 100 && old <= 100, "{now} {old}");
        assert_eq!((now + old) % 11, 0, "whole lines only");
    }
}
