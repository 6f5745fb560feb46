//! The policy in force, and its hot reload from a file.
//!
//! The file is polled (every second by default) rather than watched with
//! inotify: Kubernetes ConfigMap volumes swap a `..data` symlink, editors
//! and tools replace files by rename, and a poll of a file this small
//! notices every one of those the same way, with no watch to re-arm.
//! A changed file that does not parse or validate, or is empty (a file
//! being written in place), is rejected with an error log and
//! `goaway_policy_reloads_total{result="error"}`; the last good policy
//! stays in force.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use goaway_transport::Policy;
use goaway_transport::policy::{PolicyError, Strictness};
use serde::Serialize;
use tokio::sync::watch;

/// Why a policy file could not be used. The message is complete (the
/// cause is part of it, not a separate source), so it prints once however
/// the error is formatted.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Reading failed.
    #[error("reading {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        error: std::io::Error,
    },
    /// Parsing or validation failed (the message names the field).
    #[error("{path}: {error}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        error: PolicyError,
    },
    /// On reload, an empty file: most likely one being written in place.
    #[error("{path}: the file is empty (write `{{}}` for the all-defaults policy)")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A policy the operator sent did not parse or validate.
    #[error("the policy from the operator: {error}")]
    FromOperator {
        /// What is wrong.
        error: PolicyError,
    },
}

/// Reads and validates a policy file, logging its warnings.
pub fn load_file(path: &Path) -> Result<Policy, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|error| LoadError::Read {
        path: path.to_owned(),
        error,
    })?;
    parse(path, &text)
}

fn parse(path: &Path, text: &str) -> Result<Policy, LoadError> {
    let (policy, warnings) =
        Policy::load(text, Strictness::Permissive).map_err(|error| LoadError::Invalid {
            path: path.to_owned(),
            error,
        })?;
    for w in warnings {
        tracing::warn!(field = %w.field, message = %w.message, "policy warning");
    }
    Ok(policy)
}

/// Status of the policy source, for `/policy`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SourceStatus {
    /// The file, if any.
    pub file: Option<PathBuf>,
    /// Where the policy in force came from: `file` (or the defaults) or
    /// `operator` (its control channel, ahead of the file).
    pub from: &'static str,
    /// When the policy in force was loaded (seconds since the epoch).
    pub loaded_at: Option<u64>,
    /// The last rejected change, if the file currently holds one.
    pub last_error: Option<String>,
}

/// The policy in force, readable without a lock.
pub struct PolicyStore {
    current: ArcSwap<Policy>,
    changes: watch::Sender<Arc<Policy>>,
    status: Mutex<SourceStatus>,
    /// True while a control channel session has delivered the policy: the
    /// operator is then the source, and file changes (the kubelet's copy
    /// of the same policy, up to a refresh period behind) are not applied
    /// — a late refresh would put an older version back.
    operator_source: std::sync::atomic::AtomicBool,
}

impl PolicyStore {
    /// A store holding `initial`, loaded from `file`.
    pub fn new(initial: Policy, file: Option<PathBuf>) -> Arc<Self> {
        let initial = Arc::new(initial);
        Arc::new(PolicyStore {
            current: ArcSwap::new(initial.clone()),
            changes: watch::Sender::new(initial),
            operator_source: std::sync::atomic::AtomicBool::new(false),
            status: Mutex::new(SourceStatus {
                file,
                from: "file",
                loaded_at: Some(epoch_secs()),
                last_error: None,
            }),
        })
    }

    /// The policy in force.
    pub fn current(&self) -> Arc<Policy> {
        self.current.load_full()
    }

    /// Notified with every accepted change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Policy>> {
        self.changes.subscribe()
    }

    /// Source status for display.
    pub fn status(&self) -> SourceStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn accept(&self, policy: Policy, from: &'static str) {
        let policy = Arc::new(policy);
        self.current.store(policy.clone());
        self.changes.send_replace(policy);
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        s.from = from;
        s.loaded_at = Some(epoch_secs());
        s.last_error = None;
    }

    /// The control channel's session ended: the file is the source again
    /// (the file watcher applies it at its next look, changed or not).
    pub fn operator_gone(&self) {
        self.operator_source
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the operator's channel is the source now.
    pub fn operator_is_source(&self) -> bool {
        self.operator_source
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Applies a policy the operator sent over its control channel, loaded
    /// and validated as the file is; a bad one is rejected the same way
    /// (logged, the last good policy kept). The file — the same text once
    /// the kubelet has refreshed it — stays the source at start-up and
    /// whenever the channel is down. Ok(true) when the values changed.
    pub fn apply_from_operator(&self, text: &str) -> Result<bool, LoadError> {
        let result = Policy::load(text, Strictness::Permissive)
            .map_err(|error| LoadError::FromOperator { error });
        match result {
            Ok((policy, warnings)) => {
                for w in warnings {
                    tracing::warn!(field = %w.field, message = %w.message, "policy warning");
                }
                self.operator_source
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                let changed = *self.current() != policy;
                if changed {
                    tracing::info!("policy from the operator applied");
                    self.accept(policy, "operator");
                }
                Ok(changed)
            }
            Err(e) => {
                tracing::error!(error = %e, "policy change rejected; keeping the last good policy");
                self.reject(&e);
                Err(e)
            }
        }
    }

    fn reject(&self, error: &LoadError) {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_error = Some(error.to_string());
    }
}

fn epoch_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Polls `path` every `interval` and applies changes to `store`;
/// `on_result(ok)` is called once per change seen (for metrics).
pub async fn watch_file(
    store: Arc<PolicyStore>,
    path: PathBuf,
    interval: Duration,
    on_result: impl Fn(bool) + Send + 'static,
) {
    // What the file held last time: its content, or the read error.
    let key = |r: &std::io::Result<String>| match r {
        Ok(text) => Ok(text.clone()),
        Err(e) => Err(e.to_string()),
    };
    let mut seen = key(&std::fs::read_to_string(&path));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Whether the operator was the source at the last look.
    let mut operator = false;
    loop {
        tick.tick().await;
        let now = std::fs::read_to_string(&path);
        let now_key = key(&now);
        let was_operator = std::mem::replace(&mut operator, store.operator_is_source());
        if operator {
            // The operator's word is at least as new as the kubelet's copy.
            if now_key != seen {
                tracing::debug!(file = %path.display(), "policy file changed; the operator's channel is the source");
            }
            seen = now_key;
            continue;
        }
        // The channel just went away: the file is the source again, as is.
        if now_key == seen && !was_operator {
            continue;
        }
        seen = now_key;
        let result = match now {
            // An editor or `cat >` truncates the file before writing it;
            // taking that moment for "all defaults" would re-arm every
            // connection's timers twice.
            Ok(text) if text.trim().is_empty() => Err(LoadError::Empty { path: path.clone() }),
            Ok(text) => parse(&path, &text),
            Err(error) => Err(LoadError::Read {
                path: path.clone(),
                error,
            }),
        };
        match result {
            Ok(policy) => {
                if *store.current() == policy {
                    tracing::debug!(file = %path.display(), "policy file changed; values unchanged");
                } else {
                    tracing::info!(file = %path.display(), "policy reloaded");
                }
                store.accept(policy, "file");
                on_result(true);
            }
            Err(e) => {
                tracing::error!(error = %e, "policy change rejected; keeping the last good policy");
                store.reject(&e);
                on_result(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    use goaway_tests::Scratch;

    use super::*;

    const POLL: Duration = Duration::from_secs(1);

    /// A policy file in a scratch directory.
    struct File {
        dir: Scratch,
        path: PathBuf,
    }

    impl File {
        fn new(tag: &str, text: &str) -> File {
            let dir = Scratch::new(&format!("policy-{tag}")).unwrap();
            let path = dir.write("policy.yaml", text).unwrap();
            File { dir, path }
        }

        fn write(&self, text: &str) {
            self.dir.write("policy.yaml", text).unwrap();
        }
    }

    /// The store, the watcher task and (accepted, rejected) counts.
    fn watch(file: &File) -> (Arc<PolicyStore>, Arc<(AtomicUsize, AtomicUsize)>) {
        let store = PolicyStore::new(load_file(&file.path).unwrap(), Some(file.path.clone()));
        let results = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let r = results.clone();
        tokio::spawn(watch_file(
            store.clone(),
            file.path.clone(),
            POLL,
            move |ok| {
                let counter = if ok { &r.0 } else { &r.1 };
                counter.fetch_add(1, Relaxed);
            },
        ));
        (store, results)
    }

    fn max_age(store: &PolicyStore) -> Option<String> {
        store
            .current()
            .server
            .max_connection_age
            .map(|d| d.to_string())
    }

    #[tokio::test(start_paused = true)]
    async fn a_valid_change_is_applied_and_announced_within_one_poll() {
        let file = File::new("valid", "server: {maxConnectionAge: 30m}\n");
        let (store, results) = watch(&file);
        let mut changes = store.subscribe();
        changes.borrow_and_update();
        tokio::time::sleep(POLL * 3).await;
        assert_eq!(
            results.0.load(Relaxed),
            0,
            "an unchanged file is not reloaded"
        );

        file.write("server: {maxConnectionAge: 5m}\n");
        tokio::time::sleep(POLL + Duration::from_millis(1)).await;
        assert_eq!(max_age(&store).as_deref(), Some("5m0s"));
        assert!(changes.has_changed().unwrap(), "subscribers are told");
        assert_eq!(results.0.load(Relaxed), 1);
        assert_eq!(store.status().last_error, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_bad_or_empty_file_keeps_the_last_good_policy_and_says_why() {
        let file = File::new("bad", "server: {maxConnectionAge: 30m}\n");
        let (store, results) = watch(&file);
        tokio::time::sleep(POLL).await;

        file.write("server: {maxConnectionAge: banana}\n");
        tokio::time::sleep(POLL * 2).await;
        assert_eq!(max_age(&store).as_deref(), Some("30m0s"), "last good kept");
        let error = store.status().last_error.expect("the rejection is shown");
        assert!(error.contains("maxConnectionAge"), "{error}");
        assert_eq!(results.1.load(Relaxed), 1, "counted once, not per poll");

        // A file truncated before being rewritten is not "all defaults".
        file.write("");
        tokio::time::sleep(POLL * 2).await;
        assert_eq!(max_age(&store).as_deref(), Some("30m0s"));
        assert!(store.status().last_error.unwrap().contains("empty"));
        assert_eq!(results.1.load(Relaxed), 2);

        // The next good write clears the error.
        file.write("{}\n");
        tokio::time::sleep(POLL * 2).await;
        assert_eq!(max_age(&store), None, "all defaults now");
        assert_eq!(store.status().last_error, None);
        assert_eq!(results.0.load(Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn while_the_operator_is_the_source_a_late_file_cannot_put_an_older_policy_back() {
        let file = File::new("operator", "server: {maxConnectionAge: 30m}\n");
        let (store, _) = watch(&file);
        tokio::time::sleep(POLL).await;
        // The operator's edits: 10m, then 3m.
        store
            .apply_from_operator("server: {maxConnectionAge: 10m}\n")
            .unwrap();
        store
            .apply_from_operator("server: {maxConnectionAge: 3m}\n")
            .unwrap();
        assert_eq!(store.status().from, "operator");
        // The kubelet's refresh of the first edit arrives late.
        file.write("server: {maxConnectionAge: 10m}\n");
        tokio::time::sleep(POLL * 3).await;
        assert_eq!(
            max_age(&store).as_deref(),
            Some("3m0s"),
            "the newer policy stays"
        );
        // The channel goes away: the file is the source again, as it is.
        store.operator_gone();
        tokio::time::sleep(POLL + Duration::from_millis(1)).await;
        assert_eq!(max_age(&store).as_deref(), Some("10m0s"));
        assert_eq!(store.status().from, "file");
        // And its changes apply again.
        file.write("server: {maxConnectionAge: 3m}\n");
        tokio::time::sleep(POLL + Duration::from_millis(1)).await;
        assert_eq!(max_age(&store).as_deref(), Some("3m0s"));
    }
}
