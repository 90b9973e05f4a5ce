//! A directory laid out like a mounted ConfigMap, updated the way the kubelet updates one,
//! for what hot-reloads a mounted filters directory (the filter runtime, the soak).

use std::io;
use std::path::Path;

/// The visible entries are symlinks through `..data`, which points at a timestamped
/// directory; an update writes a new timestamped directory and swaps `..data` onto it
/// with one atomic rename (the kubelet's AtomicWriter). Removed when dropped.
pub struct ConfigMapDir {
    dir: tempfile::TempDir,
    version: u32,
}

impl ConfigMapDir {
    /// [`ConfigMapDir::try_new`], panicking on failure (for tests).
    pub fn new() -> ConfigMapDir {
        ConfigMapDir::try_new().unwrap_or_else(|e| panic!("ConfigMap directory: {e}"))
    }

    /// An empty mount in a new temporary directory.
    pub fn try_new() -> io::Result<ConfigMapDir> {
        Ok(ConfigMapDir {
            dir: tempfile::Builder::new()
                .prefix("meshfilter-configmap-")
                .tempdir()?,
            version: 0,
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// [`ConfigMapDir::try_update`], panicking on failure (for tests).
    pub fn update(&mut self, files: &[(&str, &[u8])]) {
        self.try_update(files)
            .unwrap_or_else(|e| panic!("updating the ConfigMap directory: {e}"));
    }

    /// Replaces the whole content with `files` in one atomic swap.
    pub fn try_update(&mut self, files: &[(&str, &[u8])]) -> io::Result<()> {
        self.version += 1;
        let root = self.dir.path();
        let data_dir_name = format!("..2026_11_25_00_00_00.{:06}", self.version);
        let data_dir = root.join(&data_dir_name);
        std::fs::create_dir(&data_dir)?;
        for (name, bytes) in files {
            std::fs::write(data_dir.join(name), bytes)?;
        }
        let old = std::fs::read_link(root.join("..data")).ok();
        let tmp = root.join("..data_tmp");
        std::os::unix::fs::symlink(&data_dir_name, &tmp)?;
        std::fs::rename(&tmp, root.join("..data"))?;
        for (name, _) in files {
            let link = root.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(name), &link)?;
            }
        }
        // Drop visible links whose file is gone, then the old data directory.
        for entry in std::fs::read_dir(root)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("..") && !files.iter().any(|(f, _)| *f == name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        if let Some(old) = old {
            let _ = std::fs::remove_dir_all(root.join(old));
        }
        Ok(())
    }
}

impl Default for ConfigMapDir {
    fn default() -> Self {
        ConfigMapDir::new()
    }
}
