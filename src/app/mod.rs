//! The inspection window (eframe + wgpu).
//!
//! The UI thread only draws and sends jobs: the engine runs on a worker thread
//! (`worker`), results come back as messages (`messages` applies them). What the UI
//! shows lives in `state`, apart from the widgets: `panels` (layout, list, viewer
//! controls), the side pages `why`, `prompts_page` and `settings_page`, `viewer`, and
//! the heatmap, a WGSL shader in a paint callback (`heatmap`). What the user starts:
//! `recipes` (the class's recipe, thresholds), `good_images` (references, thresholds
//! from good images), `export`, `dialogs` (typed paths, file dialogs), `input` (keys,
//! dropped files). This file holds the app itself: opening images, the class, the model.

use eframe::egui;

mod dialogs;
mod export;
mod files;
mod good_images;
mod heatmap;
mod input;
mod messages;
mod panels;
mod path_choice;
mod prompt_editor;
mod prompts_page;
mod recipes;
mod settings_page;
mod state;
mod viewer;
mod why;
mod widgets;
mod worker;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
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
use dialogs::{BrowseState, PathPrompt};
use path_choice::Purpose;
use prompt_editor::PromptEditor;
use state::{Entry, SelectionStep, Shown};
use viewer::ViewTransform;
use worker::{Message, Workers};
use export::PendingExport;
use recipes::locate_recipes;

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
    pending_export: Option<(PathBuf, PendingExport, Vec<PathBuf>)>,
    /// A run export is being written (one at a time: a second would write the same
    /// files again).
    run_export_busy: Arc<AtomicBool>,
    /// `--arch` from the command line; the model and the tokenizer are in settings.
    model_extra: ModelArgs,
    next_id: worker::ItemId,
    content: Option<HeatmapContent>,
    screenshot: Option<PathBuf>,
    screenshot_requested: bool,
    prompt_sort: why::PromptSort,
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
            run_export_busy: Arc::new(AtomicBool::new(false)),
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
            prompt_sort: why::PromptSort::default(),
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
                    partial: None,
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
            entry.partial = None;
        }
        self.compare_asked = None;
        let references = self.state.references().to_vec();
        let method = self.state.settings.method;
        let generation = self.workers.analyse(method, editor.applied.clone(), self.state.settings.detect.clone(), references, items);
        self.state.progress =
            state::Progress { generation, done: 0, total: order.len(), running: true, error: None, references: None };
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

    pub fn cancel(&mut self) {
        self.workers.cancel();
        self.state.progress.running = false;
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
            // The partial map of a coming result before an older (stale) one.
            let partial = entry.partial.as_ref().and_then(|p| p.refined.as_ref()).map(|(_, map)| map.clone());
            let map = partial
                .or_else(|| entry.analysis.as_ref().map(|a| a.map.clone()))
                .filter(|m| [m.width as u32, m.height as u32] == size);
            self.content = Some(HeatmapContent { image, size, map, mask });
        }
        self.content.clone()
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
        self.replace_question(&ctx);
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
