//! The database of finished tasks behind the "stored" figures: filled in a temporary folder, or
//! kept in a folder the user names and reused by later runs with the same count (filling
//! 10,000,000 tasks takes minutes).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use uuid::Uuid;

/// Where the stored tasks live: a temporary folder removed at the end, or the user's.
pub enum StoredDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl StoredDir {
    pub fn path(&self) -> &Path {
        match self {
            StoredDir::Temp(t) => t.path(),
            StoredDir::Kept(p) => p,
        }
    }
}

/// The folder, about 1,000 of its task ids, and how long the fill took (`None`: reused).
pub fn prepare(n: usize, keep: Option<&Path>) -> Result<(StoredDir, Vec<Uuid>, Option<f64>)> {
    let dir = match keep {
        Some(p) => {
            std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
            StoredDir::Kept(p.to_path_buf())
        }
        None => StoredDir::Temp(tempfile::tempdir()?),
    };
    let db = dir.path().join("bench.duckdb");
    let manifest = dir.path().join("stored.json");
    if keep.is_some() && db.exists() {
        let v: Value = serde_json::from_slice(
            &std::fs::read(&manifest)
                .with_context(|| format!("{} has no {}", db.display(), manifest.display()))?,
        )?;
        if v["stored"].as_u64() != Some(n as u64) {
            bail!(
                "{} holds {} stored tasks, not {n}: remove the folder or pass the same --stored",
                dir.path().display(),
                v["stored"]
            );
        }
        let sample = v["sample"]
            .as_array()
            .context("no sample in the manifest")?
            .iter()
            .filter_map(|id| id.as_str().and_then(|s| Uuid::parse_str(s).ok()))
            .collect();
        return Ok((dir, sample, None));
    }
    let agents: Vec<String> = (0..10).map(|i| format!("agent-{i}")).collect();
    let agent_refs: Vec<&str> = agents.iter().map(String::as_str).collect();
    let t = Instant::now();
    let sample = orchestr8_async::store::synthetic::fill_finished(&db, n, &agent_refs)?;
    let fill_s = t.elapsed().as_secs_f64();
    if keep.is_some() {
        std::fs::write(
            &manifest,
            json!({"stored": n, "sample": sample}).to_string(),
        )?;
    }
    Ok((dir, sample, Some(fill_s)))
}
