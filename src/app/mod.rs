//! The inspection window (eframe + wgpu).
//!
//! The UI thread only draws and sends jobs: the engine runs on a worker thread
//! (`worker`), results come back as messages. What the UI shows lives in `state`,
//! apart from the widgets (`panels`, `viewer`); the heatmap is a WGSL shader in a
//! paint callback (`heatmap`).

use eframe::egui;

mod dialogs;
mod export;
mod files;
mod heatmap;
mod panels;
mod prompt_editor;
mod state;
mod viewer;
mod worker;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use egui::{Key, KeyboardShortcut, Modifiers};

use crate::options::{GuiArgs, ModelArgs};
use crate::clip::{ClipTokenizer, Precision};
use crate::detect::{DetectSettings, references};
use crate::prompts::PromptStore;
use crate::recipe::{Recipe, Recipes};
use crate::recipe::legacy::{self, LEGACY_DIR};
use crate::prompts::generate::{self, CLIP_CONTEXT, GenerateEvent, Generated, QueryKind};
use crate::prompts::llm::LlmClient;

pub use crate::detect::colormap::Colormap;
pub use heatmap::SHADER_SOURCE;
pub use state::{AppState, Filter, LlmStatus, ModelStatus, Normalisation, Settings, SortKey, Verdict};

use heatmap::HeatmapContent;
use dialogs::{BrowseState, PathPrompt, PromptAction, Purpose};
use prompt_editor::PromptEditor;
use state::{Entry, SelectionStep, Shown};
use viewer::ViewTransform;
use worker::{Message, Workers};

/// Images PageUp / PageDown move.
const PAGE: usize = 10;

/// Key of the remembered settings in eframe's storage.
const SETTINGS_KEY: &str = "alfa-settings";

/// How the app starts.
#[derive(Debug, Clone, Default)]
pub struct AppOptions {
    pub args: GuiArgs,
    /// Text-feature cache folder (`None`: memory only, as in tests).
    pub cache_dir: Option<PathBuf>,
    /// The recipes folder (`--recipes`): class prompt sets, references and thresholds
    /// are read and saved there (`None`: the one remembered in Settings, else
    /// `$ALFA_RECIPES`, else the per-user data folder).
    pub recipes_dir: Option<PathBuf>,
    /// Save a screenshot here once the first results are on screen, then close.
    pub screenshot: Option<PathBuf>,
}

/// Opens the window.
pub fn run(args: GuiArgs) -> Result<()> {
    let recipes_dir = args.recipes.clone();
    run_with(AppOptions { args, cache_dir: crate::detect::text_cache::default_cache_dir(), recipes_dir, screenshot: None })
}

/// `alfa screenshot`: the window with `args` loaded, saved to `out` once analysed.
pub fn screenshot(args: GuiArgs, out: PathBuf) -> Result<()> {
    run_with(AppOptions {
        recipes_dir: args.recipes.clone(),
        args,
        cache_dir: crate::detect::text_cache::default_cache_dir(),
        screenshot: Some(out),
    })
}

fn run_with(options: AppOptions) -> Result<()> {
    let native = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("alfa — anomaly inspection")
            .with_inner_size([1400.0, 900.0])
            .with_drag_and_drop(true),
        renderer: eframe::Renderer::Wgpu,
        // A screenshot run must not pick up a user's saved layout.
        persist_window: options.screenshot.is_none(),
        ..Default::default()
    };
    eframe::run_native("alfa", native, Box::new(move |cc| Ok(Box::new(AlfaApp::new(cc, options)))))
        .map_err(|e| anyhow::anyhow!("cannot open the window: {e}"))
}

/// The side panel's pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SideTab {
    Why,
    Prompts,
    Settings,
}

pub struct AlfaApp {
    pub state: AppState,
    workers: Workers,
    editor: Option<PromptEditor>,
    view: ViewTransform,
    /// The image pixel under the pointer in the last frame, for the readout.
    hover_pixel: Option<[u32; 2]>,
    /// The heatmap pipeline is installed (the wgpu renderer is there).
    gpu: bool,
    tab: SideTab,
    show_help: bool,
    /// The class box's text, applied on Enter.
    class_input: String,
    /// The window scales box's text as typed, and why it is not applied.
    scales_input: String,
    /// The recipes folder box's text, applied on Enter or "Use folder".
    recipes_input: String,
    scales_error: Option<String>,
    /// Prompt editors with unsaved edits of classes switched away from: switching
    /// back brings the edits back.
    parked_editors: std::collections::HashMap<String, PromptEditor>,
    /// The path window (open, add references, export, …), when open.
    path_prompt: Option<PathPrompt>,
    browse: BrowseState,
    /// The compare request in flight: its id, and the (image, method) it is for.
    compare_asked: Option<(u64, (worker::ItemId, crate::detect::MethodKind))>,
    /// An export that would replace files, waiting for the user's answer.
    pending_export: Option<(PathBuf, export::Export, Vec<PathBuf>)>,
    /// `--arch` from the command line; the model and the tokenizer are in settings.
    model_extra: ModelArgs,
    next_id: worker::ItemId,
    content: Option<HeatmapContent>,
    screenshot: Option<PathBuf>,
    screenshot_requested: bool,
    prompt_sort: panels::PromptSort,
    /// The editor's Undo button was pressed (applied after the editor is drawn).
    undo_requested: bool,
    /// The keyboard moved the selection: scroll the list to it.
    scroll_to_selected: bool,
    persist: bool,
    /// The recipes folder; `prompts` resolves class prompt sets in it.
    recipes: Recipes,
    prompts: PromptStore,
    /// A recipe changed by a threshold, written once the pointer is released (a slider
    /// being dragged would write it every frame).
    recipe_to_write: Option<Recipe>,
    /// Where the References section was drawn: files dropped there become references.
    references_rect: Option<egui::Rect>,
    /// The nearest reference window on screen in the Why panel, and its picture.
    nearest_crop: Option<(String, Option<egui::TextureHandle>)>,
    /// The worst patch of the image on screen, keyed by (item, patch): cut and
    /// uploaded once, not every frame.
    worst_crop: Option<((worker::ItemId, [usize; 2]), egui::TextureHandle)>,
    /// Numbers "Generate more…" requests, so a cancelled one's late answer is dropped.
    next_llm_id: u64,
    /// Frames drawn so far (responsiveness is measured in frames).
    pub frames: u64,
}

impl AlfaApp {
    /// Builds the app on a creation context, from eframe or from a test harness.
    pub fn new(cc: &eframe::CreationContext<'_>, options: AppOptions) -> Self {
        let remembered: Option<Settings> = if options.screenshot.is_none() {
            cc.storage.and_then(|s| eframe::get_value(s, SETTINGS_KEY))
        } else {
            None
        };
        let (mut settings, notices) = remembered.unwrap_or_default().checked();
        let args = options.args;
        if let Some(model) = &args.model.model {
            settings.model = model.clone();
        }
        if let Some(tokenizer) = &args.model.tokenizer {
            settings.tokenizer = tokenizer.display().to_string();
        }
        if args.model.cpu {
            settings.cpu = true;
        }
        if args.model.precision != Precision::F32 {
            settings.precision = args.model.precision;
        }
        if let Some(class) = &args.class {
            settings.class = class.clone();
        }
        let mut notices = notices;
        if let Some(dir) = &options.recipes_dir {
            settings.recipes = dir.display().to_string();
        }
        let recipes = locate_recipes(&settings.recipes).unwrap_or_else(|e| {
            let fallback = Recipes::new("recipes");
            notices.push(format!("{e}: using {}", fallback.root.display()));
            fallback
        });
        let gpu = match &cc.wgpu_render_state {
            Some(render_state) => {
                heatmap::install(render_state);
                true
            }
            None => false,
        };
        let workers = Workers::spawn(&cc.egui_ctx, options.cache_dir);
        let mut app = Self {
            class_input: settings.class.clone(),
            scales_input: scales_text(&settings.detect.scales),
            recipes_input: settings.recipes.clone(),
            scales_error: None,
            parked_editors: Default::default(),
            path_prompt: None,
            browse: BrowseState::detect(),
            pending_export: None,
            compare_asked: None,
            state: AppState::new(settings),
            workers,
            editor: None,
            view: ViewTransform::default(),
            hover_pixel: None,
            gpu,
            tab: SideTab::Why,
            show_help: false,
            model_extra: args.model,
            next_id: 0,
            content: None,
            screenshot_requested: false,
            prompt_sort: panels::PromptSort::default(),
            undo_requested: false,
            scroll_to_selected: false,
            persist: options.screenshot.is_none(),
            // Always a folder, existing or not: a set saved there is found from then
            // on (a store without one would keep resolving to the built-in set).
            prompts: PromptStore::in_recipes(&recipes),
            recipes,
            recipe_to_write: None,
            references_rect: None,
            nearest_crop: None,
            worst_crop: None,
            next_llm_id: 0,
            screenshot: options.screenshot,
            frames: 0,
        };
        if !notices.is_empty() {
            app.state.notice = Some(notices.join("; "));
        }
        app.find_legacy();
        app.load_model();
        app.set_class(app.state.settings.class.clone());
        if !args.paths.is_empty() {
            // A class named on the command line wins over the one the layout names.
            app.open_images(&args.paths, args.class.is_none());
        }
        app
    }

    fn model_args(&self) -> ModelArgs {
        let model = self.state.settings.model.trim();
        let tokenizer = self.state.settings.tokenizer.trim();
        ModelArgs {
            model: (!model.is_empty()).then(|| model.to_owned()),
            tokenizer: (!tokenizer.is_empty()).then(|| PathBuf::from(tokenizer)),
            cpu: self.state.settings.cpu,
            precision: self.state.settings.precision,
            ..self.model_extra.clone()
        }
    }

    /// (Re)loads the model on the worker; queued analyses wait for it.
    pub fn load_model(&mut self) {
        let args = self.model_args();
        self.state.model_stamp = None;
        self.state.model = Some(ModelStatus::Loading {
            model: args.model.clone().unwrap_or_else(|| crate::clip::DEFAULT_MODEL.into()),
            file: String::new(),
            done: 0,
            total: 0,
        });
        let dinov2 = self.state.settings.dino_model.trim();
        self.workers.load_model(args, (!dinov2.is_empty()).then(|| dinov2.to_owned()));
        self.analyse_all();
    }

    /// Switches to `class`'s prompt set and re-analyses. Unsaved edits of the class
    /// left are kept for when it comes back; the same class again changes nothing.
    pub fn set_class(&mut self, class: String) {
        let class = class.trim().to_owned();
        if class.is_empty() {
            return;
        }
        if self.editor.as_ref().is_some_and(|e| e.applied.class.id == class) && self.state.settings.class == class {
            // The same class again keeps the prompt editor (its edits and undo) and
            // picks up references added meanwhile (e.g. by `alfa refs add`).
            self.class_input = class;
            let before = self.state.reference_files.clone();
            self.refresh_reference_views();
            if self.state.reference_files != before {
                self.analyse_all();
            }
            return;
        }
        let parked = self.parked_editors.remove(&class);
        let resolved = match parked {
            Some(editor) => Ok(editor),
            None => self.prompts.resolve(&class).map(PromptEditor::new),
        };
        match resolved {
            Ok(editor) => {
                if let Some(old) = self.editor.replace(editor).filter(|e| e.unsaved) {
                    self.state.notice = Some(format!(
                        "the unsaved prompt edits of `{}` are kept until you switch back to it",
                        old.applied.class.id
                    ));
                    self.parked_editors.insert(old.applied.class.id.clone(), old);
                }
                self.class_input = class.clone();
                self.state.settings.class = class;
                self.state.threshold_fit = None;
                self.read_recipe();
                self.refresh_reference_views();
                self.analyse_all();
            }
            Err(e) => self.state.notice = Some(format!("cannot read the prompts of `{class}`: {e}")),
        }
    }

    /// Replaces the list with the images in `paths` and starts their analysis; the
    /// class becomes the one an MVTec AD layout names (`<class>/test/<defect>/`).
    pub fn open(&mut self, paths: &[PathBuf]) {
        self.open_images(paths, true);
    }

    fn open_images(&mut self, paths: &[PathBuf], class_from_layout: bool) {
        let found = files::scan(paths);
        if found.is_empty() {
            self.state.notice = Some("no images found there".into());
            return;
        }
        let mut classes: Vec<String> = found.iter().filter_map(|f| crate::detect::inputs::layout_class(&f.path)).collect();
        classes.sort();
        classes.dedup();
        match classes.as_slice() {
            [class] if class_from_layout && *class != self.state.settings.class => {
                self.set_class(class.clone());
                self.state.notice = Some(format!("class `{class}`, as the folder layout names it (…/{class}/test/…)"));
            }
            [_, _, ..] => {
                self.state.notice = Some(format!(
                    "the images are of {} classes ({}): all are analysed as `{}`; open one class at a time",
                    classes.len(),
                    classes.join(", "),
                    self.state.settings.class
                ));
            }
            _ => {}
        }
        self.state.entries = found
            .into_iter()
            .map(|f| {
                self.next_id += 1;
                Entry {
                    id: self.next_id,
                    path: f.path,
                    name: f.name,
                    thumbnail: None,
                    preview: None,
                    error: None,
                    analysis: None,
                    compare: None,
                    stale: false,
                }
            })
            .collect();
        self.state.shown = None;
        self.state.decoded.clear();
        self.content = None;
        self.view.fit();
        self.workers.thumbnails(self.state.entries.iter().map(|e| (e.id, e.path.clone())).collect());
        let first = self.state.visible().first().copied();
        if let Some(first) = first {
            self.select(first);
        }
        self.analyse_all();
    }

    /// Shows the image at `index`: its picture at once when it was decoded ahead,
    /// else its thumbnail scaled up until the picture arrives; the neighbours in the
    /// list are decoded next.
    pub fn select(&mut self, index: usize) {
        let Some(entry) = self.state.entries.get(index) else { return };
        self.state.selected = Some(index);
        let id = entry.id;
        if self.state.shown.as_ref().is_none_or(|s| s.id != id) {
            self.content = None;
            match self.state.decoded.iter().find(|s| s.id == id).cloned() {
                Some(shown) => self.state.shown = Some(shown),
                None => self.workers.picture(id, entry.path.clone()),
            }
        }
        let visible = self.state.visible();
        let neighbours = visible.iter().position(|&i| i == index).map_or_else(Vec::new, |p| {
            [p + 1, p.wrapping_sub(1), p + 2]
                .into_iter()
                .filter_map(|q| visible.get(q))
                .map(|&i| &self.state.entries[i])
                .filter(|e| !self.state.decoded.iter().any(|s| s.id == e.id))
                .map(|e| (e.id, e.path.clone()))
                .collect()
        });
        self.workers.prefetch(neighbours);
    }

    /// Analyses every image with the current prompts and settings, the selected one
    /// first, superseding any running analysis.
    pub fn analyse_all(&mut self) {
        let Some(editor) = &self.editor else { return };
        if self.state.entries.is_empty() {
            return;
        }
        let selected = self.state.selected;
        let mut order: Vec<usize> = (0..self.state.entries.len()).collect();
        if let Some(s) = selected {
            order.retain(|&i| i != s);
            order.insert(0, s);
        }
        let items = order.iter().map(|&i| (self.state.entries[i].id, self.state.entries[i].path.clone())).collect();
        for entry in &mut self.state.entries {
            entry.stale = entry.analysis.is_some();
            entry.compare = None;
        }
        self.compare_asked = None;
        let references = self.state.references().to_vec();
        let method = self.state.settings.method;
        let generation = self.workers.analyse(method, editor.applied.clone(), self.state.settings.detect.clone(), references, items);
        self.state.progress =
            state::Progress { generation, done: 0, total: order.len(), running: true, error: None, references: None };
    }

    /// The recipes folder: the class's prompt set, references and thresholds are there.
    pub fn recipes(&self) -> &Recipes {
        &self.recipes
    }

    /// Reads the current class's recipe. Its method and settings become the ones in
    /// use (what its thresholds were set with); a recipe that cannot be read is
    /// named with its line, and the app goes on without it.
    fn read_recipe(&mut self) {
        let class = self.state.settings.class.clone();
        self.state.recipe_error = None;
        self.state.recipe = match self.recipes.read(&class) {
            Ok(recipe) => recipe,
            Err(e) => {
                self.state.recipe_error = Some(e.to_string());
                self.state.notice = Some(format!("the recipe of `{class}` is not used: {e}"));
                None
            }
        };
        let Some(method) = self.state.recipe.as_ref().and_then(|r| r.method.clone()) else { return };
        let settings = method.settings();
        let s = &mut self.state.settings;
        if s.method != method.name || s.detect != settings {
            s.method = method.name;
            s.detect = settings;
            self.scales_input = scales_text(&s.detect.scales);
            self.scales_error = None;
            self.state.notice = Some(format!(
                "method and settings from the recipe of `{class}`: {}, scales {}",
                panels::method_label(method.name),
                scales_text(&method.scales)
            ));
        }
    }

    /// Another recipes folder (Settings): the class's prompt set, references and
    /// thresholds are read from it.
    pub fn set_recipes_dir(&mut self, dir: &str) {
        match locate_recipes(dir) {
            Ok(recipes) => {
                self.state.settings.recipes = dir.trim().to_owned();
                self.prompts = PromptStore::in_recipes(&recipes);
                self.recipes = recipes;
                self.recipe_to_write = None;
                self.find_legacy();
                self.reload_class();
                self.state.notice = Some(format!("recipes in {}", self.recipes.root.display()));
            }
            Err(e) => self.state.notice = Some(e.to_string()),
        }
    }

    /// Reads the class's prompt set, recipe and references again (unsaved prompt
    /// edits are kept for when the class comes back, as on a class switch).
    fn reload_class(&mut self) {
        let class = self.state.settings.class.clone();
        if !self.editor.as_ref().is_some_and(|e| e.unsaved && e.applied.class.id == class) {
            match self.prompts.resolve(&class) {
                Ok(resolved) => self.editor = Some(PromptEditor::new(resolved)),
                Err(e) => self.state.notice = Some(format!("cannot read the prompts of `{class}`: {e}")),
            }
        }
        self.read_recipe();
        self.refresh_reference_views();
        self.analyse_all();
    }

    /// Looks for class files of the old layout (`./prompts`) that the recipes lack.
    fn find_legacy(&mut self) {
        self.state.legacy = legacy::find(std::path::Path::new(LEGACY_DIR), &self.recipes).into_iter().filter(|c| !c.settled()).collect();
    }

    /// Copies the old layout's class files into the recipes (the originals stay) and
    /// reads the class again.
    pub fn migrate_legacy(&mut self) {
        match legacy::migrate(std::path::Path::new(LEGACY_DIR), &self.recipes, false) {
            Ok(done) => {
                let skipped = done.skipped.first().map(|(f, why)| format!("; left {}: {why}", f.display())).unwrap_or_default();
                self.state.notice = Some(format!(
                    "copied {} file(s) from {LEGACY_DIR}/ into {} (the originals stay){skipped}",
                    done.copied.len(),
                    self.recipes.root.display()
                ));
                self.state.legacy.clear();
                self.reload_class();
            }
            Err(e) => self.state.notice = Some(format!("migration failed: {e}")),
        }
    }

    /// "Not now": the offer goes until the next start.
    pub fn dismiss_legacy(&mut self) {
        self.state.legacy.clear();
    }

    /// Makes `thresholds` the class's: into its recipe (written when the pointer is
    /// released), or remembered until the model is loaded.
    pub fn set_thresholds(&mut self, thresholds: state::Thresholds) {
        if let Some(recipe) = self.state.set_thresholds(thresholds) {
            self.recipe_to_write = Some(recipe);
        }
    }

    /// Writes the recipe a threshold changed, once no slider is held.
    fn write_recipe(&mut self, ctx: &egui::Context) {
        if self.recipe_to_write.is_none() || ctx.input(|i| i.pointer.any_down()) {
            return;
        }
        let Some(recipe) = self.recipe_to_write.take() else { return };
        if let Err(e) = self.recipes.write(&recipe) {
            self.state.notice = Some(format!("the thresholds are not saved: {e}"));
        }
    }

    /// Asks the engine for the compare view's second result of the image on screen,
    /// once per (image, method) until prompts or settings change.
    fn request_compare(&mut self) {
        let Some(kind) = self.state.settings.compare.filter(|&k| k != self.state.settings.method) else { return };
        let Some(editor) = &self.editor else { return };
        let Some(entry) = self.state.selected.and_then(|i| self.state.entries.get(i)) else { return };
        let wanted = (entry.id, kind);
        if entry.compare.as_ref().is_some_and(|c| c.method == kind) || self.compare_asked.is_some_and(|(_, asked)| asked == wanted) {
            return;
        }
        let id = self.workers.compare(worker::CompareJob {
            id: 0,
            method: kind,
            prompts: editor.applied.clone(),
            settings: self.state.settings.detect.clone(),
            references: self.state.references().to_vec(),
            item: (entry.id, entry.path.clone()),
        });
        self.compare_asked = Some((id, wanted));
    }

    /// The class's reference folder, `<recipes>/<class>/refs/`: the one `alfa refs`
    /// edits and `alfa detect` reads, so references made here serve the CLI too.
    pub fn references_dir(&self) -> PathBuf {
        self.recipes.refs_dir(&self.state.settings.class)
    }

    /// Copies images (files or folders) into the class's references (on the loader
    /// thread); the analysis restarts when they are there.
    pub fn add_references(&mut self, paths: &[PathBuf]) {
        let found: Vec<PathBuf> = files::scan(paths).into_iter().map(|image| image.path).collect();
        if found.is_empty() {
            self.state.notice = Some("no images there".into());
            return;
        }
        self.workers.copy_references(self.references_dir(), found);
    }

    /// Deletes a reference's copy from the class's folder (the original stays).
    pub fn remove_reference(&mut self, path: &std::path::Path) {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if let Err(e) = references::remove_references(&self.references_dir(), &[name]) {
            self.state.notice = Some(e.to_string());
        }
        self.refresh_reference_views();
        self.analyse_all();
    }

    /// "Mark as good reference": the image on screen becomes a reference.
    pub fn mark_selected_as_reference(&mut self) {
        if let Some(path) = self.state.selected.and_then(|i| self.state.entries.get(i)).map(|e| e.path.clone()) {
            self.add_references(&[path]);
        }
    }

    /// Reads the class's reference folder and makes the References section match it;
    /// new ones get thumbnails.
    fn refresh_reference_views(&mut self) {
        self.state.reference_files = references::list_references(&self.references_dir()).unwrap_or_else(|e| {
            self.state.notice = Some(e.to_string());
            Vec::new()
        });
        let mut old = std::mem::take(&mut self.state.reference_views);
        let mut wanted = Vec::new();
        for path in self.state.references().to_vec() {
            match old.iter().position(|v| v.path == path) {
                Some(i) => self.state.reference_views.push(old.swap_remove(i)),
                None => {
                    self.next_id += 1;
                    wanted.push((self.next_id, path.clone()));
                    self.state.reference_views.push(state::ReferenceView { id: self.next_id, path, thumbnail: None, error: None });
                }
            }
        }
        if !wanted.is_empty() {
            self.workers.thumbnails(wanted);
        }
    }

    /// Sets the threshold from the references' scores, each scored against the others.
    pub fn threshold_from_references(&mut self) {
        let references = self.state.references().to_vec();
        if references.is_empty() {
            self.state.notice = Some("add good reference images first".into());
            return;
        }
        self.start_threshold(references, "the references".into(), vec![crate::recipe::REFS_DIR.into()]);
    }

    /// Sets the threshold from the good images in `folder`.
    pub fn threshold_from_folder(&mut self, folder: &std::path::Path) {
        let good: Vec<PathBuf> = files::scan(&[folder.to_owned()]).into_iter().map(|f| f.path).collect();
        if good.is_empty() {
            self.state.notice = Some(format!("no images in {}", folder.display()));
            return;
        }
        let name = folder.file_name().map_or_else(|| folder.display().to_string(), |n| n.to_string_lossy().into_owned());
        let recorded = std::path::absolute(folder).unwrap_or_else(|_| folder.to_owned()).display().to_string();
        self.start_threshold(good, format!("folder {name}"), vec![recorded]);
    }

    /// `recorded`: where the good images came from, as the recipe records it.
    fn start_threshold(&mut self, good: Vec<PathBuf>, source: String, recorded: Vec<String>) {
        let Some(editor) = &self.editor else { return };
        if self.state.settings.method != crate::detect::MethodKind::Alfa {
            self.state.notice = Some("thresholds are fitted from good images for ALFA; set a baseline's by hand".into());
            return;
        }
        let total = good.len();
        let id = self.workers.threshold(worker::ThresholdJob {
            id: 0,
            prompts: editor.applied.clone(),
            settings: self.state.settings.detect.clone(),
            references: self.state.references().to_vec(),
            good,
            fpr: self.state.settings.target_fpr,
            source,
        });
        self.state.threshold_task = Some(state::ThresholdTask { id, done: 0, total, references: None, good: recorded });
    }

    /// "Generate more…": asks the LLM for more prompts of the class on a helper thread;
    /// the answer becomes an undoable edit of the editor (not saved).
    pub fn generate_more(&mut self) {
        let Some(editor) = &self.editor else { return };
        let client = match LlmClient::new(self.state.settings.llm.clone()) {
            Ok(client) => client,
            Err(e) => return self.state.llm = Some(state::LlmStatus::Failed(e.to_string())),
        };
        self.next_llm_id += 1;
        let id = self.next_llm_id;
        let samples = self.state.settings.llm_samples.max(1);
        let class_name = editor.applied.class.name.clone();
        let model = self.model_args();
        let request = model.request(None);
        self.state.llm = Some(state::LlmStatus::Asking {
            id,
            endpoint: client.endpoint().to_owned(),
            done: 0,
            total: QueryKind::ALL.len() * samples,
        });
        let outbox = self.workers.outbox();
        std::thread::spawn(move || {
            // A panic (a bug) must still end the spinner with a message.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<(Generated, String), String> {
                let tokenizer = ClipTokenizer::load(&request.resolve_tokenizer(), CLIP_CONTEXT).map_err(|e| e.to_string())?;
                let generated = generate::generate(&client, &tokenizer, &class_name, samples, &mut |event| {
                    if let GenerateEvent::Answered { done, total, .. } = event {
                        outbox.send(Message::LlmAnswered { id, done, total });
                    }
                })
                .map_err(|e| e.to_string())?;
                Ok((generated, generate::provenance(&client, samples, std::time::SystemTime::now())))
            }))
            .unwrap_or_else(|payload| Err(format!("the LLM request failed ({})", worker::panic_text(payload.as_ref()))));
            outbox.send(Message::Generated { id, outcome });
        });
    }

    /// Forgets the running request: its answer, when it comes, is dropped.
    pub fn cancel_generate(&mut self) {
        self.state.llm = None;
    }

    pub fn cancel_threshold(&mut self) {
        self.workers.cancel_threshold();
        self.state.threshold_task = None;
    }

    pub fn cancel(&mut self) {
        self.workers.cancel();
        self.state.progress.running = false;
    }

    fn handle_messages(&mut self, ctx: &egui::Context) {
        while let Ok(message) = self.workers.messages.try_recv() {
            self.handle(ctx, message);
        }
    }

    fn handle(&mut self, ctx: &egui::Context, message: Message) {
        let state = &mut self.state;
        match message {
            Message::ModelLoading { model } => {
                state.model = Some(ModelStatus::Loading { model, file: String::new(), done: 0, total: 0 });
            }
            Message::Download { file: f, done: d, total: t } => {
                if let Some(ModelStatus::Loading { file, done, total, .. }) = &mut state.model {
                    (*file, *done, *total) = (f, d, t);
                }
            }
            Message::ModelReady { name, precision, grid, stamp } => {
                state.model = Some(ModelStatus::Ready { model: name, precision, grid });
                state.model_stamp = stamp;
                // Scales typed or remembered for another model may not fit this one.
                if let Err(e) = state.settings.detect.validate(grid) {
                    let mut scales: Vec<usize> = DetectSettings::default().scales.into_iter().filter(|&s| s <= grid).collect();
                    if scales.is_empty() {
                        scales = vec![1];
                    }
                    state.notice = Some(format!("{e}: window scales set to {} for this model", scales_text(&scales)));
                    state.settings.detect.scales = scales;
                    self.scales_input = scales_text(&self.state.settings.detect.scales);
                    self.scales_error = None;
                    self.analyse_all();
                }
            }
            Message::ModelFailed { model, error } => state.model = Some(ModelStatus::Failed { model, error }),
            Message::PromptsEncoded { generation, encoded, seconds } => {
                if generation == state.progress.generation {
                    state.last_encoding = Some((encoded, seconds));
                }
            }
            Message::Analysed { generation, id, outcome } => {
                if generation != state.progress.generation {
                    return;
                }
                state.progress.done += 1;
                let Some(index) = state.index_of(id) else { return };
                let entry = &mut state.entries[index];
                entry.stale = false;
                match outcome {
                    Ok(analysis) => {
                        entry.analysis = Some(analysis);
                        entry.error = None;
                    }
                    Err(e) => {
                        entry.analysis = None;
                        entry.error = Some(e);
                    }
                }
                if state.selected == Some(index) {
                    self.content = None;
                }
            }
            Message::Compared { id, item, outcome } => {
                if self.compare_asked.is_none_or(|(asked, _)| asked != id) {
                    return;
                }
                let Some(index) = state.index_of(item) else { return };
                match outcome {
                    Ok(analysis) => state.entries[index].compare = Some(analysis),
                    Err(e) => {
                        state.notice = Some(format!("compare: {e}"));
                        // Asked once: a failure is not asked again for this image.
                        return;
                    }
                }
                self.compare_asked = None;
            }
            Message::AnalysisDone { generation, error } => {
                if generation == state.progress.generation {
                    state.progress.running = false;
                    state.progress.error = error;
                }
            }
            Message::References { task, done, total } => match task {
                worker::Task::Analysis(generation) if generation == state.progress.generation => {
                    state.progress.references = Some((done, total));
                }
                worker::Task::Threshold(id) => {
                    if let Some(t) = state.threshold_task.as_mut().filter(|t| t.id == id) {
                        t.references = Some((done, total));
                    }
                }
                worker::Task::Analysis(_) | worker::Task::Compare(_) => {}
            },
            Message::ReferencesReady { task, used, skipped } => {
                match task {
                    worker::Task::Analysis(generation) if generation == state.progress.generation => {
                        state.progress.references = None;
                    }
                    worker::Task::Threshold(id) => {
                        if let Some(t) = state.threshold_task.as_mut().filter(|t| t.id == id) {
                            t.references = None;
                        }
                    }
                    worker::Task::Analysis(_) | worker::Task::Compare(_) => {}
                }
                for (path, reason) in &skipped {
                    if let Some(view) = state.reference_views.iter_mut().find(|v| &v.path == path) {
                        view.error = Some(reason.clone());
                    }
                }
                if !skipped.is_empty() {
                    state.notice = Some(format!("{} reference image(s) could not be read; {used} used", skipped.len()));
                }
            }
            Message::ThresholdScored { id, done, total } => {
                if let Some(t) = state.threshold_task.as_mut().filter(|t| t.id == id) {
                    (t.done, t.total) = (done, total);
                }
            }
            Message::ThresholdDone { id, outcome } => {
                let Some(task) = state.threshold_task.take_if(|t| t.id == id) else { return };
                match outcome {
                    Ok(fit) => {
                        let n = fit.scores.len();
                        let record = |value| crate::recipe::ThresholdRecord::from_good_images(value, fit.fpr, task.good.clone(), n);
                        let thresholds = state::Thresholds {
                            image: state::Threshold::of(record(fit.image)),
                            region: state::Threshold::of(record(fit.region)),
                        };
                        let left_out = fit.skipped.first().map(|(_, reason)| {
                            format!("; {} unreadable image(s) left out: {reason}", fit.skipped.len())
                        });
                        let warnings: String = fit.warnings.iter().map(|w| format!("; warning: {w}")).collect();
                        state.threshold_fit = Some(fit);
                        self.set_thresholds(thresholds);
                        let state = &mut self.state;
                        let saved = match &self.recipe_to_write {
                            Some(_) => format!(" (in {})", self.recipes.recipe_file(&state.settings.class).display()),
                            None => String::new(),
                        };
                        state.notice = Some(state.threshold_origin() + &saved + &left_out.unwrap_or_default() + &warnings);
                    }
                    Err(e) => state.notice = Some(format!("no threshold from good images: {e}")),
                }
            }
            Message::LlmAnswered { id, done: d, total: t } => {
                if let Some(state::LlmStatus::Asking { id: asking, done, total, .. }) = &mut state.llm
                    && *asking == id
                {
                    (*done, *total) = (d, t);
                }
            }
            Message::Generated { id, outcome } => {
                if !matches!(state.llm, Some(state::LlmStatus::Asking { id: asking, .. }) if asking == id) {
                    return;
                }
                match (outcome, &mut self.editor) {
                    (Ok((generated, source)), Some(editor)) => {
                        let (_, [normal, abnormal, descriptors]) = editor.add_generated(&generated, &source);
                        self.state.llm = Some(state::LlmStatus::Added { normal, abnormal, descriptors });
                        self.analyse_all();
                    }
                    (Ok(_), None) => self.state.llm = None,
                    (Err(e), _) => self.state.llm = Some(state::LlmStatus::Failed(e)),
                }
            }
            Message::ReferencesCopied { outcome } => match outcome {
                Ok(copied) => {
                    let refused = copied.refused.first().map(|(path, reason)| {
                        let more = copied.refused.len() - 1;
                        let more = if more > 0 { format!(" (and {more} more)") } else { String::new() };
                        format!("not added, cannot be read: {} ({reason}){more}", path.display())
                    });
                    state.notice = match (copied.added.len(), refused) {
                        (0, None) => Some("no new reference images there".into()),
                        (_, refused) => refused,
                    };
                    if !copied.added.is_empty() {
                        self.refresh_reference_views();
                        self.analyse_all();
                    }
                }
                Err(e) => state.notice = Some(e),
            },
            Message::Crop { key, outcome } => {
                if let Some((shown_key, texture)) = self.nearest_crop.as_mut().filter(|(k, _)| *k == key) {
                    match outcome {
                        Ok(image) => *texture = Some(ctx.load_texture(shown_key.clone(), image, egui::TextureOptions::LINEAR)),
                        Err(e) => state.notice = Some(format!("cannot show the reference window: {e}")),
                    }
                }
            }
            Message::Thumbnail { id, outcome } => {
                if let Some(view) = state.reference_views.iter_mut().find(|v| v.id == id) {
                    match outcome {
                        Ok(thumbnail) => {
                            let texture = ctx.load_texture(format!("reference-{id}"), thumbnail.color, egui::TextureOptions::LINEAR);
                            view.thumbnail = Some(texture);
                        }
                        Err(e) => view.error = Some(e),
                    }
                    return;
                }
                let Some(index) = state.index_of(id) else { return };
                match outcome {
                    Ok(thumbnail) => {
                        let texture = ctx.load_texture(format!("thumbnail-{id}"), thumbnail.color, egui::TextureOptions::LINEAR);
                        let entry = &mut state.entries[index];
                        entry.thumbnail = Some(texture);
                        entry.preview = Some((thumbnail.pixels, thumbnail.size));
                        if state.selected == Some(index) && state.shown.as_ref().is_none_or(|s| s.id != id) {
                            self.content = None;
                        }
                    }
                    Err(e) => state.entries[index].error = Some(e),
                }
            }
            Message::Picture { id, outcome } => {
                let Some(index) = state.index_of(id) else { return };
                match outcome {
                    Ok(picture) => {
                        let shown = Shown { id, picture };
                        if state.selected == Some(index) {
                            state.shown = Some(shown.clone());
                            self.content = None;
                        }
                        state.keep_decoded(shown);
                    }
                    Err(e) => state.entries[index].error = Some(e),
                }
            }
            Message::Picked(pick) => {
                self.path_prompt = None;
                self.picked(pick);
            }
            Message::DialogFailed(purpose) => {
                self.browse.dialog_failed();
                if self.path_prompt.is_none() {
                    self.path_prompt = Some(PathPrompt::new(purpose));
                }
                self.state.notice = Some("the system file dialog did not open: type the path instead".into());
            }
            Message::Notice(text) => state.notice = Some(text),
        }
    }

    fn picked(&mut self, pick: worker::Pick) {
        match pick {
            worker::Pick::Images(paths) => self.open(&paths),
            worker::Pick::ModelFolder(folder) => {
                self.state.settings.model = folder.display().to_string();
                self.load_model();
            }
            worker::Pick::References(paths) => self.add_references(&paths),
            worker::Pick::GoodFolder(folder) => self.threshold_from_folder(&folder),
            worker::Pick::ExportFolder(dir) => self.export_to(dir),
        }
    }

    /// What the viewer draws for the selected image, rebuilt when its picture, its
    /// thumbnail or its result changes: the picture once decoded, the thumbnail before.
    fn current_content(&mut self) -> Option<HeatmapContent> {
        if self.content.is_none() {
            let entry = self.state.entries.get(self.state.selected?)?;
            let shown = self.state.shown.as_ref().filter(|s| s.id == entry.id);
            let (image, size, mask) = match (shown, &entry.preview) {
                (Some(shown), _) => {
                    let (w, h) = shown.picture.image.dimensions();
                    (shown.picture.image.clone(), [w, h], shown.picture.mask.clone())
                }
                (None, Some((pixels, size))) => (pixels.clone(), *size, None),
                (None, None) => return None,
            };
            let map = entry.analysis.as_ref().map(|a| a.map.clone()).filter(|m| [m.width as u32, m.height as u32] == size);
            self.content = Some(HeatmapContent { image, size, map, mask });
        }
        self.content.clone()
    }

    fn shortcuts(&mut self, ctx: &egui::Context) {
        let ctrl = |key| KeyboardShortcut::new(Modifiers::COMMAND, key);
        if ctx.input_mut(|i| i.consume_shortcut(&ctrl(Key::O))) {
            self.ask_path(Purpose::OpenImages);
        }
        if ctx.input_mut(|i| i.consume_key(Modifiers::NONE, Key::F1)) {
            self.show_help = !self.show_help;
        }
        // Plain keys belong to a text box while one is focused.
        if ctx.memory(|m| m.focused().is_some()) {
            return;
        }
        if ctx.input_mut(|i| i.consume_shortcut(&ctrl(Key::Z))) {
            self.undo_prompts();
        }
        let pressed = |key| ctx.input_mut(|i| i.consume_key(Modifiers::NONE, key));
        // Every press counts, also several in one frame (a key held down, or typed
        // faster than frames are drawn).
        let count = |key| ctx.input_mut(|i| i.count_and_consume_key(Modifiers::NONE, key));
        let forward = count(Key::ArrowDown) + count(Key::ArrowRight) + PAGE * count(Key::PageDown);
        let back = count(Key::ArrowUp) + count(Key::ArrowLeft) + PAGE * count(Key::PageUp);
        let step = if pressed(Key::Home) {
            Some(SelectionStep::First)
        } else if pressed(Key::End) {
            Some(SelectionStep::Last)
        } else if forward > back {
            Some(SelectionStep::Next(forward - back))
        } else if back > forward {
            Some(SelectionStep::Previous(back - forward))
        } else {
            None
        };
        if let Some(step) = step
            && let Some(index) = self.state.step_selection(step)
        {
            self.select(index);
            self.scroll_to_selected = true;
        }
        if pressed(Key::Space) {
            self.state.settings.overlay = !self.state.settings.overlay;
        }
        if pressed(Key::Plus) || pressed(Key::Equals) {
            self.view.zoom_in();
        }
        if pressed(Key::Minus) {
            self.view.zoom_out();
        }
        if pressed(Key::F) {
            self.view.fit();
        }
        if pressed(Key::Num1) {
            self.view.actual_size(ctx.pixels_per_point());
        }
        if ctx.input(|i| i.events.iter().any(|e| matches!(e, egui::Event::Text(t) if t == "?"))) {
            self.show_help = !self.show_help;
        }
        if pressed(Key::Escape) {
            self.show_help = false;
        }
        if pressed(Key::G) {
            self.mark_selected_as_reference();
        }
    }

    /// Saves the applied prompt set in the class's recipe (prompts.toml); from then on
    /// the class resolves to that file, also when the folder did not exist when the
    /// app started.
    pub fn save_prompts(&mut self) {
        let Some(editor) = &mut self.editor else { return };
        let file = self.recipes.prompts_file(&editor.applied.class.id);
        self.state.notice = Some(match editor.save(&file) {
            Ok(path) => format!("saved {}", path.display()),
            Err(e) => format!(
                "cannot save the prompts: {e} (is the recipes folder {} writable? Settings can choose another)",
                self.recipes.root.display()
            ),
        });
    }

    /// The prompt set the analysis uses now (with unsaved edits).
    pub fn prompts(&self) -> Option<&crate::prompts::PromptSet> {
        self.editor.as_ref().map(|e| &e.applied)
    }

    pub fn undo_prompts(&mut self) {
        if self.editor.as_mut().and_then(PromptEditor::undo).is_some() {
            self.analyse_all();
        }
    }

    /// Applies a prompt edit after the typing pause.
    fn poll_editor(&mut self, ctx: &egui::Context) {
        let now = Instant::now();
        let Some(editor) = &mut self.editor else { return };
        if editor.poll(now).is_some() {
            self.analyse_all();
        } else if let Some(wait) = editor.pending(now) {
            ctx.request_repaint_after(wait);
        }
    }

    /// Opens the path window for `purpose` (typing a path, or the system dialog).
    pub fn ask_path(&mut self, purpose: Purpose) {
        self.path_prompt = Some(PathPrompt::new(purpose));
    }

    /// The path window and the overwrite question, when open.
    fn dialogs(&mut self, ctx: &egui::Context) {
        if let Some(prompt) = &mut self.path_prompt {
            match dialogs::path_prompt(ctx, prompt, &self.browse) {
                PromptAction::None => {}
                PromptAction::Close => self.path_prompt = None,
                PromptAction::Chosen(pick) => {
                    self.path_prompt = None;
                    self.picked(pick);
                }
                PromptAction::Browse { folder } => dialogs::browse(self.workers.outbox(), prompt.purpose, folder),
            }
        }
        let Some((dir, _, existing)) = &self.pending_export else { return };
        let names: Vec<String> =
            existing.iter().map(|p| p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())).collect();
        let mut answer = None;
        egui::Window::new("Replace files?")
            .collapsible(false)
            .resizable(false)
            .anchor(egui::Align2::CENTER_CENTER, egui::Vec2::ZERO)
            .show(ctx, |ui| {
            ui.label(format!("{} already has {}:", dir.display(), if names.len() == 1 { "this file" } else { "these files" }));
            for name in &names {
                ui.label(egui::RichText::new(name).monospace());
            }
            ui.horizontal(|ui| {
                if ui.button("Replace").clicked() {
                    answer = Some(true);
                }
                if ui.button("Cancel (Esc)").clicked() || ui.input(|i| i.key_pressed(Key::Escape)) {
                    answer = Some(false);
                }
            });
        });
        match answer {
            Some(true) => {
                if let Some((dir, export, _)) = self.pending_export.take() {
                    self.write_export(dir, export);
                }
            }
            Some(false) => {
                self.pending_export = None;
                self.state.notice = Some("export cancelled: nothing written".into());
            }
            None => {}
        }
    }

    /// Exports the list's scores and the image on screen into `dir`, asking first
    /// when that would replace files.
    fn export_to(&mut self, dir: PathBuf) {
        let export = self.export_of_state();
        let existing = export.existing(&dir);
        if existing.is_empty() {
            self.write_export(dir, export);
        } else {
            self.pending_export = Some((dir, export, existing));
        }
    }

    /// Encodes and writes off the UI thread.
    fn write_export(&self, dir: PathBuf, export: export::Export) {
        let outbox = self.workers.outbox();
        std::thread::spawn(move || {
            let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| export.write(&dir)));
            let text = match written {
                Ok(Ok(files)) => format!("exported {} files to {}", files.len(), dir.display()),
                Ok(Err(e)) => format!("export failed: {e}"),
                Err(payload) => format!("export failed ({})", worker::panic_text(payload.as_ref())),
            };
            outbox.send(Message::Notice(text));
        });
    }

    /// Files dropped on the References section, or with Shift held, become references;
    /// elsewhere they replace the image list.
    fn dropped_files(&mut self, ctx: &egui::Context) {
        let (dropped, pointer, shift): (Vec<PathBuf>, _, _) = ctx.input(|i| {
            let paths = i.raw.dropped_files.iter().map(|f| f.path().to_owned()).collect();
            (paths, i.pointer.latest_pos(), i.modifiers.shift)
        });
        if dropped.is_empty() {
            return;
        }
        let on_references = pointer.zip(self.references_rect).is_some_and(|(p, r)| r.contains(p));
        if shift || on_references {
            self.add_references(&dropped);
        } else {
            self.open(&dropped);
        }
    }

    /// `alfa screenshot`: waits for the model, the analysis and the picture, then
    /// saves the window and closes it.
    fn screenshot_step(&mut self, ctx: &egui::Context) {
        let Some(out) = &self.screenshot else { return };
        let model_settled = !matches!(self.state.model, Some(ModelStatus::Loading { .. }));
        let ready = model_settled
            && !self.state.progress.running
            && (self.state.entries.is_empty() || self.state.shown.is_some());
        if ready && !self.screenshot_requested {
            self.screenshot_requested = true;
            let (out, closer) = (out.clone(), ctx.clone());
            ctx.request_screenshot(move |image| {
                match save_color_image(&image, &out) {
                    Ok(()) => eprintln!("screenshot saved to {}", out.display()),
                    Err(e) => eprintln!("error: cannot save the screenshot: {e:#}"),
                }
                closer.send_viewport_cmd(egui::ViewportCommand::Close);
                closer.request_repaint();
            });
        }
        // Keep frames coming until the window closes.
        ctx.request_repaint();
    }
}

/// The recipes folder Settings name (`--recipes`), or `$ALFA_RECIPES`, or the default.
fn locate_recipes(dir: &str) -> Result<Recipes, crate::recipe::RecipeError> {
    let dir = dir.trim();
    Recipes::locate((!dir.is_empty()).then(|| std::path::Path::new(dir)))
}

/// Window scales as the Settings box shows them: `2, 3`.
fn scales_text(scales: &[usize]) -> String {
    scales.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
}

fn save_color_image(image: &egui::ColorImage, path: &std::path::Path) -> Result<()> {
    let [w, h] = image.size;
    let rgba: Vec<u8> = image.pixels.iter().flat_map(|c| c.to_array()).collect();
    let buffer = image::RgbaImage::from_raw(w as u32, h as u32, rgba)
        .ok_or_else(|| anyhow::anyhow!("the screenshot has an inconsistent size"))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    buffer.save(path)?;
    Ok(())
}

impl eframe::App for AlfaApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        self.frames += 1;
        self.handle_messages(&ctx);
        self.dropped_files(&ctx);
        self.shortcuts(&ctx);
        self.poll_editor(&ctx);
        self.request_compare();
        self.panels(ui);
        self.dialogs(&ctx);
        self.write_recipe(&ctx);
        self.screenshot_step(&ctx);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        // References are remembered per class, with the rest of the settings.
        if self.persist {
            eframe::set_value(storage, SETTINGS_KEY, &self.state.settings);
        }
    }
}
