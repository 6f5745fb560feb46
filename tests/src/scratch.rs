//! A scratch directory for one test's files, removed when dropped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};

/// A fresh directory under the system's temporary directory, removed
/// (with everything in it) on drop. Tests running at once in one process
/// or in several never share one.
pub struct Scratch(PathBuf);

impl Scratch {
    /// Creates `goaway-test-{tag}-{pid}-{n}`.
    pub fn new(tag: &str) -> Result<Scratch> {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "goaway-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch(dir))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `name` with `text` and returns its path.
    pub fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        let p = self.0.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    }

    /// Replaces `name` the way editors and tools do: write a temporary
    /// file beside it, then rename it over the original.
    pub fn replace_by_rename(&self, name: &str, text: &str) -> Result<PathBuf> {
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        let p = self.0.join(name);
        std::fs::rename(&tmp, &p)?;
        Ok(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
