//! The app driven headless: what needs the engine thread's test hook.


use std::path::PathBuf;
use std::sync::Arc;

use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT, Queryable};

use super::{AlfaApp, AppOptions};
use crate::options::{GuiArgs, ModelArgs};

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The app with the tiny model, `paths` open and its recipes in `recipes` (never the
/// user's own).
fn options(paths: Vec<PathBuf>, recipes: &std::path::Path) -> AppOptions {
    AppOptions {
        args: GuiArgs {
            model: ModelArgs {
                model: Some(manifest().join("tests/fixtures/tiny-gelu").display().to_string()),
                tokenizer: Some(manifest().join("../shared/clip/tokenizer.json")),
                ..Default::default()
            },
            class: Some("bottle".into()),
            recipes: None,
            paths,
        },
        cache_dir: None,
        recipes_dir: Some(recipes.to_owned()),
        screenshot: None,
    }
}

/// Steps until `done` holds (a generous iteration limit, not a time limit).
fn step_until(harness: &mut Harness<'_, AlfaApp>, what: &str, done: impl Fn(&AlfaApp) -> bool) {
    for _ in 0..40_000 {
        harness.step();
        if done(harness.state()) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("gave up waiting for {what}");
}

#[test]
fn frames_keep_coming_while_the_engine_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = dir.path().to_owned();
    let mut harness = Harness::builder().with_max_steps(10_000).build_eframe(move |cc| AlfaApp::new(cc, options(Vec::new(), &recipes)));
    // A job that holds the engine thread until `release` is dropped.
    let (release, hold) = crossbeam_channel::bounded::<()>(0);
    harness.state().workers.hold(hold);
    let image = manifest().join("tests/fixtures/images/odd_100x100_rgb.png");
    harness.state_mut().open(&[image]);
    let frames_before = harness.state().frames;
    for _ in 0..50 {
        harness.step();
    }
    let app = harness.state();
    assert_eq!(app.frames, frames_before + 50, "every step drew a frame");
    assert!(app.state.progress.running, "the analysis waits behind the slow job");
    assert_eq!(app.state.analysed(), 0);
    drop(release);
    let mut steps = 0;
    while harness.state().state.progress.running {
        harness.step();
        std::thread::sleep(std::time::Duration::from_millis(5));
        steps += 1;
        assert!(steps < 20_000, "the analysis never finished");
    }
    assert_eq!(harness.state().state.analysed(), 1);
}

/// A precision the device cannot run is explained in the window's words: what to
/// choose, not which command-line flag to pass.
#[test]
fn refused_precisions_are_explained_without_cli_flags() {
    use crate::clip::ClipError;
    for (refused, says) in [
        (ClipError::F16OnCpu { bf16_here: true }, ["f16 is for GPUs", "Choose f32, or bf16"]),
        (ClipError::F16OnCpu { bf16_here: false }, ["f16 is for GPUs", "Choose f32."]),
        (ClipError::Bf16Unsupported { found: "this CPU has none" }, ["this CPU has none", "choose f32"]),
    ] {
        let text = super::settings_page::precision_refusal(&refused);
        assert!(says.iter().all(|s| text.contains(s)) && !text.contains("--"), "{text}");
        assert!(refused.to_string().contains("--precision"), "the CLI's text names the flag");
    }
}

/// The Settings page's precision reaches the model the next "Load model" loads.
#[test]
fn the_precision_setting_goes_to_the_model_load() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = dir.path().to_owned();
    let mut harness = Harness::builder().with_max_steps(10_000).build_eframe(move |cc| AlfaApp::new(cc, options(Vec::new(), &recipes)));
    assert_eq!(harness.state().model_args().precision, crate::clip::Precision::F32);
    harness.get_by_label("Settings").click();
    harness.run_steps(2);
    // f16 is offered for a GPU only: a CPU build on the native kernels shows it disabled.
    let cpu_only = crate::clip::DeviceKind::built_gpu().is_none()
        && crate::clip::Kernels::from_env().unwrap_or_default() == crate::clip::Kernels::Native;
    assert_eq!(harness.get_by_label("f16 (GPU)").accesskit_node().is_disabled(), cpu_only);
    let bf16 = harness.get_by_label("bf16 (faster)");
    if crate::clip::Precision::Bf16.check(&candle_core::Device::Cpu, crate::clip::Kernels::Native).is_err() {
        assert!(bf16.accesskit_node().is_disabled(), "bf16 is offered where the CPU cannot run it");
        return;
    }
    bf16.click();
    harness.run_steps(2);
    assert_eq!(harness.state().state.settings.precision, crate::clip::Precision::Bf16);
    assert_eq!(harness.state().model_args().precision, crate::clip::Precision::Bf16);
    // Loaded in bf16, the status bar says so.
    harness.get_by_label("Load model").click();
    for _ in 0..20_000 {
        harness.step();
        if harness.query_by_label("model: tiny-gelu (bf16)").is_some() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("the status bar never read `model: tiny-gelu (bf16)`");
}

/// A panic on the engine thread (a bug) is reported and the engine comes back: the
/// next analysis runs.
#[test]
fn the_engine_comes_back_after_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = dir.path().to_owned();
    let mut harness = Harness::builder().with_max_steps(10_000).build_eframe(move |cc| AlfaApp::new(cc, options(Vec::new(), &recipes)));
    harness.state().workers.panic_engine();
    step_until(&mut harness, "the panic reported", |app| app.state.notice.as_deref().is_some_and(|n| n.contains("engine failed")));
    assert!(harness.state().state.notice.as_deref().unwrap().contains("a test asked the engine to panic"));
    let image = manifest().join("tests/fixtures/images/odd_100x100_rgb.png");
    harness.state_mut().open(&[image]);
    step_until(&mut harness, "the analysis after the panic", |app| !app.state.progress.running && app.state.analysed() > 0);
    assert!(harness.state().state.progress.error.is_none(), "{:?}", harness.state().state.progress.error);
    assert_eq!(harness.state().state.analysed(), 1);
}

/// Cancelled before re-scoring: the old scores are counted as old, not as analysed,
/// and the export marks them.
#[test]
fn cancelled_rescoring_leaves_old_scores_marked() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = dir.path().to_owned();
    let mut harness = Harness::builder().with_max_steps(10_000).build_eframe(move |cc| AlfaApp::new(cc, options(Vec::new(), &recipes)));
    let image = manifest().join("tests/fixtures/images/odd_100x100_rgb.png");
    harness.state_mut().open(&[image]);
    step_until(&mut harness, "the analysis", |app| !app.state.progress.running && app.state.analysed() > 0);
    let export = harness.state().export_of_state();
    assert!(!export.scores.images[0].stale);
    // A slow job keeps the engine busy, so Cancel comes before the re-scoring.
    let (release, hold) = crossbeam_channel::bounded::<()>(0);
    harness.state().workers.hold(hold);
    harness.state_mut().analyse_all();
    harness.state_mut().cancel();
    drop(release);
    harness.run_steps(3);
    let app = harness.state();
    assert_eq!(app.state.analysed(), 0, "an old score is not a result");
    assert!(app.state.entries[0].stale && app.state.entries[0].score().is_some());
    let export = app.export_of_state();
    assert!(export.scores.images[0].stale);
    assert_eq!(export.image.as_ref().map(|x| x.style.caption.len()), Some(3), "the overlay says the result is old");
}

/// The list and the Why page show S_G as soon as the global pass is done, then the map
/// of the first window scale (the viewer shows it), and the final result replaces
/// them: the engine is held after each partial result so that every state is seen.
#[test]
fn partial_results_show_at_once_and_the_final_one_replaces_them() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = dir.path().to_owned();
    let mut harness = Harness::builder()
        .with_size(eframe::egui::Vec2::new(1400.0, 900.0))
        .with_max_steps(10_000)
        .build_eframe(move |cc| AlfaApp::new(cc, options(Vec::new(), &recipes)));
    let (next, gate) = crossbeam_channel::bounded::<()>(0);
    harness.state().workers.gate_partials(gate);
    let image = manifest().join("tests/fixtures/images/odd_100x100_rgb.png");
    harness.state_mut().open(&[image]);

    step_until(&mut harness, "S_G", |app| app.state.entries[0].partial.is_some());
    let partial = harness.state().state.entries[0].partial.clone().unwrap();
    assert!(partial.refined.is_none() && partial.global_score.is_finite(), "{partial:?}");
    harness.run_steps(2);
    let label = format!("S_G {:.3}, refining…", partial.global_score);
    assert!(harness.query_all_by_label(&label).count() >= 1, "the list and the Why page show `{label}`");
    assert!(harness.state().state.entries[0].analysis.is_none());

    next.send(()).unwrap();
    step_until(&mut harness, "the first scale's map", |app| app.state.entries[0].partial.as_ref().is_some_and(|p| p.refined.is_some()));
    let partial = harness.state().state.entries[0].partial.clone().unwrap();
    assert_eq!(partial.scales, (1, 2), "scales 2 and 3: the first of two");
    step_until(&mut harness, "the partial map on screen", |app| {
        app.content.as_ref().and_then(|c| c.map.as_ref()).is_some_and(|m| Arc::ptr_eq(m, &partial.refined.as_ref().unwrap().1))
    });

    drop(next);
    step_until(&mut harness, "the final result", |app| app.state.analysed() == 1);
    let app = harness.state();
    let entry = &app.state.entries[0];
    assert!(entry.partial.is_none(), "the result replaces the partial one");
    let analysis = entry.analysis.clone().unwrap();
    assert_eq!(analysis.detection.as_ref().unwrap().global_score, partial.global_score, "S_G does not change");
    harness.run_steps(2);
    assert!(harness.query_by_label_contains("refining").is_none());
}

/// The path window closes on the first Esc, its text box focused ("Cancel (Esc)"):
/// the help's shortcut used to take every Esc.
#[test]
fn escape_closes_the_path_window() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = dir.path().to_owned();
    let mut harness = Harness::builder().with_max_steps(10_000).build_eframe(move |cc| AlfaApp::new(cc, options(Vec::new(), &recipes)));
    harness.state_mut().ask_path(super::path_choice::Purpose::OpenImages);
    harness.run_steps(3);
    assert!(harness.state().path_prompt.is_some());
    harness.key_press(eframe::egui::Key::Escape);
    harness.run_steps(3);
    assert!(harness.state().path_prompt.is_none(), "the first Esc closes the path window");
    // With the help open, Esc closes the help first.
    harness.state_mut().show_help = true;
    harness.state_mut().ask_path(super::path_choice::Purpose::OpenImages);
    harness.run_steps(3);
    harness.key_press(eframe::egui::Key::Escape);
    harness.run_steps(3);
    assert!(!harness.state().show_help, "Esc closes the help");
}
