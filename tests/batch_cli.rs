//! `alfa detect` as a line runs it: OK/NG verdicts and exit codes, resuming an
//! interrupted run, Ctrl-C, and shards on several processes (the tiny fixture model).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{fixtures, shared_tokenizer};
use image::{GrayImage, Luma, Rgb, RgbImage};

fn alfa(args: &[&str], cache: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_alfa"));
    command
        .args(args)
        .args(["--model", fixtures().join("tiny-gelu").to_str().unwrap()])
        .args(["--tokenizer", shared_tokenizer().to_str().unwrap()])
        .env("XDG_CACHE_HOME", cache)
        // Never the user's own recipes.
        .env("ALFA_RECIPES", cache.join("recipes"))
        .env("HF_HUB_OFFLINE", "1");
    command
}

fn run(args: &[&str], cache: &Path) -> Output {
    alfa(args, cache).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A textured 40x40 part; `defect` puts a bright 9x9 square at that corner.
fn part(defect: Option<(u32, u32)>, phase: u32) -> RgbImage {
    common::textured_part(40, 9, defect, phase)
}

fn save(image: &RgbImage, path: &Path) {
    common::save_png(image, path);
}

/// `n` images in `dir`, every third with a defect.
fn images(dir: &Path, n: u32) {
    for i in 0..n {
        let defect = (i % 3 == 2).then_some((4 + (i * 7) % 24, 6 + (i * 5) % 22));
        save(&part(defect, i), &dir.join(format!("{i:03}.png")));
    }
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

#[test]
fn verdicts_go_into_records_scores_and_overlays_and_the_exit_code_tells_them_apart() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    images(&input, 4);
    let cache = dir.path().join("cache");
    let out = dir.path().join("out");
    let o = out.to_str().unwrap();
    let i = input.to_str().unwrap();

    // No threshold: no verdicts, exit 0.
    let plain = run(&["detect", "--class", "bottle", "--out", o, i], &cache);
    assert_eq!(plain.status.code(), Some(0), "{}", stderr(&plain));
    assert!(stderr(&plain).contains("4 image(s): 4 analysed, 0 failed"), "{}", stderr(&plain));
    let scores: Vec<f64> = (0..4).map(|k| json(&out.join(format!("{k:03}.json")))["image_score"].as_f64().unwrap()).collect();
    assert!(json(&out.join("000.json")).get("verdict").is_none());

    // A threshold between the scores: some OK, some NG, exit 3.
    let mut sorted = scores.clone();
    sorted.sort_by(f64::total_cmp);
    let middle = ((sorted[1] + sorted[2]) / 2.0).to_string();
    let mixed = run(&["detect", "--class", "bottle", "--threshold", &middle, "--region-threshold", "0.5", "--force", "--report", "--out", o, i], &cache);
    assert_eq!(mixed.status.code(), Some(3), "{}", stderr(&mixed));
    // The page links every overlay beside it and fetches nothing.
    let page = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!((0..4).all(|k| page.contains(&format!("\"{k:03}_overlay.png\""))), "overlays linked relatively");
    assert!(!page.contains("http://") && !page.contains("https://"));
    assert!(page.contains("--threshold on the command line"), "how the threshold was set");
    assert!(stderr(&mixed).contains("4 image(s): 2 OK, 2 NG, 0 failed"), "{}", stderr(&mixed));
    let csv = std::fs::read_to_string(out.join("scores.csv")).unwrap();
    assert!(csv.starts_with("path,score,verdict\n"), "{csv}");
    for (k, score) in scores.iter().enumerate() {
        let record = json(&out.join(format!("{k:03}.json")));
        let expected = if *score >= middle.parse::<f64>().unwrap() { "NG" } else { "OK" };
        assert_eq!(record["verdict"], expected, "{k}");
        assert_eq!(record["threshold"].as_f64().unwrap() as f32, middle.parse::<f32>().unwrap());
        assert!(csv.contains(&format!("{k:03}.tiff,{},{expected}\n", record["image_score"].as_f64().unwrap() as f32)), "{csv}");
        // The badge in the overlay's top-right corner: green OK, red NG.
        let overlay = image::open(out.join(format!("{k:03}_overlay.png"))).unwrap().to_rgb8();
        let badge = *overlay.get_pixel(overlay.width() - 6, 4);
        let want = if expected == "NG" { Rgb([200, 30, 30]) } else { Rgb([0, 140, 60]) };
        assert_eq!(badge, want, "{k} {expected}");
    }
    let summary = json(&out.join("summary.json"));
    assert_eq!((summary["ok"].as_u64(), summary["ng"].as_u64(), summary["failed"].as_u64()), (Some(2), Some(2), Some(0)));
    assert_eq!(summary["decision"]["image"].as_f64().unwrap() as f32, middle.parse::<f32>().unwrap());

    // All OK: exit 0; a file that cannot be read: 4 (and 5 with NG images beside it).
    let high = run(&["detect", "--class", "bottle", "--threshold", "1000", "--force", "--out", o, i], &cache);
    assert_eq!(high.status.code(), Some(0), "{}", stderr(&high));
    std::fs::write(input.join("broken.png"), b"not a png").unwrap();
    let failed = run(&["detect", "--class", "bottle", "--threshold", "1000", "--force", "--out", o, i], &cache);
    assert_eq!(failed.status.code(), Some(4), "{}", stderr(&failed));
    assert!(stderr(&failed).contains("broken.png"), "{}", stderr(&failed));
    let both = run(&["detect", "--class", "bottle", "--threshold", &middle, "--force", "--out", o, i], &cache);
    assert_eq!(both.status.code(), Some(5), "{}", stderr(&both));
    assert!(stderr(&both).contains("5 image(s): 2 OK, 2 NG, 1 failed"), "{}", stderr(&both));
}

#[test]
fn resume_analyses_only_what_an_earlier_run_left_and_refuses_other_settings() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    images(&input, 6);
    let cache = dir.path().join("cache");
    let (whole, cut) = (dir.path().join("whole"), dir.path().join("cut"));
    let i = input.to_str().unwrap();
    for out in [&whole, &cut] {
        let done = run(&["detect", "--class", "bottle", "--out", out.to_str().unwrap(), i], &cache);
        assert!(done.status.success(), "{}", stderr(&done));
    }
    // As a killed run leaves it: two images without a record, one without an overlay.
    for gone in ["001.json", "004.json", "002_overlay.png", "scores.csv", "summary.json"] {
        std::fs::remove_file(cut.join(gone)).unwrap();
    }
    let c = cut.to_str().unwrap();
    let refused = run(&["detect", "--class", "bottle", "--out", c, i], &cache);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("--resume"), "{}", stderr(&refused));
    let other = run(&["detect", "--class", "bottle", "--sigma", "2", "--resume", "--out", c, i], &cache);
    assert_eq!(other.status.code(), Some(1));
    assert!(stderr(&other).contains("another settings"), "{}", stderr(&other));

    let resumed = run(&["detect", "--class", "bottle", "--resume", "--json", "--out", c, i], &cache);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(stderr(&resumed).contains("resuming: 3 of 6"), "{}", stderr(&resumed));
    let analysed: Vec<String> = String::from_utf8(resumed.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["file"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(analysed.len(), 3, "{analysed:?}");
    assert!(["001", "002", "004"].iter().all(|s| analysed.iter().any(|f| f.ends_with(&format!("{s}.png")))), "{analysed:?}");
    // Every file as the uninterrupted run wrote it.
    let (a, b) = (common::file_tree(&whole), common::file_tree(&cut));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, bytes) in &a {
        if name.extension().is_some_and(|e| e == "json") {
            // Records hold stage times; compare what they say about the image.
            let (x, y): (serde_json::Value, serde_json::Value) =
                (serde_json::from_slice(bytes).unwrap(), serde_json::from_slice(&b[name]).unwrap());
            for key in ["image_score", "verdict", "descriptors", "ok", "ng", "images"] {
                assert_eq!(x.get(key), y.get(key), "{} {key}", name.display());
            }
        } else {
            assert!(bytes == &b[name], "{} differs", name.display());
        }
    }
    assert_eq!(json(&cut.join("summary.json"))["resumed"], 3);
}

#[cfg(unix)]
#[test]
fn ctrl_c_stops_between_images_writes_what_it_has_and_resume_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    images(&input, 120);
    let cache = dir.path().join("cache");
    let out = dir.path().join("out");
    let (o, i) = (out.to_str().unwrap(), input.to_str().unwrap());
    let child = alfa(&["detect", "--class", "bottle", "--threshold", "1000", "--out", o, i], &cache)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !out.join("000.json").exists() {
        assert!(start.elapsed() < Duration::from_secs(120), "no image finished in two minutes");
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let result = child.wait_with_output().unwrap();
    assert_eq!(result.status.code(), Some(130), "{}", stderr(&result));
    assert!(stderr(&result).contains("interrupted"), "{}", stderr(&result));
    let summary = json(&out.join("summary.json"));
    assert_eq!(summary["interrupted"], true);
    let analysed = summary["analysed"].as_u64().unwrap();
    assert!((1..120).contains(&analysed), "{analysed} analysed");
    // Nothing half-written: every record has its map and overlay, no temporary files.
    let files = common::file_tree(&out);
    let records = files.keys().filter(|p| p.extension().is_some_and(|e| e == "json") && !p.ends_with("summary.json")).count();
    assert_eq!(records as u64, analysed);
    assert_eq!(files.len(), 3 * records + 2, "{:?}", files.keys().collect::<Vec<_>>());
    assert_eq!(std::fs::read_to_string(out.join("scores.csv")).unwrap().lines().count() as u64, analysed + 1);

    let resumed = run(&["detect", "--class", "bottle", "--threshold", "1000", "--resume", "--out", o, i], &cache);
    assert_eq!(resumed.status.code(), Some(0), "{}", stderr(&resumed));
    let summary = json(&out.join("summary.json"));
    assert_eq!((summary["resumed"].as_u64(), summary["analysed"].as_u64()), (Some(analysed), Some(120 - analysed)));
    assert_eq!(std::fs::read_to_string(out.join("scores.csv")).unwrap().lines().count(), 121);
}

/// `widget` in the MVTec AD layout: good and defective test images with masks.
fn dataset(root: &Path) {
    for i in 0..4 {
        save(&part(None, i), &root.join(format!("widget/test/good/{i:03}.png")));
    }
    for (i, at) in [(5, 8), (25, 20), (18, 28), (2, 2), (30, 30)].into_iter().enumerate() {
        save(&part(Some(at), i as u32), &root.join(format!("widget/test/crack/{i:03}.png")));
        let mask = GrayImage::from_fn(40, 40, |x, y| {
            Luma([if (at.0..at.0 + 9).contains(&x) && (at.1..at.1 + 9).contains(&y) { 255 } else { 0 }])
        });
        let path = root.join(format!("widget/ground_truth/crack/{i:03}_mask.png"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        mask.save(path).unwrap();
    }
}

#[test]
fn three_shards_in_three_processes_write_what_one_run_writes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("dataset");
    dataset(&root);
    let cache = dir.path().join("cache");
    let r = root.to_str().unwrap();
    let (whole, shared) = (dir.path().join("whole"), dir.path().join("shards"));
    let once = run(&["detect", "--out", whole.to_str().unwrap(), r], &cache);
    assert!(once.status.success(), "{}", stderr(&once));

    // Three machines, one shared output folder, at the same time.
    let s = shared.to_str().unwrap();
    let children: Vec<_> = (1..=3)
        .map(|k| {
            alfa(&["detect", "--shard", &format!("{k}/3"), "--out", s, r], &cache)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut counts = Vec::new();
    for (k, child) in children.into_iter().enumerate() {
        let result = child.wait_with_output().unwrap();
        assert!(result.status.success(), "shard {}: {}", k + 1, stderr(&result));
        counts.push(json(&shared.join(format!("summary-shard-{}-of-3.json", k + 1)))["images"].as_u64().unwrap());
    }
    assert_eq!(counts, [3, 3, 3], "nine images in three equal shards");

    let (a, b) = (common::file_tree(&whole), common::file_tree(&shared));
    let maps = |t: &BTreeMap<PathBuf, Vec<u8>>| {
        t.iter().filter(|(p, _)| p.extension().is_some_and(|e| e == "tiff")).map(|(p, v)| (p.clone(), v.clone())).collect::<Vec<_>>()
    };
    assert_eq!(maps(&a).len(), 9);
    assert!(maps(&a) == maps(&b), "the shards' maps are the run's maps");

    let metrics = |maps: &Path, name: &str| {
        let json_path = dir.path().join(format!("{name}.json"));
        let out = run(&["eval", "--root", r, "--maps", maps.to_str().unwrap(), "--json", json_path.to_str().unwrap()], &cache);
        assert!(out.status.success(), "{}", stderr(&out));
        json(&json_path)["classes"]["widget"].clone()
    };
    let (from_whole, from_shards) = (metrics(&whole, "whole"), metrics(&shared, "shards"));
    assert_eq!(from_whole, from_shards);
    assert!(from_whole["image_auroc"].is_number() && from_whole["pro"].is_number(), "{from_whole}");

    let bad = run(&["detect", "--shard", "3/2", "--out", dir.path().join("never").to_str().unwrap(), r], &cache);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("3/2") && stderr(&bad).contains("I/N"), "{}", stderr(&bad));
    assert!(!dir.path().join("never").exists());
}

/// `--json --progressive`: per image, S_G, then the first of two window scales, then
/// the record, in that order; the records are those of a run without it.
#[test]
fn progressive_lines_come_before_each_record_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    images(&input, 2);
    let cache = dir.path().join("cache");
    let i = input.to_str().unwrap();
    let plain = run(&["detect", "--class", "bottle", "--json", "--out", dir.path().join("plain").to_str().unwrap(), i], &cache);
    assert!(plain.status.success(), "{}", stderr(&plain));
    let out = run(&["detect", "--class", "bottle", "--json", "--progressive", "--out", dir.path().join("p").to_str().unwrap(), i], &cache);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let records: Vec<serde_json::Value> =
        String::from_utf8(plain.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3 * records.len(), "{lines:?}");
    for (chunk, record) in lines.chunks(3).zip(&records) {
        let file = record["file"].as_str().unwrap();
        assert_eq!((chunk[0]["file"].as_str(), chunk[0]["partial"].as_str()), (Some(file), Some("global")));
        assert_eq!(chunk[0]["global_score"], record["global_score"], "S_G is the final S_G");
        assert_eq!((chunk[1]["partial"].as_str(), chunk[1]["scale"].as_u64(), chunk[1]["done"].as_u64(), chunk[1]["total"].as_u64()), (Some("scale"), Some(2), Some(1), Some(2)));
        assert!(chunk[1]["image_score"].is_number());
        assert_eq!(chunk[2]["image_score"], record["image_score"]);
        assert_eq!(chunk[2]["descriptors"], record["descriptors"]);
    }
    let maps = |name: &str| std::fs::read(dir.path().join(name).join("000.tiff")).unwrap();
    assert!(maps("plain") == maps("p"), "the same map");
    let without_json = run(&["detect", "--class", "bottle", "--progressive", "--out", dir.path().join("x").to_str().unwrap(), i], &cache);
    assert_eq!(without_json.status.code(), Some(2), "{}", stderr(&without_json));
    assert!(stderr(&without_json).contains("--json"));
}
