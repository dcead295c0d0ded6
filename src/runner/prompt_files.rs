//! The files behind `ORCHESTR8_AGENT_PROMPT_FILE`, which hands a command agent its body.
//!
//! One read-only file per distinct agent body, in a private folder that lives as long as the
//! engine, shared by every attempt with that body. Writing a fresh temporary file per attempt
//! (create, write, unlink) cost about 7 % of the engine's CPU on trivial tasks (measured with
//! perf on o8-bench); a body edited between attempts simply gets a new file. A file found
//! changed or gone (an agent runs as the same user and could rewrite it) is written again before
//! the next attempt uses it, and so is a folder a temp cleaner removed.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

#[derive(Default)]
pub struct PromptFiles {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Created on first use (mode 0700), removed with the engine.
    dir: Option<tempfile::TempDir>,
    /// File name -> (size, mtime) as written.
    written: HashMap<String, (u64, SystemTime)>,
}

impl PromptFiles {
    /// The file holding `body`, written now if this is the first attempt with it (or if someone
    /// removed it).
    pub fn path_for(&self, body: &str) -> std::io::Result<PathBuf> {
        let digest = Sha256::digest(body.as_bytes());
        let name: String = digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            + ".md";
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.dir.as_ref().is_some_and(|d| !d.path().is_dir()) {
            inner.dir = None;
            inner.written.clear();
        }
        if inner.dir.is_none() {
            inner.dir = Some(
                tempfile::Builder::new()
                    .prefix("orchestr8-agents-")
                    .tempdir()?,
            );
        }
        let dir = inner
            .dir
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .unwrap_or_default();
        let path = dir.join(&name);
        let stamp = |p: &std::path::Path| {
            std::fs::symlink_metadata(p)
                .ok()
                .filter(|m| m.is_file())
                .and_then(|m| Some((m.len(), m.modified().ok()?)))
        };
        if inner
            .written
            .get(&name)
            .is_some_and(|w| Some(*w) == stamp(&path))
        {
            return Ok(path);
        }
        // Written under another name and renamed, so no attempt ever sees a partial file.
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
        tmp.write_all(body.as_bytes())?;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o400))?;
        tmp.persist(&path).map_err(|e| e.error)?;
        if let Some(w) = stamp(&path) {
            inner.written.insert(name, w);
        }
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_file_per_body_rewritten_if_removed() {
        let files = PromptFiles::default();
        let a = files.path_for("be brief").unwrap();
        assert_eq!(files.path_for("be brief").unwrap(), a);
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "be brief");
        let b = files.path_for("").unwrap();
        assert_ne!(a, b);
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "");
        std::fs::remove_file(&a).unwrap();
        assert_eq!(
            std::fs::read_to_string(files.path_for("be brief").unwrap()).unwrap(),
            "be brief"
        );
    }
}
