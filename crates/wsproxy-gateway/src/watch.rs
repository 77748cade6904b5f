//! `--watch` (`watch = true`): reload when the configuration file or a
//! certificate it names changes, as SIGHUP does (Caddy's `--watch`), so
//! that an edit or a renewal needs no signal.
//!
//! The files are read and compared by content every [`INTERVAL`] rather
//! than watched with inotify: editors and certbot replace files by
//! renaming, which an inotify watch on the old file misses, and a few
//! small files a second cost nothing. A change is acted on once it holds
//! still for a look (certbot writes the certificate, then the key: the
//! reload sees both), and once: an invalid file is logged once and not
//! retried until it changes again.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;

/// How often the files are looked at.
pub(crate) const INTERVAL: Duration = Duration::from_secs(1);

/// The files a configuration is read from, and what they held when last
/// looked at.
#[derive(Debug)]
pub(crate) struct Watch {
    files: Vec<PathBuf>,
    /// What the files held when last acted on.
    seen: u64,
    /// A change seen at the last look, acted on if the next look agrees.
    pending: Option<u64>,
    /// What the files held just before the reload under way.
    reading: Option<u64>,
    interval: tokio::time::Interval,
}

impl Watch {
    /// Watch `file` and the certificate files of `config`.
    pub(crate) fn new(file: PathBuf, config: &Config) -> Self {
        let mut interval = tokio::time::interval(INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watch = Self {
            files: Vec::new(),
            seen: 0,
            pending: None,
            reading: None,
            interval,
        };
        watch.follow(file, config);
        watch
    }

    /// A reload is about to read the files (on SIGHUP or a change): what
    /// they hold now is what it acts on.
    pub(crate) fn reloading(&mut self) {
        self.reading = Some(fingerprint(&self.files));
    }

    /// After a reload: watch the files `config` names now, taking what
    /// they held when it read them as seen (a SIGHUP after an edit does
    /// not make the watcher reload it again; a change made during the
    /// reload is still a change).
    pub(crate) fn follow(&mut self, file: PathBuf, config: &Config) {
        let files: Vec<PathBuf> = std::iter::once(file)
            .chain(
                config
                    .listen
                    .iter()
                    .filter_map(|l| l.tls.as_ref())
                    .flat_map(|tls| [tls.cert.clone(), tls.key.clone()]),
            )
            .collect();
        let reading = self.reading.take();
        if files == self.files {
            if let Some(reading) = reading {
                self.seen = reading;
            }
        } else {
            self.seen = fingerprint(&files);
            self.files = files;
        }
        self.pending = None;
    }

    /// Resolves when the files changed since they were last acted on and
    /// then held still for one look.
    pub(crate) async fn changed(&mut self) {
        loop {
            self.interval.tick().await;
            let now = fingerprint(&self.files);
            if now == self.seen {
                self.pending = None;
                continue;
            }
            if self.pending == Some(now) {
                self.seen = now;
                self.pending = None;
                return;
            }
            self.pending = Some(now);
        }
    }
}

/// The files' contents (or that they are missing), hashed.
fn fingerprint(files: &[PathBuf]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in files {
        std::fs::read(file).ok().hash(&mut hasher);
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_change_is_seen_once() {
        let dir = std::env::temp_dir().join(format!("wsgate-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("wsgate.toml");
        std::fs::write(&file, "workers = 1\n").unwrap();
        let mut watch = Watch::new(file.clone(), &Config::default());
        let before = watch.seen;
        assert_eq!(fingerprint(&watch.files), before, "nothing changed");
        // Replaced by a rename, as editors do.
        let new = dir.join("wsgate.toml.new");
        std::fs::write(&new, "workers = 2\n").unwrap();
        std::fs::rename(&new, &file).unwrap();
        tokio::time::timeout(INTERVAL * 5, watch.changed())
            .await
            .expect("the change is seen");
        assert_ne!(watch.seen, before);
        assert_eq!(fingerprint(&watch.files), watch.seen, "seen once");
        // A reload (SIGHUP) after an edit: what it read is seen, and not
        // reloaded again.
        std::fs::write(&file, "workers = 3\n").unwrap();
        watch.reloading();
        watch.follow(file.clone(), &Config::default());
        assert_eq!(fingerprint(&watch.files), watch.seen);
        // A change made while it ran is still a change.
        watch.reloading();
        std::fs::write(&file, "workers = 4\n").unwrap();
        watch.follow(file.clone(), &Config::default());
        assert_ne!(fingerprint(&watch.files), watch.seen);
        std::fs::write(&file, "workers = 3\n").unwrap();
        // A file gone is a change too.
        std::fs::remove_file(&file).unwrap();
        assert_ne!(fingerprint(&watch.files), watch.seen);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
