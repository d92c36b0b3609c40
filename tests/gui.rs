//! The inspection app driven headless through its accessibility labels with
//! egui_kittest, rendered with wgpu on the software adapter (lavapipe or llvmpipe).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use alfa::app::{AlfaApp, AppOptions, LlmStatus, Verdict};
use alfa::options::{GuiArgs, ModelArgs};
use alfa::recipe::{MethodRecipe, ModelStamp, Recipe, Recipes, ThresholdHow, ThresholdRecord};
use alfa::prompts::llm::LlmConfig;
use common::llm_server::{Reply, Server};
use common::{fixtures, shared_tokenizer};
use eframe::egui::accesskit::Role;
use eframe::egui::{DroppedFile, Event, Modifiers};
use egui_kittest::kittest::{NodeT, Queryable};
use egui_kittest::{Harness, SnapshotOptions};
use image::{Rgb, RgbImage};

/// A small MVTec-like folder: `test/good`, `test/defect`, and a file that is not an image.
fn image_folder(dir: &Path) -> PathBuf {
    // Named as the class the harness uses: an MVTec layout's folder names the class.
    let root = dir.join("bottle");
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

/// [`image_folder`], and recipes in `dir/recipes` where `bottle` has one reference
/// (a copy of `test/good/000.png`). Returns both folders.
fn folder_with_a_reference(dir: &Path) -> (PathBuf, PathBuf) {
    let root = image_folder(dir);
    let recipes = dir.join("recipes");
    let refs = recipes.join("bottle/refs");
    std::fs::create_dir_all(&refs).unwrap();
    std::fs::copy(root.join("test/good/000.png"), refs.join("good.png")).unwrap();
    (root, recipes)
}

/// The app with `paths` open and its recipes in `dir/recipes`.
fn harness(dir: &Path, paths: Vec<PathBuf>) -> Harness<'static, AlfaApp> {
    harness_with_recipes(paths, dir.join("recipes"))
}

/// `recipes`: the folder the app reads and saves class recipes (prompts, references,
/// thresholds) in; never the user's own.
fn harness_with_recipes(paths: Vec<PathBuf>, recipes: PathBuf) -> Harness<'static, AlfaApp> {
    let options = AppOptions {
        args: GuiArgs {
            model: ModelArgs {
                model: Some(fixtures().join("tiny-gelu").display().to_string()),
                tokenizer: Some(shared_tokenizer()),
                ..Default::default()
            },
            class: Some("bottle".into()),
            recipes: None,
            paths,
        },
        cache_dir: None,
        recipes_dir: Some(recipes),
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
    let mut harness = harness(dir.path(), vec![image_folder(dir.path())]);
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
    harness.get_by_role_and_label(Role::Slider, "OK/NG threshold").set_value_accesskit(f64::from(high) + 0.001);
    harness.run_steps(2);
    let verdicts = |h: &Harness<'static, AlfaApp>| {
        (0..4).filter_map(|i| h.state().state.verdict(i)).collect::<Vec<_>>()
    };
    assert_eq!(verdicts(&harness), [Verdict::Ok; 3]);
    harness.get_by_role_and_label(Role::Slider, "OK/NG threshold").set_value_accesskit(f64::from(low) - 0.001);
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
    let report = &state.selected_analysis().unwrap().detection.as_ref().unwrap().prompts;
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
    let mut harness = harness(dir.path(), vec![image_folder(dir.path())]);
    step_until(&mut harness, "the analysis", analysed);
    harness.run_steps(3);
    // Software rasterisers differ slightly between Mesa versions.
    harness.snapshot_options("gui_overview", &SnapshotOptions::new().threshold(2.0).max_failed_pixels(12_000));
}

/// Threshold the test expects: with n scores and rate f, k = floor(f n) may be at or
/// above it; it is just above the (k + 1)-th highest.
fn expected_threshold(scores: &[f32], fpr: f64) -> f32 {
    let mut sorted = scores.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let k = (fpr * sorted.len() as f64 + 1e-9).floor() as usize;
    sorted[k].next_up()
}

fn reanalysed(generation: u64) -> impl Fn(&AlfaApp) -> bool {
    move |app| app.state.progress.generation > generation && analysed(app)
}

#[test]
fn references_switch_to_few_shot_and_set_the_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let root = image_folder(dir.path());
    let recipes = dir.path().join("recipes");
    let refs = recipes.join("bottle/refs");
    let mut harness = harness_with_recipes(vec![root.clone()], recipes.clone());
    step_until(&mut harness, "the analysis", analysed);
    assert!(harness.query_all_by_label("zero-shot").count() >= 1);
    assert!(harness.state().state.entries.iter().filter_map(|e| e.analysis.as_ref()).all(|a| a.detection.as_ref().unwrap().few_shot.is_none()));

    // The good image on screen becomes a reference with G.
    harness.get_by_label("test/good/000.png").click();
    harness.run_steps(2);
    assert_eq!(harness.state().state.selected, Some(3));
    let generation = harness.state().state.progress.generation;
    harness.key_press(eframe::egui::Key::G);
    step_until(&mut harness, "the few-shot analysis", reanalysed(generation));
    // A copy in the class's reference folder, where `alfa refs` and `alfa detect` find it.
    assert_eq!(harness.state().state.references(), [refs.join("000.png")]);
    assert_eq!(std::fs::read(refs.join("000.png")).unwrap(), std::fs::read(root.join("test/good/000.png")).unwrap());
    assert!(harness.query_all_by_label("few-shot (1 ref)").count() >= 1, "the mode label reads few-shot");
    let state = &harness.state().state;
    for entry in state.entries.iter().filter(|e| e.analysis.is_some()) {
        let few_shot = entry.analysis.as_ref().unwrap().detection.as_ref().unwrap().few_shot.as_ref().expect("few-shot report");
        assert_eq!(few_shot.references, 1);
        let nearest = few_shot.nearest.as_ref().expect("the nearest reference window");
        assert_eq!(nearest.file, refs.join("000.png"));
    }
    // A reference is its own nearest neighbour: no few-shot anomaly on it.
    let own = state.entries[3].analysis.as_ref().unwrap().detection.as_ref().unwrap().few_shot.as_ref().unwrap().max_score;
    assert!(own < 1e-3, "{own}");
    // The Why panel shows the few-shot part.
    assert!(harness.query_by_label_contains("max few-shot").is_some());

    // A second good image; then the threshold from the references, each scored against the other.
    let extra = dir.path().join("extra.png");
    RgbImage::from_fn(64, 48, |x, y| Rgb([(92 + x % 30) as u8, (108 + y % 20) as u8, 152])).save(&extra).unwrap();
    let generation = harness.state().state.progress.generation;
    harness.state_mut().add_references(&[extra.clone()]);
    step_until(&mut harness, "the 2-reference analysis", reanalysed(generation));
    assert!(harness.query_all_by_label("few-shot (2 refs)").count() >= 1);
    harness.get_by_label("Both from good references").click();
    step_until(&mut harness, "the threshold", |app| app.state.threshold_task.is_none() && app.state.threshold_fit.is_some());
    let state = &harness.state().state;
    let fit = state.threshold_fit.clone().unwrap();
    assert_eq!(fit.scores.len(), 2);
    assert_eq!(fit.fpr, 0.01);
    let scores: Vec<f32> = fit.scores.iter().map(|s| s.1).collect();
    assert_eq!(state.image_threshold(), expected_threshold(&scores, 0.01));
    // The region threshold comes from the good images' map maxima, at the same rate.
    let maxima: Vec<f32> = fit.scores.iter().map(|s| s.2).collect();
    assert_eq!(state.region_threshold(), expected_threshold(&maxima, 0.01));
    // Two images cannot support a rate of 1%: the notice says so.
    let notice = state.notice.clone().unwrap_or_default();
    assert!(notice.contains("only 2 good images") && notice.contains("at least 100"), "{notice}");
    // Leave-one-out: scored against the other reference, the good image is no longer a perfect match.
    let loo = fit.scores.iter().find(|s| s.0.ends_with("bottle/refs/000.png")).unwrap().1;
    assert!(loo > state.entries[3].score().unwrap(), "{loo} vs {:?}", state.entries[3].score());
    assert!(state.threshold_origin().contains("from 2 good images"), "{}", state.threshold_origin());
    // Both are in the class's recipe, with how they were set and the model they hold for.
    let recipe = Recipes::new(&recipes).read("bottle").unwrap().expect("the fit writes the recipe");
    let image = recipe.thresholds.image.clone().unwrap();
    assert_eq!((image.value, image.how, image.good.clone(), image.images), (state.image_threshold(), ThresholdHow::GoodImages, vec!["refs".to_owned()], Some(2)));
    assert_eq!(recipe.thresholds.region.as_ref().map(|r| r.value), Some(state.region_threshold()));
    assert_eq!(recipe.model.as_ref(), state.model_stamp.as_ref());

    // A folder of three good images at 50%: one of them may be flagged.
    let good = dir.path().join("good");
    std::fs::create_dir(&good).unwrap();
    for i in 0..3u32 {
        RgbImage::from_fn(64, 48, |x, y| Rgb([(85 + i * 5 + x % 30) as u8, (110 + y % 20) as u8, 150])).save(good.join(format!("{i}.png"))).unwrap();
    }
    // One file in it is not an image: it is left out and named, the others set the threshold.
    let broken = good.join("3.png");
    std::fs::write(&broken, b"not a png").unwrap();
    harness.state_mut().state.settings.target_fpr = 0.5;
    harness.state_mut().threshold_from_folder(&good);
    step_until(&mut harness, "the folder threshold", |app| app.state.threshold_task.is_none() && app.state.threshold_fit.as_ref().is_some_and(|f| f.fpr == 0.5));
    let state = &harness.state().state;
    let fit = state.threshold_fit.clone().unwrap();
    assert_eq!(fit.scores.len(), 3);
    assert_eq!(fit.skipped.len(), 1);
    assert_eq!(fit.skipped[0].0, broken);
    let notice = state.notice.clone().unwrap_or_default();
    assert!(notice.contains("1 unreadable image(s) left out") && notice.contains("3.png"), "{notice}");
    let scores: Vec<f32> = fit.scores.iter().map(|s| s.1).collect();
    assert_eq!(state.image_threshold(), expected_threshold(&scores, 0.5));
    // Moving the slider by hand says so.
    harness.get_by_role_and_label(Role::Slider, "OK/NG threshold").set_value_accesskit(0.25);
    harness.run_steps(2);
    let origin = harness.state().state.threshold_origin();
    assert!(origin.starts_with("OK/NG 0.250 set by hand on ") && origin.contains("; region") && origin.contains("from 3 good images"), "{origin}");
    let recipe = Recipes::new(&recipes).read("bottle").unwrap().unwrap();
    assert_eq!(recipe.thresholds.image.map(|t| (t.value, t.how)), Some((0.25, ThresholdHow::ByHand)));

    // Removing both references goes back to zero-shot.
    for name in ["Remove 000.png", "Remove extra.png"] {
        let generation = harness.state().state.progress.generation;
        harness.get_by_label(name).click();
        step_until(&mut harness, "the re-analysis", reanalysed(generation));
    }
    assert!(harness.state().state.references().is_empty());
    assert!(alfa::detect::references::list_references(&refs).unwrap().is_empty(), "the copies are deleted");
    assert!(root.join("test/good/000.png").exists() && extra.exists(), "the originals stay");
    assert!(harness.query_all_by_label("zero-shot").count() >= 1);
    assert!(harness.state().state.entries.iter().filter_map(|e| e.analysis.as_ref()).all(|a| a.detection.as_ref().unwrap().few_shot.is_none()));

    // A reference added from the command line (`alfa refs add`) is the app's too.
    alfa::detect::references::add_references(&refs, &[extra]).unwrap();
    let generation = harness.state().state.progress.generation;
    harness.state_mut().set_class("bottle".into());
    step_until(&mut harness, "the re-analysis", reanalysed(generation));
    assert_eq!(harness.state().state.references(), [refs.join("extra.png")]);
    assert!(harness.query_all_by_label("few-shot (1 ref)").count() >= 1);
}

/// A file as a file manager drops it on the window.
#[derive(Debug)]
struct DroppedPath(PathBuf);

impl DroppedFile for DroppedPath {
    fn path(&self) -> &Path {
        &self.0
    }

    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

/// Files dropped on the window: with Shift they become references, without they
/// replace the list (the drop lands where egui puts it, as from a file manager).
#[test]
fn dropped_files_open_images_or_add_references() {
    let dir = tempfile::tempdir().unwrap();
    let root = image_folder(dir.path());
    let recipes = dir.path().join("recipes");
    let mut harness = harness_with_recipes(Vec::new(), recipes.clone());
    let drop = |harness: &mut Harness<'static, AlfaApp>, path: PathBuf, shift: bool| {
        let input = harness.input_mut();
        let modifiers = if shift { Modifiers::SHIFT } else { Modifiers::NONE };
        input.events.push(Event::ModifiersChanged(modifiers));
        input.dropped_files.push(Arc::new(DroppedPath(path)));
    };
    drop(&mut harness, root.clone(), false);
    step_until(&mut harness, "the dropped folder's analysis", analysed);
    assert_eq!(harness.state().state.entries.len(), 4);
    assert!(harness.state().state.references().is_empty());

    let good = root.join("test/good/000.png");
    let generation = harness.state().state.progress.generation;
    drop(&mut harness, good.clone(), true);
    step_until(&mut harness, "the few-shot analysis", reanalysed(generation));
    assert_eq!(harness.state().state.references(), [recipes.join("bottle/refs/000.png")]);
    assert_eq!(harness.state().state.entries.len(), 4, "a reference drop keeps the list");
}

/// The LLM settings of an app that asks `server`, without retries.
fn ask(harness: &mut Harness<'static, AlfaApp>, server: &Server) {
    harness.state_mut().state.settings.llm = LlmConfig {
        base_url: server.base_url.clone(),
        model: "test-model".into(),
        api_key_env: "ALFA_TEST_NO_SUCH_KEY_VARIABLE".into(),
        timeout_ms: 5000,
        retries: 0,
        ..LlmConfig::default()
    };
}

const USER_PROMPT: &str = "An abnormal image of {c} shows a green stripe.";

/// Types the user's prompt into the abnormal LLM prompts, on a new line.
fn type_user_prompt(harness: &mut Harness<'static, AlfaApp>) {
    harness.get_by_label("Prompts").click();
    harness.run_steps(2);
    let editor = harness.get_by_label_contains("Abnormal LLM prompts");
    editor.focus();
    harness.key_press(eframe::egui::Key::Enter);
    harness.get_by_label_contains("Abnormal LLM prompts").type_text(USER_PROMPT);
    harness.run_steps(1);
}

#[test]
fn generate_more_adds_prompts_and_save_keeps_comments() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = dir.path().join("recipes");
    let prompts_file = recipes.join("bottle/prompts.toml");
    std::fs::create_dir_all(prompts_file.parent().unwrap()).unwrap();
    let (_, shipped) = alfa::prompts::PromptStore::shipped().find(|(id, _)| *id == "bottle").unwrap();
    let commented = format!("# my notes on bottles\n{}", shipped.replacen("abnormal = [", "abnormal = [\n    # checked by hand", 1));
    std::fs::write(&prompts_file, &commented).unwrap();
    let server = Server::start(|request, _| {
        let question = request.question();
        Reply::chat(if question.contains("An abnormal image of bottle") {
            "1. An abnormal image of bottle shows a chipped rim.\n2. An abnormal image of bottle has soot inside."
        } else if question.contains("A normal image of bottle") {
            "- A normal image of bottle has an even glossy rim.\n- A normal image of bottle is clean inside."
        } else {
            "- soot stains on the glass\n- a rim with a bite taken out"
        })
    });
    let mut harness = harness_with_recipes(vec![image_folder(dir.path())], recipes.clone());
    step_until(&mut harness, "the analysis", analysed);
    ask(&mut harness, &server);
    let before = harness.state().prompts().unwrap().clone();

    // The user's typing is pending when the answer arrives: it is kept.
    type_user_prompt(&mut harness);
    let generation = harness.state().state.progress.generation;
    harness.get_by_label("Generate more…").click();
    step_until(&mut harness, "the LLM's prompts", |app| matches!(app.state.llm, Some(LlmStatus::Added { .. })));
    assert_eq!(harness.state().state.llm, Some(LlmStatus::Added { normal: 2, abnormal: 2, descriptors: 2 }));
    assert_eq!(server.requests().len(), 3, "one answer per query");
    let set = harness.state().prompts().unwrap().clone();
    assert!(set.llm.abnormal.iter().any(|p| p == USER_PROMPT), "the user's edit is kept");
    assert!(set.llm.abnormal.iter().any(|p| p == "An abnormal image of {c} shows a chipped rim."));
    assert_eq!(set.llm.abnormal.len(), before.llm.abnormal.len() + 3);
    assert_eq!(set.llm.normal.len(), before.llm.normal.len() + 2);
    assert_eq!(set.descriptors.abnormal.len(), before.descriptors.abnormal.len() + 2);
    step_until(&mut harness, "the re-score", reanalysed(generation));
    let report = &harness.state().state.selected_analysis().unwrap().detection.as_ref().unwrap().prompts;
    assert!(report.abnormal.iter().any(|p| p.text == "An abnormal image of bottle has soot inside."));
    assert_eq!(std::fs::read_to_string(&prompts_file).unwrap(), commented, "nothing saved yet");

    // Save: the file holds the edit and the new prompts, and still has the user's comments.
    harness.get_by_label("Save").click();
    harness.run_steps(2);
    let saved = std::fs::read_to_string(&prompts_file).unwrap();
    assert!(saved.starts_with("# my notes on bottles\n"), "{saved}");
    assert!(saved.contains("# checked by hand"), "{saved}");
    let read = alfa::prompts::PromptSet::from_toml(&saved, Path::new("saved")).unwrap();
    assert_eq!(&read, harness.state().prompts().unwrap());
    assert!(read.llm.abnormal.iter().any(|p| p == USER_PROMPT));
}

#[test]
fn a_failing_llm_shows_its_error_and_keeps_the_edits() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(|_, _| Reply::json(404, serde_json::json!({"error": {"message": "model `test-model` not found"}})));
    let mut harness = harness_with_recipes(vec![image_folder(dir.path())], dir.path().join("no-recipes"));
    step_until(&mut harness, "the analysis", analysed);
    ask(&mut harness, &server);
    let before = harness.state().prompts().unwrap().clone();
    type_user_prompt(&mut harness);
    harness.get_by_label("Generate more…").click();
    step_until(&mut harness, "the LLM's error", |app| matches!(app.state.llm, Some(LlmStatus::Failed(_))));
    let Some(LlmStatus::Failed(error)) = harness.state().state.llm.clone() else { unreachable!() };
    assert!(error.contains("404") || error.contains("not found"), "{error}");
    harness.run_steps(2);
    assert!(harness.query_by_label_contains("LLM failed").is_some(), "the error is on screen");
    // The typed prompt is applied after the pause as usual; nothing from the LLM.
    step_until(&mut harness, "the user's edit", |app| app.prompts().unwrap().llm.abnormal.iter().any(|p| p == USER_PROMPT));
    let set = harness.state().prompts().unwrap();
    assert_eq!(set.llm.abnormal.len(), before.llm.abnormal.len() + 1);
    assert_eq!(set.llm.normal, before.llm.normal);
}

/// The text box labelled `label`, emptied and given `text` as a user types it.
fn retype(harness: &mut Harness<'static, AlfaApp>, label: &str, text: &str) {
    harness.get_by_label(label).focus();
    harness.run_steps(1);
    harness.key_press_modifiers(Modifiers::COMMAND, eframe::egui::Key::A);
    harness.run_steps(1);
    harness.get_by_label(label).type_text(text);
    harness.run_steps(2);
}

/// A window scale beyond the model's patch grid (4 x 4 for the tiny model) is refused
/// where it is typed and where it is used, with references too; the engine never
/// dies, and good settings work again at once.
#[test]
fn window_scales_beyond_the_grid_are_refused_and_the_engine_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (root, recipes) = folder_with_a_reference(dir.path());
    let mut harness = harness_with_recipes(vec![root], recipes);
    step_until(&mut harness, "the analysis", analysed);
    // Scales kept from a larger model: checked when this model is (re)loaded.
    harness.state_mut().state.settings.detect.scales = vec![5];
    harness.state_mut().load_model();
    step_until(&mut harness, "the fallback", |app| app.state.settings.detect.scales == [2, 3] && analysed(app));
    let state = &harness.state().state;
    assert_eq!(state.settings.detect.scales, [2, 3]);
    let notice = state.notice.clone().unwrap_or_default();
    assert!(notice.contains("window scale 5") && notice.contains("grid size 4") && notice.contains("set to 2, 3"), "{notice}");
    assert!(state.entries.iter().filter_map(|e| e.analysis.as_ref()).all(|a| a.detection.as_ref().unwrap().few_shot.is_some()));

    // Typed in Settings: refused with the reason, the scales in use stay.
    harness.get_by_label("Settings").click();
    harness.run_steps(2);
    for typed in ["5", "50", "2, x", "2, 2", ""] {
        retype(&mut harness, "Window scales (patches):", typed);
        assert_eq!(harness.state().state.settings.detect.scales, [2, 3], "{typed:?} was applied");
        assert!(harness.query_by_label_contains("still using 2, 3").is_some(), "no message for {typed:?}");
    }
    let generation = harness.state().state.progress.generation;
    retype(&mut harness, "Window scales (patches):", "1, 4");
    assert_eq!(harness.state().state.settings.detect.scales, [1, 4]);
    step_until(&mut harness, "the analysis at scales 1 and 4", reanalysed(generation));

    // Where it is used: an analysis asked with a bad scale fails with the reason
    // (the bank is built at every scale), and the next good one runs.
    for scales in [vec![5], vec![50]] {
        harness.state_mut().state.settings.detect.scales = scales.clone();
        harness.state_mut().analyse_all();
        step_until(&mut harness, "the refusal", |app| !app.state.progress.running);
        let error = harness.state().state.progress.error.clone().unwrap_or_default();
        assert!(error.contains(&format!("window scale {}", scales[0])), "{error}");
    }
    harness.state_mut().state.settings.detect.scales = vec![2, 3];
    let generation = harness.state().state.progress.generation;
    harness.state_mut().analyse_all();
    step_until(&mut harness, "the analysis after the refusals", reanalysed(generation));
    assert!(harness.state().state.progress.error.is_none());
}

/// Saved prompts stay saved: Apply class (the same class) keeps the editor, and a
/// second save keeps what the first one wrote.
#[test]
fn saved_prompt_edits_survive_apply_class_and_the_next_save() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = dir.path().join("recipes");
    let mut harness = harness_with_recipes(vec![image_folder(dir.path())], recipes.clone());
    step_until(&mut harness, "the analysis", analysed);
    let add = |harness: &mut Harness<'static, AlfaApp>, text: &str| {
        harness.get_by_label("Prompts").click();
        harness.run_steps(2);
        harness.get_by_label_contains("Abnormal state phrases").focus();
        harness.key_press(eframe::egui::Key::Enter);
        harness.get_by_label_contains("Abnormal state phrases").type_text(text);
        let wanted = text.to_owned();
        step_until(harness, "the edit", move |app| app.prompts().unwrap().templates.abnormal_states.contains(&wanted));
        harness.get_by_label("Save").click();
        harness.run_steps(2);
    };
    add(&mut harness, "cracked {c}");
    let file = recipes.join("bottle/prompts.toml");
    assert!(std::fs::read_to_string(&file).unwrap().contains("cracked {c}"));
    harness.get_by_label("Apply class").click();
    harness.run_steps(2);
    assert!(harness.query_by_label(&format!("from {}", file.display())).is_some(), "the header names the saved file");
    assert!(harness.state().prompts().unwrap().templates.abnormal_states.iter().any(|p| p == "cracked {c}"));
    add(&mut harness, "chipped {c}");
    let saved = std::fs::read_to_string(&file).unwrap();
    assert!(saved.contains("cracked {c}") && saved.contains("chipped {c}"), "{saved}");

    // Unsaved edits of a class switched away from come back with it.
    harness.get_by_label("Prompts").click();
    harness.run_steps(2);
    harness.get_by_label_contains("Abnormal state phrases").focus();
    harness.key_press(eframe::egui::Key::Enter);
    harness.get_by_label_contains("Abnormal state phrases").type_text("dented {c}");
    step_until(&mut harness, "the edit", |app| app.prompts().unwrap().templates.abnormal_states.iter().any(|p| p == "dented {c}"));
    harness.state_mut().set_class("screw".into());
    assert!(harness.state().state.notice.as_deref().unwrap_or_default().contains("unsaved prompt edits of `bottle`"));
    harness.state_mut().set_class("bottle".into());
    assert!(harness.state().prompts().unwrap().templates.abnormal_states.iter().any(|p| p == "dented {c}"));
}

/// Typing a path works where no system file dialog does; exports never replace
/// files without asking, and images of one name in two folders keep both.
#[test]
fn paths_are_typed_and_exports_ask_before_replacing() {
    let dir = tempfile::tempdir().unwrap();
    let root = image_folder(dir.path());
    let mut harness = harness_with_recipes(Vec::new(), dir.path().join("recipes"));
    harness.key_press_modifiers(Modifiers::COMMAND, eframe::egui::Key::O);
    harness.run_steps(2);
    harness.get_by_label_contains("Path (").type_text(&format!("'{}'", root.display()));
    harness.key_press(eframe::egui::Key::Enter);
    step_until(&mut harness, "the analysis", analysed);
    assert_eq!(harness.state().state.entries.len(), 4);

    let out = dir.path().join("exports");
    let export = |harness: &mut Harness<'static, AlfaApp>| {
        harness.get_by_label("Export… (Ctrl+E)").click();
        harness.run_steps(2);
        harness.get_by_label_contains("Path (").type_text(&out.display().to_string());
        harness.key_press(eframe::egui::Key::Enter);
        harness.run_steps(2);
    };
    let files = |out: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(out).map_or_else(|_| Vec::new(), |d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect());
        names.sort();
        names
    };
    // test/defect/000.png is on screen.
    export(&mut harness);
    step_until(&mut harness, "the export", |app| app.state.notice.as_deref().is_some_and(|n| n.starts_with("exported")));
    assert_eq!(files(&out), ["scores.csv", "scores.json", "test_defect_000_map.tiff", "test_defect_000_mask.png", "test_defect_000_overlay.png"]);
    let csv = std::fs::read_to_string(out.join("scores.csv")).unwrap();
    assert!(csv.lines().next().unwrap().contains(",stale,"), "{csv}");

    // test/good/000.png: its own files; the list's scores would be replaced, so it asks.
    harness.get_by_label("test/good/000.png").click();
    step_until(&mut harness, "the picture", |app| app.state.shown.as_ref().is_some_and(|s| app.state.entries[3].id == s.id));
    let before = std::fs::read(out.join("scores.json")).unwrap();
    export(&mut harness);
    assert!(harness.query_by_label_contains("already has these files").is_some());
    harness.get_by_label("Cancel (Esc)").click();
    harness.run_steps(2);
    assert_eq!(files(&out).len(), 5, "nothing written after Cancel");
    assert_eq!(std::fs::read(out.join("scores.json")).unwrap(), before);
    export(&mut harness);
    harness.get_by_label("Replace").click();
    step_until(&mut harness, "the second export", |app| app.state.notice.as_deref().is_some_and(|n| n.starts_with("exported")));
    assert_eq!(files(&out).len(), 8, "{:?}", files(&out));
    assert!(out.join("test_good_000_overlay.png").is_file() && out.join("test_defect_000_overlay.png").is_file());

    // A typed path that is not there is refused in the window, with the reason.
    harness.key_press_modifiers(Modifiers::COMMAND, eframe::egui::Key::O);
    harness.run_steps(2);
    harness.get_by_label_contains("Path (").type_text("/no/such/folder");
    harness.key_press(eframe::egui::Key::Enter);
    harness.run_steps(2);
    assert!(harness.query_by_label_contains("no file or folder /no/such/folder").is_some());
    assert_eq!(harness.state().state.entries.len(), 4);
}

/// "Export run" writes the list as `alfa detect --report` writes the folder: the same
/// maps and scores.csv (through the same batch module), a summary and the report page;
/// it asks before replacing, and says what it left out.
#[test]
fn export_run_writes_what_alfa_detect_writes() {
    let dir = tempfile::tempdir().unwrap();
    let root = image_folder(dir.path());
    let mut harness = harness(dir.path(), vec![root.clone()]);
    step_until(&mut harness, "the analysis", analysed);
    let (image_threshold, region_threshold) = (harness.state().state.image_threshold(), harness.state().state.region_threshold());
    let out = dir.path().join("run");
    let export_run = |harness: &mut Harness<'static, AlfaApp>| {
        harness.key_press_modifiers(Modifiers::COMMAND | Modifiers::SHIFT, eframe::egui::Key::E);
        harness.run_steps(2);
        harness.get_by_label_contains("Path (").type_text(&out.display().to_string());
        harness.key_press(eframe::egui::Key::Enter);
        harness.run_steps(2);
    };
    export_run(&mut harness);
    step_until(&mut harness, "the run export", |app| app.state.notice.as_deref().is_some_and(|n| n.starts_with("exported") || n.contains("failed")));
    let notice = harness.state().state.notice.clone().unwrap();
    assert!(notice.starts_with("exported 3 images") && notice.contains("report.html"), "{notice}");

    // The same images through `alfa detect` with the app's thresholds.
    let detected = dir.path().join("detect");
    let out_cli = std::process::Command::new(env!("CARGO_BIN_EXE_alfa"))
        .args(["detect", "--class", "bottle", "--threshold", &image_threshold.to_string()])
        .args(["--region-threshold", &region_threshold.to_string(), "--report", "--out", detected.to_str().unwrap()])
        .args(["--model", fixtures().join("tiny-gelu").to_str().unwrap(), "--tokenizer", shared_tokenizer().to_str().unwrap()])
        .arg(&root)
        .env("ALFA_RECIPES", dir.path().join("recipes"))
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .output()
        .unwrap();
    assert!(matches!(out_cli.status.code(), Some(4 | 5)), "one file fails (and some may be NG): {}", String::from_utf8_lossy(&out_cli.stderr));
    let (app_files, cli_files) = (common::file_tree(&out), common::file_tree(&detected));
    let names = |files: &std::collections::BTreeMap<PathBuf, Vec<u8>>| files.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&app_files), names(&cli_files), "the same files");
    for name in ["bottle/test/good/000.tiff", "bottle/test/defect/000.tiff", "bottle/test/defect/001.tiff", "scores.csv"] {
        assert!(app_files[Path::new(name)] == cli_files[Path::new(name)], "{name} differs");
    }
    let summary = |files: &std::collections::BTreeMap<PathBuf, Vec<u8>>| {
        let json: serde_json::Value = serde_json::from_slice(&files[Path::new("summary.json")]).unwrap();
        ["images", "analysed", "ok", "ng", "failed"].map(|k| json[k].as_u64().unwrap())
    };
    assert_eq!(summary(&app_files), summary(&cli_files));
    let record: serde_json::Value = serde_json::from_slice(&app_files[Path::new("bottle/test/defect/000.json")]).unwrap();
    assert_eq!((record["method"].as_str(), record["class"].as_str()), (Some("alfa"), Some("bottle")));
    assert!(record["verdict"].is_string() && record["descriptors"].is_array(), "{record}");
    let page = String::from_utf8(app_files[Path::new("report.html")].clone()).unwrap();
    assert!(page.contains("bottle/test/defect/000_overlay.png"), "the gallery links the overlays");

    // Again: it asks first, and Cancel writes nothing.
    let before = std::fs::read(out.join("summary.json")).unwrap();
    export_run(&mut harness);
    assert!(harness.query_by_label_contains("already has these files").is_some());
    harness.get_by_label("Cancel (Esc)").click();
    harness.run_steps(2);
    assert_eq!(std::fs::read(out.join("summary.json")).unwrap(), before);
    assert_eq!(harness.state().state.notice.as_deref(), Some("export cancelled: nothing written"));
}

/// An MVTec layout's folder names the class, as `alfa detect` reads it; G refuses
/// an unreadable file; keys are never dropped and Left/Right/PageDown move too.
#[test]
fn layout_class_unreadable_references_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let root = image_folder(dir.path());
    let screw = dir.path().join("screw");
    std::fs::rename(&root, &screw).unwrap();
    let recipes = dir.path().join("recipes");
    let mut harness = harness_with_recipes(Vec::new(), recipes.clone());
    harness.state_mut().open(&[screw.clone()]);
    step_until(&mut harness, "the analysis", analysed);
    let state = &harness.state().state;
    assert_eq!(state.settings.class, "screw");
    assert!(state.notice.as_deref().unwrap_or_default().contains("class `screw`"));
    assert_eq!(harness.state().prompts().unwrap().class.id, "screw");

    // G on the unreadable file: refused and named, nothing copied.
    harness.state_mut().select(2);
    harness.run_steps(1);
    harness.key_press(eframe::egui::Key::G);
    step_until(&mut harness, "the refusal", |app| app.state.notice.as_deref().is_some_and(|n| n.contains("cannot be read")));
    assert!(harness.state().state.notice.as_deref().unwrap().contains("002.png"));
    assert!(harness.state().state.references().is_empty());
    assert!(!recipes.join("screw/refs/002.png").exists());
    assert_eq!(harness.state().state.mode_label(), "zero-shot");

    // Three presses in one frame move three images; Left goes back, PageDown to the end.
    harness.state_mut().select(0);
    for _ in 0..3 {
        harness.key_press(eframe::egui::Key::ArrowDown);
    }
    harness.step();
    assert_eq!(harness.state().state.selected, Some(3));
    harness.key_press(eframe::egui::Key::ArrowLeft);
    harness.step();
    assert_eq!(harness.state().state.selected, Some(2));
    harness.key_press(eframe::egui::Key::PageUp);
    harness.step();
    assert_eq!(harness.state().state.selected, Some(0));
    harness.key_press(eframe::egui::Key::PageDown);
    harness.step();
    assert_eq!(harness.state().state.selected, Some(3));
    // Its picture is on screen at once, or its thumbnail until the picture is decoded.
    step_until(&mut harness, "the picture", |app| app.state.shown.as_ref().is_some_and(|s| s.id == app.state.entries[3].id));
}

/// The list's neighbours are decoded ahead: the next image's picture is on screen in
/// the same frame as the key press.
#[test]
fn the_next_picture_is_decoded_before_it_is_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = harness(dir.path(), vec![image_folder(dir.path())]);
    step_until(&mut harness, "the analysis", analysed);
    let next = harness.state().state.entries[1].id;
    step_until(&mut harness, "the prefetch", move |app| app.state.decoded.iter().any(|s| s.id == next));
    harness.key_press(eframe::egui::Key::ArrowDown);
    harness.step();
    let state = &harness.state().state;
    assert_eq!(state.selected, Some(1));
    assert_eq!(state.shown.as_ref().map(|s| s.id), Some(next), "shown without waiting for the loader");
}

/// Another method scores the list (through the engine, the window never waits), and
/// the compare view shows a second method's map beside the first.
#[test]
fn methods_switch_and_two_compare_side_by_side() {
    use alfa::detect::MethodKind;
    let dir = tempfile::tempdir().unwrap();
    let mut harness = harness(dir.path(), vec![image_folder(dir.path())]);
    step_until(&mut harness, "the analysis", analysed);
    let alfa_scores: Vec<f32> = harness.state().state.entries.iter().filter_map(|e| e.score()).collect();

    harness.get_by_label("Settings").click();
    harness.run_steps(2);
    let generation = harness.state().state.progress.generation;
    harness.get_by_label("WinCLIP").click();
    step_until(&mut harness, "the WinCLIP analysis", reanalysed(generation));
    let state = &harness.state().state;
    assert_eq!(state.settings.method, MethodKind::Winclip);
    let analyses: Vec<_> = state.entries.iter().filter_map(|e| e.analysis.as_ref()).collect();
    assert_eq!(analyses.len(), 3);
    assert!(analyses.iter().all(|a| a.method == MethodKind::Winclip && a.detection.is_none()));
    let winclip_scores: Vec<f32> = analyses.iter().map(|a| a.image_score).collect();
    assert_ne!(winclip_scores, alfa_scores, "another method, other scores");
    harness.get_by_label("Why").click();
    harness.run_steps(2);
    assert!(harness.query_by_label_contains("WinCLIP gives an image score and a map only").is_some());
    // Thresholds from good images are ALFA's: a baseline's are set by hand.
    assert!(harness.get_by_label("Both from a folder of good images…").accesskit_node().is_disabled());

    // Compare with ALFA: the image on screen gets ALFA's result beside WinCLIP's.
    harness.state_mut().state.settings.compare = Some(MethodKind::Alfa);
    step_until(&mut harness, "the compare result", |app| {
        app.state.selected.and_then(|i| app.state.entries[i].compare.as_ref()).is_some_and(|c| c.method == MethodKind::Alfa)
    });
    let state = &harness.state().state;
    let selected = &state.entries[state.selected.unwrap()];
    let compared = selected.compare.as_ref().unwrap();
    assert!(compared.detection.is_some(), "ALFA's whole result");
    assert!((compared.image_score - alfa_scores[0]).abs() < 1e-6, "the same score as ALFA's own run");
    harness.run_steps(3);
    assert!(harness.query_by_label_contains("ALFA 0.").is_none(), "captions are painted, not widgets");
    harness.snapshot_options("gui_compare", &SnapshotOptions::new().threshold(2.0).max_failed_pixels(12_000));
}

/// A class's recipe on disk is what the app shows at start; a threshold set by hand is
/// written into it; a recipe made with another model is not applied, and the window
/// says so.
#[test]
fn thresholds_live_in_the_class_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = Recipes::new(dir.path().join("recipes"));
    let model = fixtures().join("tiny-gelu").display().to_string();
    let files = alfa::clip::ModelRequest { model: Some(model.clone()), tokenizer: Some(shared_tokenizer()), ..Default::default() }
        .resolve()
        .unwrap();
    let stamp = ModelStamp::of(&files, &model, alfa::clip::Precision::F32, None).unwrap();
    let mut recipe = Recipe::new("bottle");
    recipe.model = Some(stamp.clone());
    recipe.method = Some(MethodRecipe::new(alfa::detect::MethodKind::Alfa, &Default::default()));
    recipe.thresholds.image = Some(ThresholdRecord::by_hand(0.123));
    recipe.thresholds.region = Some(ThresholdRecord::from_good_images(0.456, 0.01, vec!["/lines/good".into()], 120));
    recipes.write(&recipe).unwrap();

    let mut harness = harness_with_recipes(vec![image_folder(dir.path())], recipes.root.clone());
    // Before the model is loaded (the same model named) and after (the same weights).
    assert_eq!(harness.state().state.image_threshold(), 0.123);
    step_until(&mut harness, "the analysis", analysed);
    let state = &harness.state().state;
    assert_eq!(state.model_stamp.as_ref(), Some(&stamp));
    assert_eq!((state.image_threshold(), state.region_threshold()), (0.123, 0.456));
    assert!(state.threshold_origin().contains("region 0.456 from 120 good images (good) at FPR 1%"), "{}", state.threshold_origin());
    assert!(harness.query_by_label_contains("may not transfer").is_none());

    harness.get_by_role_and_label(Role::Slider, "OK/NG threshold").set_value_accesskit(0.3);
    harness.run_steps(2);
    let written = recipes.read("bottle").unwrap().unwrap();
    assert_eq!(written.thresholds.image.as_ref().map(|t| (t.value, t.how)), Some((0.3, ThresholdHow::ByHand)));
    assert_eq!(written.thresholds.region, recipe.thresholds.region, "the other threshold stays as it was set");
    assert!(harness.state().state.settings.thresholds.is_empty(), "one truth: the recipe");

    // The recipe of another model: its thresholds are not used, and the window says so.
    let other = ModelStamp { id: "someone/else".into(), weights_blake3: "0".repeat(64), ..stamp };
    recipes.write(&Recipe { model: Some(other), ..recipe }).unwrap();
    harness.state_mut().set_class("screw".into());
    harness.state_mut().set_class("bottle".into());
    harness.run_steps(2);
    assert_eq!(harness.state().state.image_threshold(), 0.5);
    assert!(harness.query_by_label_contains("may not transfer").is_some(), "{:?}", harness.state().state.recipe_warning());
}

#[test]
fn a_dinov2_bank_scores_the_list_and_why_shows_its_nearest_patch() {
    let dir = tempfile::tempdir().unwrap();
    let (root, recipes) = folder_with_a_reference(dir.path());
    let refs = recipes.join("bottle/refs");
    let mut harness = harness_with_recipes(vec![root.clone()], recipes);
    step_until(&mut harness, "the analysis", analysed);
    // Settings: DINOv2 patches from the fixture model (loaded with the next model load).
    let generation = harness.state().state.progress.generation;
    {
        let app = harness.state_mut();
        app.state.settings.dino_model = fixtures().join("dinov2/tiny-dinov2.safetensors").display().to_string();
        app.state.settings.detect.refs_backbone = alfa::detect::RefsBackbone::Dinov2;
        app.load_model();
    }
    step_until(&mut harness, "the DINOv2 few-shot analysis", reanalysed(generation));
    let state = &harness.state().state;
    for entry in state.entries.iter().filter(|e| e.analysis.is_some()) {
        let few_shot = entry.analysis.as_ref().unwrap().detection.as_ref().unwrap().few_shot.as_ref().expect("few-shot report");
        assert_eq!(few_shot.backbone, alfa::detect::RefsBackbone::Dinov2);
        assert_eq!(few_shot.map.width, alfa::dinov2::GRID);
        assert_eq!(few_shot.nearest.as_ref().unwrap().file, refs.join("good.png"));
    }
    // The Why panel of the image on screen.
    harness.run_steps(4);
    assert!(harness.query_by_label_contains("few-shot (top 1%)").is_some());
    assert!(harness.query_by_label_contains("Worst DINOv2 patch and the nearest reference patch").is_some());
}
