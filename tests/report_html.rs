//! The `--report` page in a real browser: headless Chromium renders a report for
//! generated overlays; its screenshot must not be blank (histogram colours and the
//! thumbnails show), and its DOM must hold the expected gallery cards, sorted by score,
//! filtered by `#ng` / `#ok`, paginated by `#all/N`.
//!
//! Needs `chromium` on PATH (`apt-get install chromium`; `.ci/run` installs it).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use alfa::detect::threshold::Verdict;
use alfa::batch::report::{
    PAGE_SIZE, ReportCounts, ReportImage, ReportRun, ReportThreshold, truth_from_path, write_report,
};
use image::{Rgb, RgbImage};

/// The histogram's colours for good and defective images (report.rs).
const GOOD: [u8; 3] = [0x2f, 0x6f, 0xdf];
const DEFECTIVE: [u8; 3] = [0xe8, 0x70, 0x2a];

fn chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "chromium is not on PATH: the report test renders the page in a real browser. \
         Install it (Debian/Ubuntu: `sudo apt-get install chromium`; .ci/run does this)"
    );
}

/// Runs headless Chromium on `url` with `extra` arguments; its stdout. Killed after a minute.
fn headless(url: &str, extra: &[String], window: (u32, u32)) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--window-size={},{}", window.0, window.1))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start chromium");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 60 s on {url}: {}", err.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out.join().unwrap().expect("chromium's output is not UTF-8");
    assert!(status.success(), "chromium failed ({status}) on {url}: {}", err.join().unwrap());
    stdout
}

fn url(page: &Path, fragment: &str) -> String {
    format!("file://{}{fragment}", page.display())
}

fn dump_dom(page: &Path, fragment: &str) -> String {
    headless(&url(page, fragment), &["--dump-dom".to_owned()], (1280, 900))
}

/// An overlay stand-in: a heatmap-like gradient with a magenta spot (a colour the page
/// never uses, so the screenshot shows whether the thumbnails loaded).
fn overlay(path: &Path, hue: u8) {
    let (w, h) = (160u32, 120u32);
    let img = RgbImage::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as f32 - 80.0, y as f32 - 60.0);
        if dx * dx + dy * dy < 26.0 * 26.0 {
            Rgb([255, 0, 255])
        } else {
            Rgb([(x * 255 / w) as u8 / 2 + hue / 2, (y * 255 / h) as u8 / 2 + 40, 200 - hue / 2])
        }
    });
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

struct Case {
    _dir: tempfile::TempDir,
    page: PathBuf,
    /// Scores in gallery order (highest first) with their verdicts.
    expected: Vec<(f32, Verdict)>,
}

const THRESHOLD: f32 = 0.5;

/// A report for MVTec-style inputs; `repeat` > 1 lists every image that many times
/// (with nudged scores) to fill several pages.
fn case(repeat: usize) -> Case {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let inputs = [
        ("bottle/test/good/000.png", 0.21),
        ("bottle/test/good/001.png", 0.34),
        ("bottle/test/good/002.png", 0.55),
        ("bottle/test/broken_large/000.png", 0.83),
        ("bottle/test/broken_small/001.png", 0.47),
        ("bottle/test/contamination/</script><b>x.png", 0.91),
        ("misc/photo.png", 0.62),
    ];
    let mut images = Vec::new();
    for (i, (input, score)) in inputs.iter().enumerate() {
        let stem = input.trim_end_matches(".png");
        // `</` in a name is no file name on Linux: that overlay gets a plain one.
        let overlay_rel = if stem.contains('<') { format!("bottle/test/contamination/odd_{i}_overlay.png") } else { format!("{stem}_overlay.png") };
        overlay(&out.join(&overlay_rel), (i * 36) as u8);
        for k in 0..repeat {
            let score = score - k as f32 * 1e-4;
            images.push(ReportImage {
                file: format!("/data/mvtec/{input}"),
                overlay: overlay_rel.clone(),
                score,
                verdict: Some(Verdict::of(score, THRESHOLD)),
                truth: truth_from_path(Path::new(input)),
                descriptors: vec!["a crack in the glass".into(), "a dirty spot".into(), "a chipped rim".into(), "a fourth".into()],
            });
        }
    }
    let ng = images.iter().filter(|im| im.verdict == Some(Verdict::Ng)).count();
    let run = ReportRun {
        title: "alfa detect: bottle".into(),
        created: "2026-11-20 14:03".into(),
        model: "tiny-gelu (test fixture)".into(),
        method: "alfa".into(),
        settings: vec![("scales".into(), "[2,3]".into()), ("window_mode".into(), "tokens".into()), ("sigma".into(), "4".into())],
        threshold: Some(ReportThreshold { value: THRESHOLD, how: "from 3 good images at FPR 0.01, 2026-11-19".into() }),
        counts: ReportCounts { images: images.len() + 1, ok: images.len() - ng, ng, failed: 1, interrupted: false },
    };
    let page = out.join("report.html");
    write_report(&page, &run, &images).unwrap();
    let mut expected: Vec<(f32, Verdict)> = images.iter().map(|im| (im.score, im.verdict.unwrap())).collect();
    expected.sort_by(|a, b| b.0.total_cmp(&a.0));
    Case { _dir: dir, page, expected }
}

/// The gallery cards of a dumped DOM: (score, verdict) in document order.
fn cards(dom: &str) -> Vec<(f32, String)> {
    dom.split("<article ").skip(1).map(|card| {
        let attr = |name: &str| {
            let start = card.find(&format!("{name}=\"")).unwrap_or_else(|| panic!("a card without {name}: {card}")) + name.len() + 2;
            card[start..start + card[start..].find('"').unwrap()].to_owned()
        };
        (attr("data-score").parse().unwrap(), attr("data-verdict"))
    })
    .collect()
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Ok => "OK",
        Verdict::Ng => "NG",
    }
}

#[test]
fn the_report_renders_in_chromium_with_histogram_thumbnails_and_sorted_cards() {
    let case = case(1);
    let shot = case.page.with_file_name("screenshot.png");
    headless(
        &url(&case.page, ""),
        &[format!("--screenshot={}", shot.display()), "--virtual-time-budget=3000".to_owned()],
        (1280, 1400),
    );
    if let Ok(keep) = std::env::var("ALFA_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
    let img = image::open(&shot).expect("chromium wrote no screenshot").to_rgb8();
    let total = img.pixels().len() as f64;
    let near = |p: &Rgb<u8>, c: [u8; 3], tol: i32| p.0.iter().zip(c).all(|(&a, b)| (a as i32 - b as i32).abs() <= tol);
    let inked = img.pixels().filter(|p| p.0.iter().any(|&c| c < 225)).count() as f64;
    assert!(inked / total > 0.05, "the screenshot is (nearly) blank: {:.1}% of pixels are not white", 100.0 * inked / total);
    let count = |c: [u8; 3]| img.pixels().filter(|p| near(p, c, 6)).count();
    assert!(count(GOOD) > 200, "no good-image bars in the histogram ({} pixels)", count(GOOD));
    assert!(count(DEFECTIVE) > 200, "no defective-image bars in the histogram ({} pixels)", count(DEFECTIVE));
    let magenta = count([255, 0, 255]);
    assert!(magenta > 2000, "the thumbnails did not load ({magenta} magenta pixels)");

    let dom = dump_dom(&case.page, "");
    let shown = cards(&dom);
    assert_eq!(shown.len(), case.expected.len(), "one card per image");
    for (got, want) in shown.iter().zip(&case.expected) {
        assert!((got.0 - want.0).abs() < 1e-6 && got.1 == verdict_name(want.1), "cards out of order: {shown:?}");
    }
    // The hostile file name is text, not markup, and the data script held.
    assert!(dom.contains("&lt;/script&gt;&lt;b&gt;x.png"), "the odd name is not shown as text");
    assert!(!dom.contains("<b>x"));
    // Summary, threshold and the card's parts.
    for text in ["from 3 good images at FPR 0.01", "threshold 0.500", "tiny-gelu (test fixture)", "0.910", "a dirty spot", "folder: defective"] {
        assert!(dom.contains(text), "the page lacks `{text}`");
    }
    assert!(!dom.contains("a fourth"), "only three descriptors per card");
    assert!(dom.contains("aria-pressed=\"true\">All"), "All is the filter without a fragment");
}

#[test]
fn the_verdict_filters_follow_the_address_fragment() {
    let case = case(1);
    let ng = case.expected.iter().filter(|e| e.1 == Verdict::Ng).count();
    let ok = case.expected.len() - ng;
    assert!(ng > 0 && ok > 0);
    for (fragment, verdict, n) in [("#ng", "NG", ng), ("#ok", "OK", ok), ("#NG", "NG", ng)] {
        let shown = cards(&dump_dom(&case.page, fragment));
        assert_eq!(shown.len(), n, "{fragment}: {shown:?}");
        assert!(shown.iter().all(|c| c.1 == verdict), "{fragment} shows other verdicts: {shown:?}");
        assert!(shown.windows(2).all(|w| w[0].0 >= w[1].0), "{fragment} is not sorted: {shown:?}");
    }
}

#[test]
fn a_large_gallery_is_paginated() {
    let case = case(25);
    let total = case.expected.len();
    assert!(total > 2 * PAGE_SIZE);
    let pages = total.div_ceil(PAGE_SIZE);
    let first = cards(&dump_dom(&case.page, ""));
    assert_eq!(first.len(), PAGE_SIZE, "only one page of cards is in the document");
    let last = cards(&dump_dom(&case.page, &format!("#all/{pages}")));
    assert_eq!(last.len(), total - (pages - 1) * PAGE_SIZE);
    let want_last = &case.expected[(pages - 1) * PAGE_SIZE..];
    assert!(last.iter().zip(want_last).all(|(g, w)| (g.0 - w.0).abs() < 1e-6), "the last page holds the lowest scores");
    // A page past the end shows the last one.
    assert_eq!(cards(&dump_dom(&case.page, "#all/999")).len(), last.len());
}

/// Not a check: how long 10,000 images take to open. Run with
/// `cargo test --test report_html -- --ignored --nocapture ten_thousand`.
#[test]
#[ignore = "a benchmark, not a check (tests assert no wall-clock times): it prints how long a \
            10,000-image page takes to open and writes 10,000 PNGs first (about a minute)"]
fn ten_thousand_images_open_quickly() {
    let dir = tempfile::tempdir().unwrap();
    // ALFA_REPORT_DIR keeps the page and its overlays to look at.
    let out = std::env::var_os("ALFA_REPORT_DIR").map_or_else(|| dir.path().join("out"), PathBuf::from);
    let n = 10_000;
    let mut images = Vec::with_capacity(n);
    for i in 0..n {
        let defect = ["good", "crack", "scratch", "hole"][i % 4];
        let stem = format!("part{}/test/{defect}/{i:05}", i % 20);
        let rel = format!("{stem}_overlay.png");
        overlay(&out.join(&rel), (i % 200) as u8);
        let score = ((i * 7919) % n) as f32 / n as f32 * 0.6 + if defect == "good" { 0.1 } else { 0.35 };
        images.push(ReportImage {
            file: format!("/data/mvtec/{stem}.png"),
            overlay: rel,
            score,
            verdict: Some(Verdict::of(score, 0.6)),
            truth: truth_from_path(Path::new(&format!("{stem}.png"))),
            descriptors: vec!["a long descriptor about a scratch on the surface".into(); 5],
        });
    }
    let ng = images.iter().filter(|im| im.verdict == Some(Verdict::Ng)).count();
    let run = ReportRun {
        title: "alfa detect: 10,000 images".into(),
        created: "2026-11-20 14:03".into(),
        model: "tiny".into(),
        method: "alfa".into(),
        settings: vec![],
        threshold: Some(ReportThreshold { value: 0.6, how: "set by hand".into() }),
        counts: ReportCounts { images: n, ok: n - ng, ng, failed: 0, interrupted: true },
    };
    let page = out.join("report.html");
    let start = Instant::now();
    write_report(&page, &run, &images).unwrap();
    println!("write_report: {:?}, {} bytes", start.elapsed(), std::fs::metadata(&page).unwrap().len());
    let blank = out.join("blank.html");
    std::fs::write(&blank, "<!DOCTYPE html><html><body>x</body></html>").unwrap();
    for _ in 0..3 {
        let start = Instant::now();
        headless(&url(&blank, ""), &["--dump-dom".to_owned()], (1280, 900));
        let base = start.elapsed();
        let start = Instant::now();
        let dom = headless(&url(&page, ""), &["--dump-dom".to_owned()], (1280, 900));
        let wall = start.elapsed();
        let attr = |name: &str| {
            let s = dom.find(&format!("{name}=\"")).map(|i| i + name.len() + 2).unwrap();
            dom[s..s + dom[s..].find('"').unwrap()].to_owned()
        };
        println!(
            "chromium --dump-dom: {wall:?} (a blank page: {base:?}); script done {} ms after navigation start (its own work {} ms); {} cards",
            attr("data-ready-ms"),
            attr("data-render-ms"),
            cards(&dom).len()
        );
    }
    if let Ok(keep) = std::env::var("ALFA_KEEP_SCREENSHOT") {
        headless(&url(&page, "#ng/7"), &[format!("--screenshot={keep}"), "--virtual-time-budget=3000".to_owned()], (1280, 900));
    }
}
