//! The inspection app driven headless through its accessibility labels with
//! egui_kittest, rendered with wgpu on the software adapter (lavapipe or llvmpipe).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use alfa::app::{AlfaApp, AppOptions, Verdict};
use alfa::cli::{GuiArgs, ModelArgs};
use common::{fixtures, shared_tokenizer};
use eframe::egui::accesskit::Role;
use egui_kittest::kittest::Queryable;
use egui_kittest::{Harness, SnapshotOptions};
use image::{Rgb, RgbImage};

/// A small MVTec-like folder: `test/good`, `test/defect`, and a file that is not an image.
fn image_folder(dir: &Path) -> PathBuf {
    let root = dir.join("part");
    for (sub, name, blob) in [("test/good", "000.png", false), ("test/defect", "000.png", true), ("test/defect", "001.png", true)] {
        let folder = root.join(sub);
        std::fs::create_dir_all(&folder).unwrap();
        let image = RgbImage::from_fn(64, 48, |x, y| {
            let inside = blob && (x as i32 - 40).pow(2) + (y as i32 - 20).pow(2) < 60;
            if inside { Rgb([30, 10, 5]) } else { Rgb([(90 + x % 30) as u8, (110 + y % 20) as u8, 150]) }
        });
        image.save(folder.join(name)).unwrap();
    }
    std::fs::write(root.join("test/defect/002.png"), b"not a png").unwrap();
    root
}

fn harness(paths: Vec<PathBuf>) -> Harness<'static, AlfaApp> {
    let options = AppOptions {
        args: GuiArgs {
            model: ModelArgs {
                model: Some(fixtures().join("tiny-gelu").display().to_string()),
                tokenizer: Some(shared_tokenizer()),
                ..Default::default()
            },
            class: Some("bottle".into()),
            paths,
        },
        cache_dir: None,
        screenshot: None,
    };
    Harness::builder()
        .wgpu()
        .with_size(eframe::egui::Vec2::new(1400.0, 900.0))
        .with_max_steps(100_000)
        .build_eframe(move |cc| AlfaApp::new(cc, options))
}

/// Steps until `done` holds; a generous iteration limit, not a time limit.
fn step_until(harness: &mut Harness<'static, AlfaApp>, what: &str, done: impl Fn(&AlfaApp) -> bool) {
    for _ in 0..20_000 {
        harness.step();
        if done(harness.state()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("gave up waiting for {what}");
}

fn analysed(app: &AlfaApp) -> bool {
    !app.state.progress.running && app.state.analysed() == 3 && app.state.shown.is_some()
}

#[test]
fn open_analyse_threshold_and_live_prompt_edit() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = harness(vec![image_folder(dir.path())]);
    step_until(&mut harness, "the analysis", analysed);

    let state = &harness.state().state;
    let names: Vec<&str> = state.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["test/defect/000.png", "test/defect/001.png", "test/defect/002.png", "test/good/000.png"]);
    let broken = &state.entries[2];
    assert!(broken.analysis.is_none());
    assert!(broken.error.as_deref().unwrap().contains("002.png"), "{:?}", broken.error);
    let scores: Vec<f32> = state.entries.iter().filter_map(|e| e.score()).collect();
    assert_eq!(scores.len(), 3);
    assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)), "{scores:?}");
    let analysis = state.selected_analysis().expect("the first image is selected and analysed");
    assert_eq!((analysis.map.width, analysis.map.height), (64, 48));

    // The threshold slider decides OK / NG.
    let (low, high) = scores.iter().fold((1.0f32, 0.0f32), |(l, h), &s| (l.min(s), h.max(s)));
    harness.get_by_role_and_label(Role::Slider, "Threshold").set_value_accesskit(f64::from(high) + 0.001);
    harness.run_steps(2);
    let verdicts = |h: &Harness<'static, AlfaApp>| {
        (0..4).filter_map(|i| h.state().state.verdict(i)).collect::<Vec<_>>()
    };
    assert_eq!(verdicts(&harness), [Verdict::Ok; 3]);
    harness.get_by_role_and_label(Role::Slider, "Threshold").set_value_accesskit(f64::from(low) - 0.001);
    harness.run_steps(2);
    assert_eq!(verdicts(&harness), [Verdict::Ng; 3]);

    // Keyboard: Down moves to the next image in the list.
    assert_eq!(harness.state().state.selected, Some(0));
    harness.key_press(eframe::egui::Key::ArrowDown);
    harness.run_steps(2);
    assert_eq!(harness.state().state.selected, Some(1));

    // A new abnormal prompt re-scores the image after the typing pause; only it is encoded.
    harness.get_by_label("Prompts").click();
    harness.run_steps(2);
    let generation = harness.state().state.progress.generation;
    let editor = harness.get_by_label_contains("Abnormal LLM prompts");
    // The cursor lands at the end of the text: a new line, then the new prompt.
    editor.focus();
    harness.key_press(eframe::egui::Key::Enter);
    editor.type_text("An abnormal image of {c} shows a green stripe.");
    step_until(&mut harness, "the re-score", |app| app.state.progress.generation > generation && analysed(app));
    let state = &harness.state().state;
    let report = &state.selected_analysis().unwrap().detection.prompts;
    assert!(
        report.abnormal.iter().any(|p| p.text == "An abnormal image of bottle shows a green stripe."),
        "the edited prompt is scored: {:?}",
        report.abnormal.iter().filter(|p| p.text.contains("green")).map(|p| &p.text).collect::<Vec<_>>()
    );
    assert_eq!(state.last_encoding.map(|(n, _)| n), Some(1), "only the new prompt went through the text tower");
}

#[test]
fn overview_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = harness(vec![image_folder(dir.path())]);
    step_until(&mut harness, "the analysis", analysed);
    harness.run_steps(3);
    // Software rasterisers differ slightly between Mesa versions.
    harness.snapshot_options("gui_overview", &SnapshotOptions::new().threshold(2.0).max_failed_pixels(12_000));
}
