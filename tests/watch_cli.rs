//! `alfa watch` as a service runs it: a child process watching a folder while the test
//! drops images into it (the tiny fixture model), then Ctrl-C.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{fixtures, shared_tokenizer};
use image::{Rgb, RgbImage};

const PATIENCE: Duration = Duration::from_secs(60);

/// A running `alfa watch IN --out OUT ...`, its stderr collected as it comes.
struct Watcher {
    child: Child,
    stderr: Arc<Mutex<String>>,
    out: PathBuf,
}

impl Watcher {
    fn start(input: &Path, out: &Path, extra: &[&str]) -> Self {
        let cache = out.with_extension("cache");
        let mut child = Command::new(env!("CARGO_BIN_EXE_alfa"))
            .args(["watch", input.to_str().unwrap(), "--class", "bottle", "--out", out.to_str().unwrap()])
            .args(extra)
            .args(["--model", fixtures().join("tiny-gelu").to_str().unwrap()])
            .args(["--tokenizer", shared_tokenizer().to_str().unwrap()])
            .env("XDG_CACHE_HOME", &cache)
            // Never the user's own recipes.
            .env("ALFA_RECIPES", cache.join("recipes"))
            .env("HF_HUB_OFFLINE", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        Self { child, stderr, out: out.to_owned() }
    }

    /// Started and watching (the model is loaded).
    fn started(input: &Path, out: &Path, extra: &[&str]) -> Self {
        let watcher = Self::start(input, out, extra);
        watcher.wait_for("watching", |log| log.contains("watching "));
        watcher
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) {
        let start = Instant::now();
        while !done(&self.log()) {
            assert!(start.elapsed() < PATIENCE, "no {what} in {PATIENCE:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn results(&self) -> Vec<serde_json::Value> {
        results(&self.out)
    }

    /// Waits for `n` lines in results.jsonl.
    fn wait_results(&self, n: usize) -> Vec<serde_json::Value> {
        let start = Instant::now();
        loop {
            let results = self.results();
            if results.len() >= n {
                return results;
            }
            assert!(start.elapsed() < PATIENCE, "{} of {n} results in {PATIENCE:?}:\n{}", results.len(), self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to end by itself.
    fn wait(mut self) -> (ExitStatus, String) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The reader thread drains what is left.
                std::thread::sleep(Duration::from_millis(100));
                return (status, self.log());
            }
            if start.elapsed() > PATIENCE {
                let _ = self.child.kill();
                panic!("the watcher did not stop:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ctrl-C, then waits for the process to end.
    fn interrupt(self) -> (ExitStatus, String) {
        let killed = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status().unwrap();
        assert!(killed.success());
        self.wait()
    }
}

/// A textured part of `w` x `h` pixels as PNG bytes.
fn png(w: u32, h: u32, phase: u32) -> Vec<u8> {
    let image = RgbImage::from_fn(w, h, |x, y| {
        let v = if ((x + phase) / 4 + y / 4).is_multiple_of(2) { 70 } else { 150 };
        Rgb([v, v / 2 + 40, 200 - v / 2])
    });
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
    bytes.into_inner()
}

/// Writes `bytes` outside the folder and renames it in, as careful writers do.
fn drop_in(dir: &Path, name: &str, bytes: &[u8]) {
    let staging = dir.parent().unwrap().join(format!("staging-{name}"));
    std::fs::write(&staging, bytes).unwrap();
    std::fs::rename(&staging, dir.join(name)).unwrap();
}

/// The lines of `out/results.jsonl`, each a JSON object.
fn results(out: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(out.join("results.jsonl")).unwrap_or_default();
    text.lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert!(value.is_object(), "{line}");
            value
        })
        .collect()
}

fn file_names(results: &[serde_json::Value]) -> Vec<String> {
    let mut names: Vec<String> =
        results.iter().map(|r| Path::new(r["file"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn folders() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::create_dir(&input).unwrap();
    (dir, input, out)
}

#[test]
fn images_there_at_the_start_and_renamed_in_are_analysed_once_and_ctrl_c_writes_the_summary() {
    let (_dir, input, out) = folders();
    std::fs::write(input.join("early.png"), png(40, 40, 0)).unwrap();
    let watcher = Watcher::start(&input, &out, &["--settle-ms", "300", "--threshold", "1000"]);
    watcher.wait_results(1);
    drop_in(&input, "renamed.png", &png(40, 40, 1));
    // A writer's temporary name waits until it is renamed.
    std::fs::write(input.join("later.png.part"), png(40, 40, 2)).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(file_names(&watcher.wait_results(2)), ["early.png", "renamed.png"], "{}", watcher.log());
    std::fs::rename(input.join("later.png.part"), input.join("later.png")).unwrap();
    watcher.wait_results(3);
    // Nothing is taken twice, however long it stays.
    std::thread::sleep(Duration::from_millis(1000));
    let log = watcher.log();
    let (status, log_after) = watcher.interrupt();
    assert_eq!(status.code(), Some(130), "{log_after}");
    let results = results(&out);
    assert_eq!(file_names(&results), ["early.png", "later.png", "renamed.png"], "{log}");
    for record in &results {
        assert_eq!(record["verdict"], "OK", "{record}");
        assert!(record["image_score"].is_number() && record["map"].is_string(), "{record}");
    }
    for name in ["early", "renamed", "later"] {
        assert!(log.lines().any(|l| l.starts_with("OK ") && l.ends_with(&format!(" {name}.png"))), "{log}");
        assert!(out.join(format!("{name}.tiff")).is_file() && out.join(format!("{name}_overlay.png")).is_file());
    }
    let summary = json(&out.join("summary.json"));
    assert_eq!((summary["analysed"].as_u64(), summary["ok"].as_u64(), summary["failed"].as_u64()), (Some(3), Some(3), Some(0)));
    assert_eq!(summary["interrupted"], true);
    assert_eq!(std::fs::read_to_string(out.join("scores.csv")).unwrap().lines().count(), 4);
    assert!(log_after.contains("stopped watching"), "{log_after}");
}

/// Half of a PNG, a pause longer than a listing interval and shorter than the settle
/// time, then the rest: a watcher that took the file when it first saw it would read a
/// cut PNG and report an error line (then a second line once the file changed).
fn slowly_written_image_is_taken_once_complete(extra: &[&str]) {
    let (_dir, input, out) = folders();
    let watcher = Watcher::started(&input, &out, &[&["--settle-ms", "1500"], extra].concat());
    let bytes = png(64, 48, 3);
    let mut file = std::fs::File::create(input.join("slow.png")).unwrap();
    file.write_all(&bytes[..bytes.len() / 2]).unwrap();
    file.flush().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    file.write_all(&bytes[bytes.len() / 2..]).unwrap();
    drop(file);
    let first = watcher.wait_results(1);
    std::thread::sleep(Duration::from_millis(1800));
    let (status, log) = watcher.interrupt();
    assert_eq!(status.code(), Some(130), "{log}");
    let results_after = results(&out);
    let lines: Vec<_> = results_after.iter().map(|r| (r["file"].clone(), r.get("error").cloned())).collect();
    assert_eq!(results_after.len(), 1, "taken once: {lines:?}\n{log}");
    assert!(first[0].get("error").is_none(), "{}", first[0]);
    let map = alfa::detect::export::read_map_tiff(&out.join("slow.tiff")).unwrap();
    let size = (map.width, map.height);
    assert_eq!(size, (64, 48), "the map has the whole image's size");
}

#[test]
fn a_slowly_written_image_is_taken_once_complete() {
    slowly_written_image_is_taken_once_complete(&[]);
}

#[test]
fn polling_takes_a_slowly_written_image_once_complete() {
    slowly_written_image_is_taken_once_complete(&["--poll", "--poll-ms", "100"]);
}

#[test]
fn polling_takes_images_there_at_the_start_and_renamed_in() {
    let (_dir, input, out) = folders();
    std::fs::write(input.join("early.png"), png(40, 40, 0)).unwrap();
    let watcher = Watcher::start(&input, &out, &["--poll", "--poll-ms", "100", "--settle-ms", "200"]);
    watcher.wait_results(1);
    assert!(watcher.log().contains("listed every 100 ms"), "{}", watcher.log());
    drop_in(&input, "renamed.png", &png(40, 40, 1));
    let results = watcher.wait_results(2);
    assert_eq!(file_names(&results), ["early.png", "renamed.png"]);
    let (status, log) = watcher.interrupt();
    assert_eq!(status.code(), Some(130), "{log}");
}

#[test]
fn a_broken_file_is_named_and_the_watch_goes_on() {
    let (_dir, input, out) = folders();
    let watcher = Watcher::started(&input, &out, &["--settle-ms", "200"]);
    drop_in(&input, "broken.png", b"not a png");
    watcher.wait_for("the broken file named", |log| log.contains("error broken.png"));
    drop_in(&input, "good.png", &png(40, 40, 0));
    let results = watcher.wait_results(2);
    assert_eq!(results[0]["file"].as_str().map(|f| f.ends_with("broken.png")), Some(true), "{results:?}");
    assert!(results[0]["error"].is_string(), "{}", results[0]);
    assert!(results[1]["image_score"].is_number(), "{}", results[1]);
    // `good.jpg` would replace the outputs of `good.png` (`good.tiff`, ...): refused.
    drop_in(&input, "good.jpg", &png(40, 40, 2));
    watcher.wait_for("the clash named", |log| log.contains("error good.jpg"));
    let results = watcher.wait_results(3);
    assert!(results[2]["error"].as_str().is_some_and(|e| e.contains("good.png")), "{}", results[2]);
    // Not taken again while it stays as it is; taken again once it changes.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(watcher.results().len(), 3, "{}", watcher.log());
    drop_in(&input, "broken.png", &png(40, 40, 1));
    let results = watcher.wait_results(4);
    assert!(results[3]["file"].as_str().unwrap().ends_with("broken.png") && results[3]["image_score"].is_number(), "{}", results[3]);

    // A file that cannot be opened (not when running as root, who opens anything).
    let mut unreadable = 0;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let locked = input.parent().unwrap().join("locked.png");
        std::fs::write(&locked, png(40, 40, 2)).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        if std::fs::read(&locked).is_err() {
            std::fs::rename(&locked, input.join("locked.png")).unwrap();
            watcher.wait_for("the unreadable file named", |log| log.contains("error locked.png"));
            assert!(watcher.log().to_lowercase().contains("permission denied"), "{}", watcher.log());
            unreadable = 1;
        }
    }
    let (status, log) = watcher.interrupt();
    assert_eq!(status.code(), Some(130), "{log}");
    let summary = json(&out.join("summary.json"));
    // Each file counted once, by its latest outcome: broken.png failed, then was analysed.
    let counts = ["images", "analysed", "failed"].map(|k| summary[k].as_u64().unwrap());
    assert_eq!(counts, [3 + unreadable, 2, 1 + unreadable], "{summary}");
}

#[test]
fn done_moves_analysed_inputs_and_nothing_is_deleted() {
    let (dir, input, out) = folders();
    let done = dir.path().join("done");
    std::fs::create_dir(&done).unwrap();
    std::fs::write(done.join("a.png"), b"an earlier a.png").unwrap();
    let (a, b) = (png(40, 40, 0), png(40, 40, 1));
    std::fs::write(input.join("a.png"), &a).unwrap();
    let watcher = Watcher::start(&input, &out, &["--settle-ms", "200", "--done", done.to_str().unwrap()]);
    watcher.wait_results(1);
    drop_in(&input, "b.png", &b);
    drop_in(&input, "broken.png", b"not a png");
    watcher.wait_results(3);
    let start = Instant::now();
    while input.join("b.png").exists() {
        assert!(start.elapsed() < PATIENCE);
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, log) = watcher.interrupt();
    assert_eq!(status.code(), Some(130), "{log}");
    assert_eq!(std::fs::read(done.join("a.png")).unwrap(), b"an earlier a.png", "never over another file");
    assert_eq!(std::fs::read(done.join("a-2.png")).unwrap(), a);
    assert_eq!(std::fs::read(done.join("b.png")).unwrap(), b);
    assert_eq!(std::fs::read(input.join("broken.png")).unwrap(), b"not a png", "a failed input stays");
    assert!(!input.join("a.png").exists() && !input.join("b.png").exists());
}

#[test]
fn a_restarted_watch_continues_where_it_stopped() {
    let (_dir, input, out) = folders();
    std::fs::write(input.join("a.png"), png(40, 40, 0)).unwrap();
    let first = Watcher::start(&input, &out, &["--settle-ms", "200"]);
    first.wait_results(1);
    assert_eq!(first.interrupt().0.code(), Some(130));
    std::fs::write(input.join("b.png"), png(40, 40, 1)).unwrap();
    let second = Watcher::start(&input, &out, &["--settle-ms", "200"]);
    let results = second.wait_results(2);
    std::thread::sleep(Duration::from_millis(500));
    let (status, log) = second.interrupt();
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(log.contains("1 image(s) in") && log.contains("finished by an earlier run"), "{log}");
    assert_eq!(file_names(&results), ["a.png", "b.png"]);
    let summary = json(&out.join("summary.json"));
    assert_eq!((summary["resumed"].as_u64(), summary["analysed"].as_u64()), (Some(1), Some(1)), "{summary}");
}

#[test]
fn the_folder_disappearing_stops_the_watch_cleanly() {
    let (_dir, input, out) = folders();
    let watcher = Watcher::started(&input, &out, &["--settle-ms", "200"]);
    std::fs::remove_dir(&input).unwrap();
    let (status, log) = watcher.wait();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains(&format!("the watched folder {} was deleted or moved", input.display())), "{log}");
    assert!(out.join("summary.json").is_file());
}

#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_stops_the_watch_cleanly_and_keeps_the_input() {
    let (_dir, input, out) = folders();
    // Writes to /dev/full fail with ENOSPC, as on a full disk.
    std::fs::create_dir(&out).unwrap();
    std::os::unix::fs::symlink("/dev/full", out.join("results.jsonl")).unwrap();
    let watcher = Watcher::started(&input, &out, &["--settle-ms", "200"]);
    let bytes = png(40, 40, 0);
    drop_in(&input, "a.png", &bytes);
    let (status, log) = watcher.wait();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("results.jsonl") && log.contains("No space left on device"), "{log}");
    assert_eq!(std::fs::read(input.join("a.png")).unwrap(), bytes, "the input stays");
}

#[test]
fn an_image_written_again_is_analysed_again_and_counted_once() {
    let (_dir, input, out) = folders();
    let watcher = Watcher::started(&input, &out, &["--settle-ms", "200", "--threshold", "1000"]);
    drop_in(&input, "frame.png", &png(40, 40, 0));
    watcher.wait_results(1);
    // The camera writes the next frame under the same name.
    drop_in(&input, "frame.png", &png(40, 40, 3));
    let results = watcher.wait_results(2);
    assert_eq!(file_names(&results), ["frame.png", "frame.png"], "{}", watcher.log());
    let (status, log) = watcher.interrupt();
    assert_eq!(status.code(), Some(130), "{log}");
    let summary = json(&out.join("summary.json"));
    let counts = ["images", "analysed", "ok", "failed"].map(|k| summary[k].as_u64().unwrap());
    assert_eq!(counts, [1, 1, 1, 0], "one image, its latest analysis: {summary}");
    assert_eq!(std::fs::read_to_string(out.join("scores.csv")).unwrap().lines().count(), 2, "a header and one row");
}
