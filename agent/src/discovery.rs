//! Finding the files to tail: glob walks from each pattern's literal base directory, plus
//! notifications on those directories so a new file or a write is seen at once.
//!
//! Notifications are an accelerator, never the only source of truth: the loop also re-globs
//! periodically and stats its open files. When watches cannot be set up (inotify limits hit,
//! a file system without notifications), discovery switches to polling for good, with a log line
//! and a metric, instead of silently missing files (fluent-bit#1777).

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use logpipe_core::metric_names::agent::WATCH_FALLBACKS;
use notify::event::{EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use crate::config::{CompiledInput, InputConfig};

/// A pattern split into the directory to start from and how deep to look under it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Root {
    base: PathBuf,
    /// Path components under `base` a match has; `None` for `**` (any depth).
    depth: Option<usize>,
}

fn root(pattern: &str) -> Root {
    let mut base = PathBuf::new();
    let mut rest = 0;
    let mut globbing = false;
    let mut recursive = false;
    for component in Path::new(pattern).components() {
        let text = component.as_os_str().to_string_lossy();
        if !globbing && !text.contains(['*', '?', '[', '{']) {
            base.push(component);
            continue;
        }
        globbing = true;
        recursive |= text.contains("**");
        rest += 1;
    }
    if !globbing {
        // A literal file path: its directory is the base, the file one level below.
        let file = base.clone();
        return Root {
            base: file.parent().map(Path::to_owned).unwrap_or(file),
            depth: Some(1),
        };
    }
    Root {
        base,
        depth: if recursive { None } else { Some(rest) },
    }
}

/// What a file system notification means to the tailing loop (reads are not reported).
#[derive(Debug)]
pub(crate) enum Notice {
    /// These files were written to (or their metadata changed): open ones are stat'ed.
    Written(Vec<PathBuf>),
    /// Files appeared, moved or went away, or events were lost: re-glob and stat everything.
    Changed,
    /// The watcher failed; see [`is_limit`] for the failures that mean "poll from now on".
    Failed(notify::Error),
}

impl Notice {
    /// Reads say nothing about new lines: they are dropped (`None`) before reaching the loop.
    fn of(result: notify::Result<notify::Event>) -> Option<Notice> {
        let event = match result {
            Ok(event) => event,
            Err(e) => return Some(Notice::Failed(e)),
        };
        if event.need_rescan() {
            return Some(Notice::Changed);
        }
        match event.kind {
            EventKind::Access(_) => None,
            EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Metadata(_) | ModifyKind::Any) => {
                Some(Notice::Written(event.paths))
            }
            _ => Some(Notice::Changed),
        }
    }
}

/// The inputs' patterns and the watches on their directories.
pub(crate) struct Discovery {
    inputs: Vec<CompiledInput>,
    roots: Vec<Root>,
    watcher: Option<RecommendedWatcher>,
    /// Directories watched, with the mode they are watched in.
    watched: HashSet<(PathBuf, bool)>,
}

impl Discovery {
    /// `poll` forces polling; otherwise `notices` receives what the watches see, on the
    /// watcher's thread. Patterns were validated with the config.
    pub(crate) fn new(
        inputs: &[InputConfig],
        poll: bool,
        notices: impl Fn(Notice) + Send + 'static,
    ) -> anyhow::Result<Discovery> {
        let compiled = inputs
            .iter()
            .map(InputConfig::compile)
            .collect::<anyhow::Result<_>>()?;
        let roots: BTreeSet<(PathBuf, Option<usize>)> = inputs
            .iter()
            .flat_map(|i| &i.paths)
            .map(|p| root(p))
            .map(|r| (r.base, r.depth))
            .collect();
        let mut discovery = Discovery {
            inputs: compiled,
            roots: roots
                .into_iter()
                .map(|(base, depth)| Root { base, depth })
                .collect(),
            watcher: None,
            watched: HashSet::new(),
        };
        if !poll {
            match notify::recommended_watcher(move |result| {
                if let Some(notice) = Notice::of(result) {
                    notices(notice);
                }
            }) {
                Ok(watcher) => discovery.watcher = Some(watcher),
                Err(e) => discovery.fall_back(&e.to_string()),
            }
        }
        Ok(discovery)
    }

    /// Whether notifications are in use.
    pub(crate) fn watching(&self) -> bool {
        self.watcher.is_some()
    }

    /// Gives up on notifications: from now on the loop polls.
    pub(crate) fn fall_back(&mut self, why: &str) {
        tracing::warn!("file system notifications unavailable ({why}); polling instead");
        metrics::counter!(WATCH_FALLBACKS).increment(1);
        self.watcher = None;
        self.watched.clear();
    }

    /// Makes sure every base directory is watched; a missing one is watched through its
    /// nearest existing ancestor, so its creation is noticed.
    pub(crate) fn ensure_watches(&mut self) {
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        let mut failure = None;
        for root in &self.roots {
            let (dir, recursive) = match nearest_existing(&root.base) {
                Some(dir) if dir == root.base => (dir, root.depth != Some(1)),
                Some(dir) => (dir, false),
                None => continue,
            };
            if self.watched.contains(&(dir.clone(), recursive)) {
                continue;
            }
            let mode = if recursive {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            match watcher.watch(&dir, mode) {
                Ok(()) => {
                    self.watched.insert((dir, recursive));
                }
                Err(e) if is_limit(&e) => {
                    failure = Some(format!("watching {}: {e}", dir.display()));
                    break;
                }
                Err(e) => tracing::debug!("cannot watch {}: {e}", dir.display()),
            }
        }
        if let Some(why) = failure {
            self.fall_back(&why);
        }
    }

    /// Every file the inputs match now, with the first input that matches it.
    pub(crate) fn scan(&self) -> Vec<(PathBuf, usize)> {
        let mut seen = HashSet::new();
        let mut found = Vec::new();
        for root in &self.roots {
            walk(&root.base, root.depth, &mut |path| {
                if let Some(input) = self.input_for(path) {
                    if seen.insert(path.to_owned()) {
                        found.push((path.to_owned(), input));
                    }
                }
            });
        }
        found
    }

    /// The first input whose patterns match `path`.
    pub(crate) fn input_for(&self, path: &Path) -> Option<usize> {
        self.inputs.iter().position(|i| i.matches(path))
    }
}

/// Whether a watch error means "no more watches": then polling is the only way.
pub(crate) fn is_limit(error: &notify::Error) -> bool {
    match &error.kind {
        notify::ErrorKind::MaxFilesWatch => true,
        notify::ErrorKind::Io(e) => matches!(
            e.raw_os_error(),
            Some(28 /* ENOSPC */) | Some(24 /* EMFILE */)
        ),
        _ => false,
    }
}

fn nearest_existing(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().find(|d| d.is_dir()).map(Path::to_owned)
}

/// Calls `visit` for every regular file (symlinks followed) under `dir` at exactly `depth`
/// levels, or at any depth for `None`. Directory symlinks are followed only at fixed depth,
/// where a loop cannot make the walk endless.
fn walk(dir: &Path, depth: Option<usize>, visit: &mut dyn FnMut(&Path)) {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::debug!("cannot list {}: {e}", dir.display());
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let is_dir = if kind.is_symlink() {
            depth.is_some() && path.is_dir()
        } else {
            kind.is_dir()
        };
        match depth {
            Some(1) | None
                if !is_dir && (kind.is_file() || (kind.is_symlink() && path.is_file())) =>
            {
                visit(&path)
            }
            Some(n) if n > 1 && is_dir => walk(&path, Some(n - 1), visit),
            None if is_dir => walk(&path, None, visit),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_split_literal_base_from_glob() {
        assert_eq!(
            root("/var/log/game/*.log"),
            Root {
                base: "/var/log/game".into(),
                depth: Some(1)
            }
        );
        assert_eq!(
            root("/var/log/*/app.log"),
            Root {
                base: "/var/log".into(),
                depth: Some(2)
            }
        );
        assert_eq!(
            root("/var/log/**/*.log"),
            Root {
                base: "/var/log".into(),
                depth: None
            }
        );
        assert_eq!(
            root("/var/log/app.log"),
            Root {
                base: "/var/log".into(),
                depth: Some(1)
            }
        );
    }

    #[test]
    fn scan_finds_matching_files_at_the_right_depth() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        fs::create_dir_all(base.join("a/b")).unwrap();
        for file in ["x.log", "y.txt", "a/z.log", "a/b/w.log", "skip.log"] {
            fs::write(base.join(file), b"1\n").unwrap();
        }
        std::os::unix::fs::symlink(base.join("x.log"), base.join("link.log")).unwrap();
        let input = |paths: Vec<String>, exclude: Vec<String>| InputConfig {
            paths,
            exclude,
            topic: "raw.t".into(),
            key: Default::default(),
            start_at: Default::default(),
            max_line_bytes: 100,
            name: None,
        };
        let b = base.display();
        let inputs = vec![
            input(vec![format!("{b}/*.log")], vec![format!("{b}/skip.log")]),
            input(vec![format!("{b}/**/*.log")], vec![]),
        ];
        let discovery = Discovery::new(&inputs, true, |_| {}).unwrap();
        let mut found: Vec<(String, usize)> = discovery
            .scan()
            .into_iter()
            .map(|(p, i)| (p.strip_prefix(base).unwrap().display().to_string(), i))
            .collect();
        found.sort();
        assert_eq!(
            found,
            vec![
                ("a/b/w.log".into(), 1),
                ("a/z.log".into(), 1),
                ("link.log".into(), 0),
                ("skip.log".into(), 1),
                ("x.log".into(), 0),
            ]
        );
    }
}
