//! A hot folder (`alfa watch`): each image that appears in a folder is analysed once it
//! is completely written, into the files a batch writes plus one JSON line per image in
//! `results.jsonl`, until the watcher is told to stop.
//!
//! **When a file is taken.** File events (inotify on Linux) or a listing of the folder
//! every poll interval only make a file a candidate; [`Readiness`] takes it once its
//! size, modification and change times stayed the same for the settle time and it is
//! not empty. A file renamed into the folder is stable from the start; one written in
//! place is taken once its writer paused for the settle time. Hidden files and names
//! that are not images (`x.png.part`, `x.tmp`, `x.png~`) are left alone until renamed.
//!
//! **What stops it.** The stop flag (Ctrl-C, SIGTERM) after the current image; the
//! folder disappearing; an output that cannot be written (a full disk, a read-only or
//! vanished output folder), since every following image would fail too. A file that
//! cannot be read or analysed is named, gets a line in `results.jsonl` and is not taken
//! again until it changes; the watcher goes on. Inputs are never deleted: `--done` moves
//! analysed ones (a failed move leaves the file where it is).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{File, Metadata, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::{BatchError, BatchSpec, Observer, Outputs, Plan, PlannedImage, Runner, Scored, Summary, prepare_output_folder};
use crate::detect::inputs::{self, InputImage};

/// The file each analysed (or failed) image adds a line to.
pub const RESULTS: &str = "results.jsonl";

/// How long the watcher waits at most before it looks at the stop flag again.
const TICK: Duration = Duration::from_millis(100);

/// With file events, the folder is still listed this often: events can be lost (a full
/// event queue) or never come (other machines writing into a network folder).
const RESCAN: Duration = Duration::from_secs(10);

/// What `alfa watch` is told besides the batch's options.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    /// The folder watched (its files, not its sub-folders).
    pub folder: PathBuf,
    /// Where analysed inputs are moved, if anywhere.
    pub done: Option<PathBuf>,
    /// How long a file must stay unchanged before it is taken.
    pub settle: Duration,
    /// List the folder every `poll_interval` even where file events work.
    pub force_polling: bool,
    pub poll_interval: Duration,
}

/// What a watch tells its user besides what a batch tells ([`Observer`]).
pub trait WatchObserver: Observer {
    /// The folder is watched, `how`.
    fn watching(&self, _folder: &Path, _how: &str) {}
    /// `image` is analysed and written; `record` is its line for `results.jsonl`.
    fn analysed(&self, _image: &InputImage, _scored: &Scored, _record: &str) {}
    /// `file` could not be read or analysed (`reason`); the watch goes on.
    fn failed(&self, _file: &Path, _reason: &str) {}
}

/// Why a watch ended.
#[derive(Debug)]
pub enum WatchEnd {
    /// The stop flag was set (Ctrl-C, SIGTERM).
    Stopped,
    /// The watched folder was deleted, moved, unmounted or could no longer be listed.
    FolderGone(String),
    /// An output could not be written (a full disk, ...): the image's error.
    OutputFailed(Box<BatchError>),
}

impl WatchEnd {
    /// For the summary and the terminal.
    pub fn describe(&self) -> String {
        match self {
            WatchEnd::Stopped => "stopped by Ctrl-C or SIGTERM".into(),
            WatchEnd::FolderGone(reason) => reason.clone(),
            WatchEnd::OutputFailed(e) => format!("{e}: stopped (the input stays where it is; restart once the output folder can be written)"),
        }
    }
}

/// A finished watch.
#[derive(Debug)]
pub struct WatchResult {
    /// Images analysed, failed and (at the start) found finished by an earlier run.
    pub summary: Summary,
    pub end: WatchEnd,
    /// Writing `scores.csv` and `summary.json` at the end failed.
    pub unwritten: Option<BatchError>,
}

/// A file's size and times: a file whose stamp stayed the same is not being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub size: u64,
    pub modified: Option<SystemTime>,
    /// The inode change time (seconds, nanoseconds): also moves on `chmod`, so a file
    /// made readable is taken again.
    pub changed: Option<(i64, i64)>,
}

impl Stamp {
    pub fn of(metadata: &Metadata) -> Self {
        #[cfg(unix)]
        let changed = {
            use std::os::unix::fs::MetadataExt;
            Some((metadata.ctime(), metadata.ctime_nsec()))
        };
        #[cfg(not(unix))]
        let changed = None;
        Self { size: metadata.len(), modified: metadata.modified().ok(), changed }
    }
}

/// Decides when a file is completely written: it was seen with the same stamp across
/// the settle time, and it is not empty. Fed with what the file system shows
/// ([`Readiness::observe`]); a file taken is not taken again until its stamp changes.
#[derive(Debug)]
pub struct Readiness {
    settle: Duration,
    /// Candidates: the stamp, when it was first seen, when it was last seen.
    pending: BTreeMap<PathBuf, (Stamp, Instant, Instant)>,
    /// Files taken, with their stamp then.
    taken: HashMap<PathBuf, Stamp>,
}

impl Readiness {
    pub fn new(settle: Duration) -> Self {
        Self { settle, pending: BTreeMap::new(), taken: HashMap::new() }
    }

    /// `path` as the file system shows it at `now`: its stamp, or `None` when it is
    /// gone (then a file of that name that comes later is new).
    pub fn observe(&mut self, path: &Path, stamp: Option<Stamp>, now: Instant) {
        let Some(stamp) = stamp else {
            self.pending.remove(path);
            self.taken.remove(path);
            return;
        };
        if self.taken.get(path) == Some(&stamp) {
            self.pending.remove(path);
            return;
        }
        match self.pending.get_mut(path) {
            Some((seen, _, last)) if *seen == stamp => *last = now,
            _ => {
                self.pending.insert(path.to_owned(), (stamp, now, now));
            }
        }
    }

    /// Counts `path` as taken with `stamp` (an earlier run finished it).
    pub fn mark_taken(&mut self, path: &Path, stamp: Stamp) {
        self.pending.remove(path);
        self.taken.insert(path.to_owned(), stamp);
    }

    /// Forgets the files that are not in `present` (a listing of the folder).
    pub fn retain(&mut self, present: &HashSet<PathBuf>) {
        self.pending.retain(|p, _| present.contains(p));
        self.taken.retain(|p, _| present.contains(p));
    }

    /// The candidates, to be looked at again.
    pub fn pending(&self) -> Vec<PathBuf> {
        self.pending.keys().cloned().collect()
    }

    /// The candidates seen unchanged across the settle time and not empty, in name
    /// order; from now on they count as taken with that stamp.
    pub fn take_ready(&mut self) -> Vec<PathBuf> {
        let ready: Vec<PathBuf> = self
            .pending
            .iter()
            .filter(|(_, (stamp, first, last))| stamp.size > 0 && last.duration_since(*first) >= self.settle)
            .map(|(path, _)| path.clone())
            .collect();
        for path in &ready {
            if let Some((stamp, _, _)) = self.pending.remove(path) {
                self.taken.insert(path.clone(), stamp);
            }
        }
        ready
    }

    /// When a candidate looked at from then on can be taken (empty files wait for a change).
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.values().filter(|(stamp, _, _)| stamp.size > 0).map(|(_, first, _)| *first + self.settle).min()
    }
}

/// Whether a file of this name is an input: an image, not hidden. Writers' temporary
/// names (`x.png.part`, `x.tmp`, `x.png~`, `.x.png`) are not, until renamed.
pub fn is_input_name(path: &Path) -> bool {
    let hidden = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
    !hidden && inputs::is_image(path)
}

/// A folder being watched, checked before the model is loaded.
#[derive(Debug)]
pub struct Watch {
    spec: WatchSpec,
    class: String,
    /// The images already in the folder, with the records of those an earlier run finished.
    pub plan: Plan,
}

impl Watch {
    /// Checks the folders (the watched one exists; the output folder can be written and
    /// is not the watched one; `--done` can be made and is neither) and lists the images
    /// already in the folder, finding those an earlier run finished.
    pub fn prepare(batch: &BatchSpec, spec: WatchSpec) -> Result<Self, BatchError> {
        let folder = &spec.folder;
        if !folder.is_dir() {
            let what = if folder.exists() { "is not a folder" } else { "does not exist" };
            return Err(BatchError::Invalid(format!("the watched folder {} {what}", folder.display())));
        }
        let class = batch.class.clone().or_else(|| inputs::in_folder(folder, &folder.join("x.png")).class).ok_or_else(|| {
            BatchError::Invalid(format!("no class for the images of {}: pass --class NAME", folder.display()))
        })?;
        prepare_output_folder(&batch.out)?.keep();
        let same = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b);
        if same(folder, &batch.out) {
            return Err(BatchError::Invalid(format!(
                "the output folder {} is the watched folder: its overlays would be analysed in turn; choose another --out",
                batch.out.display()
            )));
        }
        if let Some(done) = &spec.done {
            std::fs::create_dir_all(done)
                .map_err(|e| BatchError::Invalid(format!("cannot create the --done folder {}: {e}", done.display())))?;
            if same(done, folder) || same(done, &batch.out) {
                return Err(BatchError::Invalid(format!(
                    "the --done folder {} must be neither the watched folder nor the output folder",
                    done.display()
                )));
            }
        }
        let mut images = Vec::new();
        for path in list(folder).map_err(|e| BatchError::Invalid(format!("cannot list the watched folder {}: {e}", folder.display())))? {
            let image = inputs::in_folder(folder, &path);
            let outputs = Outputs::of(&batch.out, &image);
            // Outputs of another file with the same stem (`a.jpg` beside `a.png`) are not this one's.
            let finished = outputs.finished()?.filter(|record| record_name(record).as_deref() == path.file_name());
            images.push(PlannedImage { image, class: class.clone(), outputs, finished });
        }
        Ok(Self { spec, class, plan: Plan { images, _folder: None } })
    }

    /// The class of the watched folder's images (--class, else the folder's name).
    pub fn class(&self) -> &str {
        &self.class
    }

    /// Watches the folder until `stop` is set, the folder goes or an output cannot be
    /// written; then writes `scores.csv` and `summary.json` (the counts so far).
    pub fn run(&self, runner: &mut Runner<'_>, observer: &dyn WatchObserver, stop: &AtomicBool) -> Result<WatchResult, BatchError> {
        // Prompts and references now: an error there is every image's.
        runner.analyser.prepare(&self.class, observer)?;
        let results_path = runner.spec().out.join(RESULTS);
        let results = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&results_path)
            .map_err(|e| BatchError::write(&results_path, e))?;
        let mut source = Source::start(&self.spec, observer);
        observer.watching(&self.spec.folder, &source.describe(&self.spec));
        let mut session = Session {
            watch: self,
            runner,
            observer,
            results,
            results_path,
            readiness: Readiness::new(self.spec.settle),
            outcomes: BTreeMap::new(),
        };
        for planned in &self.plan.images {
            if let Some(record) = &planned.finished {
                session.outcomes.insert(planned.image.path.clone(), FileOutcome::Resumed(Scored::from_record(planned, record)));
                if let Ok(metadata) = std::fs::metadata(&planned.image.path) {
                    session.readiness.mark_taken(&planned.image.path, Stamp::of(&metadata));
                }
            }
        }
        let end = session.watch(&mut source, stop);
        drop(source);
        let Session { outcomes, runner, .. } = session;
        let mut summary = Summary::default();
        let mut scored = Vec::new();
        for outcome in outcomes.into_values() {
            match outcome {
                FileOutcome::Resumed(s) => {
                    summary.resumed += 1;
                    scored.push(s);
                }
                FileOutcome::Analysed(s) => {
                    summary.analysed += 1;
                    scored.push(s);
                }
                FileOutcome::Failed => summary.failed += 1,
            }
        }
        summary.images = summary.analysed + summary.failed + summary.resumed;
        summary.interrupted = matches!(end, WatchEnd::Stopped);
        let unwritten = runner.writer.write_results(&mut summary, &scored, Some(end.describe())).err();
        Ok(WatchResult { summary, end, unwritten })
    }
}

/// The images in `folder` now (not its sub-folders), in name order.
fn list(folder: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(folder)? {
        let path = entry?.path();
        if is_input_name(&path) && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The file name a record was made from.
fn record_name(record: &serde_json::Value) -> Option<OsString> {
    record["file"].as_str().and_then(|f| Path::new(f).file_name()).map(ToOwned::to_owned)
}

/// A watch under way.
struct Session<'w, 'r, 's> {
    watch: &'w Watch,
    runner: &'r mut Runner<'s>,
    observer: &'w dyn WatchObserver,
    results: File,
    results_path: PathBuf,
    readiness: Readiness,
    /// Per input file, its latest outcome: a file written again under the same name is
    /// analysed again and counted once, as its outputs are.
    outcomes: BTreeMap<PathBuf, FileOutcome>,
}

/// What became of one input file.
enum FileOutcome {
    /// Finished by an earlier watch of the same folder.
    Resumed(Scored),
    Analysed(Scored),
    Failed,
}

impl Session<'_, '_, '_> {
    fn folder(&self) -> &Path {
        &self.watch.spec.folder
    }

    /// The loop: wait for changes (or the next listing), look at the candidates, analyse
    /// those that are ready; until something ends it.
    fn watch(&mut self, source: &mut Source, stop: &AtomicBool) -> WatchEnd {
        let mut next_listing = Instant::now();
        loop {
            if stop.load(Ordering::SeqCst) {
                return WatchEnd::Stopped;
            }
            let now = Instant::now();
            let mut relist = now >= next_listing;
            if !relist {
                let due = self.readiness.next_due().map_or(TICK, |due| due.saturating_duration_since(now));
                // At least a little: a candidate that cannot be looked at stays due.
                for change in source.wait(due.min(TICK).min(next_listing - now).max(Duration::from_millis(5))) {
                    match change {
                        Change::File(path) => self.look(&path),
                        Change::Relist => relist = true,
                        Change::Gone(how) => return self.gone(how),
                        Change::Failed(reason) => {
                            self.observer.message(&format!(
                                "warning: file events for {} failed ({reason}): listing it every {} ms instead",
                                self.folder().display(),
                                self.watch.spec.poll_interval.as_millis()
                            ));
                            *source = Source::Polling;
                            relist = true;
                        }
                    }
                }
            }
            if relist {
                if let Err(end) = self.relist() {
                    return end;
                }
                next_listing = Instant::now() + source.listing_interval(&self.watch.spec);
            } else if !self.folder().is_dir() {
                return self.gone("was deleted or moved");
            }
            for path in self.readiness.pending() {
                self.look(&path);
            }
            for path in self.readiness.take_ready() {
                if stop.load(Ordering::SeqCst) {
                    return WatchEnd::Stopped;
                }
                if let Err(end) = self.take(&path) {
                    return end;
                }
            }
        }
    }

    fn gone(&self, how: &str) -> WatchEnd {
        WatchEnd::FolderGone(format!("the watched folder {} {how}: stopped", self.folder().display()))
    }

    /// Tells the readiness what `path` looks like now.
    fn look(&mut self, path: &Path) {
        if !is_input_name(path) {
            return;
        }
        let stamp = match std::fs::metadata(path) {
            Ok(metadata) if metadata.is_file() => Some(Stamp::of(&metadata)),
            Ok(_) => None,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            // Cannot tell now: look again later.
            Err(_) => return,
        };
        self.readiness.observe(path, stamp, Instant::now());
    }

    /// Lists the folder: every image in it is looked at, files no longer there forgotten.
    fn relist(&mut self) -> Result<(), WatchEnd> {
        let files = list(self.folder()).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => self.gone("was deleted or moved"),
            _ => self.gone(&format!("cannot be listed ({e})")),
        })?;
        for path in &files {
            self.look(path);
        }
        self.readiness.retain(&files.into_iter().collect());
        Ok(())
    }

    /// Analyses the ready file `path`, adds its line to `results.jsonl` and moves it
    /// into the `--done` folder; a file that fails is named and the watch goes on.
    fn take(&mut self, path: &Path) -> Result<(), WatchEnd> {
        let image = inputs::in_folder(self.folder(), path);
        let outputs = Outputs::of(&self.runner.spec().out, &image);
        // `a.jpg` after `a.png` would overwrite its outputs: the record names its file.
        let owner = outputs.finished().ok().flatten().and_then(|record| record_name(&record));
        if let Some(owner) = owner.filter(|owner| Some(owner.as_os_str()) != path.file_name()) {
            let reason = format!(
                "its outputs ({}) would replace those of {}: rename it",
                outputs.record.with_extension("*").display(),
                owner.to_string_lossy()
            );
            return self.failed(path, &reason);
        }
        self.observer.image_started(&image);
        match self.runner.process(&image, &self.watch.class, &outputs, self.observer) {
            Ok((scored, record)) => {
                // Its outputs are complete (a restarted watch keeps them) even if its line cannot be written.
                self.observer.analysed(&image, &scored, &record);
                self.outcomes.insert(path.to_owned(), FileOutcome::Analysed(scored));
                self.append(&record)?;
                self.move_done(path);
                Ok(())
            }
            Err(e) if e.output_io_error().is_some() => {
                self.outcomes.insert(path.to_owned(), FileOutcome::Failed);
                Err(WatchEnd::OutputFailed(Box::new(e)))
            }
            Err(e) => self.failed(path, &e.to_string()),
        }
    }

    /// `path` failed: named, counted, and given its line.
    fn failed(&mut self, path: &Path, reason: &str) -> Result<(), WatchEnd> {
        #[derive(Serialize)]
        struct Failure<'a> {
            file: String,
            error: &'a str,
        }
        self.outcomes.insert(path.to_owned(), FileOutcome::Failed);
        self.observer.failed(path, reason);
        let line = serde_json::to_string(&Failure { file: path.display().to_string(), error: reason })
            .map_err(|e| WatchEnd::OutputFailed(Box::new(BatchError::Invalid(e.to_string()))))?;
        self.append(&line)
    }

    /// Appends `line` to `results.jsonl` in one write (the file is opened for appending,
    /// so lines of concurrent writers do not mix).
    fn append(&mut self, line: &str) -> Result<(), WatchEnd> {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.results
            .write_all(&bytes)
            .and_then(|()| self.results.sync_data())
            .map_err(|e| WatchEnd::OutputFailed(Box::new(BatchError::write(&self.results_path, e))))
    }

    /// Moves an analysed input into the `--done` folder; a failure is named and the
    /// file stays where it is.
    fn move_done(&mut self, path: &Path) {
        let Some(done) = &self.watch.spec.done else { return };
        if let Err(e) = move_into(path, done) {
            self.observer.message(&format!(
                "warning: cannot move {} into {}: {e}; it stays in the watched folder",
                path.display(),
                done.display()
            ));
        }
    }
}

/// Moves `file` into `dir` under its own name, or `name-2.ext`, `name-3.ext`, ... when
/// that is taken (never over another file); across file systems by a copy, flushed to
/// disk and renamed into place, before the original is removed.
pub fn move_into(file: &Path, dir: &Path) -> std::io::Result<PathBuf> {
    let name = file.file_name().ok_or_else(|| std::io::Error::other("not a file name"))?;
    let stem = Path::new(name).file_stem().unwrap_or(name).to_string_lossy().into_owned();
    let extension = Path::new(name).extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    let mut target = dir.join(name);
    let mut n = 1;
    while target.symlink_metadata().is_ok() {
        n += 1;
        target = dir.join(format!("{stem}-{n}{extension}"));
    }
    match std::fs::rename(file, &target) {
        Ok(()) => Ok(target),
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
            let mut copy = tempfile::Builder::new().prefix(".alfa-").suffix(".partial").tempfile_in(dir)?;
            std::io::copy(&mut File::open(file)?, copy.as_file_mut())?;
            copy.as_file().sync_all()?;
            copy.persist_noclobber(&target).map_err(|e| e.error)?;
            std::fs::remove_file(file)?;
            Ok(target)
        }
        Err(e) => Err(e),
    }
}

/// What the folder's watcher reports.
#[derive(Debug)]
enum Change {
    /// Something happened to this file.
    File(PathBuf),
    /// Events were lost: list the folder.
    Relist,
    /// The folder went (how).
    Gone(&'static str),
    /// File events stopped working.
    Failed(String),
}

/// File events where the system has them, else the folder's listing every poll interval.
enum Source {
    #[cfg(target_os = "linux")]
    Events(events::Events),
    Polling,
}

impl Source {
    fn start(spec: &WatchSpec, observer: &dyn Observer) -> Self {
        if spec.force_polling {
            return Source::Polling;
        }
        #[cfg(target_os = "linux")]
        match events::Events::start(&spec.folder) {
            Ok(events) => return Source::Events(events),
            Err(e) => observer.message(&format!(
                "note: no file events for {} ({e}): listing it every {} ms instead",
                spec.folder.display(),
                spec.poll_interval.as_millis()
            )),
        }
        #[cfg(not(target_os = "linux"))]
        let _ = observer;
        Source::Polling
    }

    fn describe(&self, spec: &WatchSpec) -> String {
        let how = match self {
            #[cfg(target_os = "linux")]
            Source::Events(_) => "file events".to_owned(),
            Source::Polling => format!("listed every {} ms", spec.poll_interval.as_millis()),
        };
        format!("{how}; a file is taken once unchanged for {} ms", spec.settle.as_millis())
    }

    /// How long until the folder is listed again.
    fn listing_interval(&self, spec: &WatchSpec) -> Duration {
        match self {
            #[cfg(target_os = "linux")]
            Source::Events(_) => RESCAN.max(spec.poll_interval),
            Source::Polling => spec.poll_interval,
        }
    }

    /// The changes within `timeout` (none when polling: it waits the time out).
    fn wait(&self, timeout: Duration) -> Vec<Change> {
        match self {
            #[cfg(target_os = "linux")]
            Source::Events(events) => events.wait(timeout),
            Source::Polling => {
                std::thread::sleep(timeout);
                Vec::new()
            }
        }
    }
}

/// inotify: a thread reads the folder's events and sends them over a channel.
#[cfg(target_os = "linux")]
mod events {
    use std::path::Path;
    use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
    use std::time::Duration;

    use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};

    use super::Change;

    pub struct Events {
        receiver: Receiver<Change>,
        watches: Watches,
        descriptor: WatchDescriptor,
    }

    impl Events {
        pub fn start(folder: &Path) -> std::io::Result<Self> {
            let inotify = Inotify::init()?;
            let mut watches = inotify.watches();
            let mask = WatchMask::CREATE
                | WatchMask::MODIFY
                | WatchMask::CLOSE_WRITE
                | WatchMask::ATTRIB
                | WatchMask::MOVED_TO
                | WatchMask::MOVED_FROM
                | WatchMask::DELETE
                | WatchMask::DELETE_SELF
                | WatchMask::MOVE_SELF
                | WatchMask::ONLYDIR;
            let descriptor = watches.add(folder, mask)?;
            let (sender, receiver) = mpsc::channel();
            let folder = folder.to_owned();
            std::thread::Builder::new().name("alfa-watch-events".into()).spawn(move || read(inotify, &folder, &sender))?;
            Ok(Self { receiver, watches, descriptor })
        }

        /// Waits up to `timeout` for a change, then takes every change queued.
        pub fn wait(&self, timeout: Duration) -> Vec<Change> {
            let first = match self.receiver.recv_timeout(timeout) {
                Ok(change) => change,
                Err(RecvTimeoutError::Timeout) => return Vec::new(),
                Err(RecvTimeoutError::Disconnected) => return vec![Change::Failed("the event reader ended".into())],
            };
            let mut changes = vec![first];
            changes.extend(self.receiver.try_iter());
            changes
        }
    }

    impl Drop for Events {
        /// Removing the watch queues IN_IGNORED, which ends the reading thread.
        fn drop(&mut self) {
            let _ = self.watches.remove(self.descriptor.clone());
        }
    }

    fn read(mut inotify: Inotify, folder: &Path, sender: &Sender<Change>) {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            let events = match inotify.read_events_blocking(&mut buffer) {
                Ok(events) => events,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = sender.send(Change::Failed(e.to_string()));
                    return;
                }
            };
            let mut ended = false;
            for event in events {
                let change = if event.mask.contains(EventMask::Q_OVERFLOW) {
                    Change::Relist
                } else if event.mask.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF) {
                    Change::Gone("was deleted or moved")
                } else if event.mask.contains(EventMask::UNMOUNT) {
                    Change::Gone("was unmounted")
                } else if event.mask.contains(EventMask::IGNORED) {
                    // The watch is gone (removed, or its folder deleted): nothing more comes.
                    ended = true;
                    continue;
                } else if let Some(name) = event.name {
                    Change::File(folder.join(name))
                } else {
                    continue;
                };
                if sender.send(change).is_err() {
                    return;
                }
            }
            if ended {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(size: u64, modified: u64) -> Option<Stamp> {
        Some(Stamp { size, modified: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(modified)), changed: None })
    }

    const SETTLE: Duration = Duration::from_millis(500);

    /// A fake clock: `ms(n)` is `n` milliseconds after the test's start.
    fn clock() -> impl Fn(u64) -> Instant {
        let start = Instant::now();
        move |n| start + Duration::from_millis(n)
    }

    #[test]
    fn a_file_that_stays_the_same_for_the_settle_time_is_taken_once() {
        let (ms, mut r) = (clock(), Readiness::new(SETTLE));
        let file = Path::new("in/a.png");
        r.observe(file, stamp(100, 1), ms(0));
        assert_eq!(r.next_due(), Some(ms(500)));
        r.observe(file, stamp(100, 1), ms(499));
        assert!(r.take_ready().is_empty(), "not yet settled");
        r.observe(file, stamp(100, 1), ms(500));
        assert_eq!(r.take_ready(), [file]);
        // Unchanged: never again; changed: again, after settling.
        r.observe(file, stamp(100, 1), ms(2000));
        assert!(r.take_ready().is_empty() && r.pending().is_empty());
        r.observe(file, stamp(120, 2), ms(3000));
        r.observe(file, stamp(120, 2), ms(3600));
        assert_eq!(r.take_ready(), [file]);
    }

    #[test]
    fn a_slow_writer_is_waited_for_and_empty_files_are_not_taken() {
        let (ms, mut r) = (clock(), Readiness::new(SETTLE));
        let (slow, empty) = (Path::new("in/slow.png"), Path::new("in/empty.png"));
        // Half written, a pause shorter than the settle time, then the rest.
        r.observe(slow, stamp(50, 1), ms(0));
        r.observe(empty, stamp(0, 1), ms(0));
        r.observe(slow, stamp(50, 1), ms(300));
        assert!(r.take_ready().is_empty());
        r.observe(slow, stamp(100, 2), ms(400));
        r.observe(slow, stamp(100, 2), ms(800));
        assert!(r.take_ready().is_empty(), "the clock starts again at the change");
        assert_eq!(r.next_due(), Some(ms(900)), "empty files are not due");
        r.observe(slow, stamp(100, 2), ms(900));
        r.observe(empty, stamp(0, 1), ms(5000));
        assert_eq!(r.take_ready(), [slow]);
        assert_eq!(r.pending(), [empty]);
        r.observe(empty, stamp(10, 6), ms(6000));
        r.observe(empty, stamp(10, 6), ms(6500));
        assert_eq!(r.take_ready(), [empty]);
    }

    #[test]
    fn a_file_that_goes_is_forgotten_and_one_of_its_name_is_new() {
        let (ms, mut r) = (clock(), Readiness::new(SETTLE));
        let (a, b) = (PathBuf::from("in/a.png"), PathBuf::from("in/b.png"));
        r.mark_taken(&a, stamp(10, 1).unwrap());
        r.observe(&a, stamp(10, 1), ms(0));
        r.observe(&b, stamp(10, 1), ms(0));
        assert_eq!(r.pending(), [b.as_path()], "finished earlier: not a candidate");
        r.retain(&HashSet::from([a.clone()]));
        assert!(r.pending().is_empty(), "b left the folder");
        r.observe(&a, None, ms(100));
        r.observe(&a, stamp(10, 1), ms(200));
        r.observe(&a, stamp(10, 1), ms(700));
        assert_eq!(r.take_ready(), [a], "the same stamp again, but a new file");
    }

    #[test]
    fn writers_temporary_names_are_not_inputs() {
        for name in ["a.png", "A.JPG", "sub/b.tiff"] {
            assert!(is_input_name(Path::new(name)), "{name}");
        }
        for name in ["a.png.part", "a.tmp", "a.png~", ".a.png", "a.png.crdownload", ".alfa-x.partial", "notes.txt"] {
            assert!(!is_input_name(Path::new(name)), "{name}");
        }
    }

    #[test]
    fn moves_never_replace_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("in"), dir.path().join("done"));
        std::fs::create_dir_all(&from).unwrap();
        std::fs::create_dir_all(&to).unwrap();
        std::fs::write(to.join("a.png"), b"earlier").unwrap();
        std::fs::write(from.join("a.png"), b"now").unwrap();
        let moved = move_into(&from.join("a.png"), &to).unwrap();
        assert_eq!(moved, to.join("a-2.png"));
        assert_eq!(std::fs::read(to.join("a.png")).unwrap(), b"earlier");
        assert_eq!(std::fs::read(moved).unwrap(), b"now");
        assert!(!from.join("a.png").exists());
        assert!(move_into(&from.join("gone.png"), &to).is_err());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn moves_across_file_systems_copy_then_remove() {
        use std::os::unix::fs::MetadataExt;
        let Ok(from) = tempfile::tempdir_in("/dev/shm") else { return };
        let to = tempfile::tempdir().unwrap();
        if std::fs::metadata(from.path()).unwrap().dev() == std::fs::metadata(to.path()).unwrap().dev() {
            return; // one file system here: the rename above covers it
        }
        std::fs::write(from.path().join("a.png"), b"bytes").unwrap();
        let moved = move_into(&from.path().join("a.png"), to.path()).unwrap();
        assert_eq!(std::fs::read(&moved).unwrap(), b"bytes");
        assert!(!from.path().join("a.png").exists());
        let left: Vec<_> = std::fs::read_dir(to.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["a.png"], "no temporary file left");
    }

    #[test]
    fn only_errors_writing_outputs_stop_the_watch() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let map = crate::detect::maps::Grid::new(1, 1, vec![0.5]);
        let export = crate::detect::export::write_map_tiff(&file.join("map.tiff"), &map).unwrap_err();
        assert!(BatchError::from(export).output_io_error().is_some());
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert!(BatchError::write(&dir.path().join("a.json"), full).output_io_error().is_some());
        let unreadable = crate::clip::open_image(&dir.path().join("missing.png")).unwrap_err();
        assert!(BatchError::from(unreadable).output_io_error().is_none());
        assert!(BatchError::io(&file, "no `path` column").output_io_error().is_none());
    }
}
