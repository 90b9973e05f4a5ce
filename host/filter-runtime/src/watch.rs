//! Watching the module directory: notify events, debounced, then a reload.
//!
//! Kubernetes updates a mounted ConfigMap by writing a new timestamped directory and
//! renaming the `..data` symlink onto it; the visible files are symlinks through
//! `..data`. Watching the mount directory itself (not the files) sees that rename as one
//! event, and a reload reads everything through the new symlink. Reloads compare content
//! hashes, so spurious events cost a re-read and nothing else.

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use crate::error::LoadError;
use crate::runtime::{FilterRuntime, ModuleSource};

impl FilterRuntime {
    /// Watches the module directory and reloads after changes settle for `debounce`.
    /// Also rescans every `rescan` in case an event was missed. Builtin sources have
    /// nothing to watch and return `None`.
    pub fn watch(
        self: &Arc<Self>,
        debounce: Duration,
        rescan: Duration,
    ) -> Result<Option<WatchHandle>, LoadError> {
        match self.source() {
            ModuleSource::Builtin(_) => Ok(None),
            ModuleSource::Directory(dir) => {
                WatchHandle::start(Arc::downgrade(self), dir, debounce, rescan).map(Some)
            }
        }
    }
}

/// Longest time between two checks of a canary's probation.
const ROLLOUT_POLL: Duration = Duration::from_secs(1);

enum Message {
    Changed,
    Stop,
}

/// Keeps the directory watched until dropped; dropping it stops the watcher thread.
pub struct WatchHandle {
    _watcher: RecommendedWatcher,
    stop: mpsc::Sender<Message>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for WatchHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHandle").finish_non_exhaustive()
    }
}

impl WatchHandle {
    pub(crate) fn start(
        runtime: Weak<FilterRuntime>,
        dir: &Path,
        debounce: Duration,
        rescan: Duration,
    ) -> Result<WatchHandle, LoadError> {
        let (tx, rx) = mpsc::channel();
        let events = tx.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = events.send(Message::Changed);
                }
            })
            .map_err(|e| LoadError::Setup(format!("cannot watch {}: {e}", dir.display())))?;
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| LoadError::Setup(format!("cannot watch {}: {e}", dir.display())))?;
        let thread = std::thread::Builder::new()
            .name("meshfilter-reload".into())
            .spawn(move || run(runtime, rx, debounce, rescan))
            .map_err(|e| LoadError::Setup(format!("cannot start the reload thread: {e}")))?;
        Ok(WatchHandle {
            _watcher: watcher,
            stop: tx,
            thread: Some(thread),
        })
    }
}

fn run(
    runtime: Weak<FilterRuntime>,
    rx: mpsc::Receiver<Message>,
    debounce: Duration,
    rescan: Duration,
) {
    let mut last_scan = Instant::now();
    loop {
        // Wake at least every second: a canary's probation may end while no decision
        // comes to promote it.
        match rx.recv_timeout(rescan.min(ROLLOUT_POLL)) {
            Ok(Message::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Ok(Message::Changed) => {
                // Let a burst of events (a ConfigMap update touches several entries) settle.
                let mut quiet_since = Instant::now();
                loop {
                    match rx.recv_timeout(debounce.saturating_sub(quiet_since.elapsed())) {
                        Ok(Message::Changed) => quiet_since = Instant::now(),
                        Ok(Message::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                        Err(mpsc::RecvTimeoutError::Timeout) => break,
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let Some(runtime) = runtime.upgrade() else {
                    return;
                };
                runtime.poll_rollout();
                if last_scan.elapsed() < rescan {
                    continue;
                }
            }
        }
        let Some(runtime) = runtime.upgrade() else {
            return;
        };
        last_scan = Instant::now();
        // Errors are logged, counted and kept for status by `reload` itself.
        let _ = runtime.reload();
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(Message::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
