//! What the app knows and shows, apart from widgets: the images, their results,
//! the selection, the view settings. The panels read and change it; tests assert on it.

use eframe::egui;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::detect::colormap::Colormap;
use super::worker::{Analysis, ItemId, Picture, ThresholdFit};
pub use crate::detect::threshold::Verdict;
use crate::clip::Precision;
use crate::detect::maps::Grid;
use crate::detect::{DetectSettings, MethodKind, Partial};
use crate::prompts::llm::LlmConfig;
use crate::recipe::legacy::LegacyClass;
use crate::recipe::{MethodRecipe, ModelStamp, Recipe, RecipeThresholds, ThresholdRecord};

/// One image in the list.
pub struct Entry {
    /// Unique for the app's lifetime, so late messages about a cleared list match nothing.
    pub id: ItemId,
    pub path: PathBuf,
    pub name: String,
    pub thumbnail: Option<egui::TextureHandle>,
    /// The thumbnail's pixels and the picture's size: the viewer shows them scaled up
    /// at once while the picture is decoded.
    pub preview: Option<(Arc<image::RgbaImage>, [u32; 2])>,
    /// Why the file could not be read or analysed.
    pub error: Option<String>,
    pub analysis: Option<Arc<Analysis>>,
    /// The compare view's second method's result (of the current prompts and settings).
    pub compare: Option<Arc<Analysis>>,
    /// The result is from older prompts or settings; a newer one is coming.
    pub stale: bool,
    /// What the engine told of the image's coming result; shown until it arrives.
    pub partial: Option<PartialAnalysis>,
}

/// An image's result in the making: `S_G` first, then the map of the window scales
/// done so far.
#[derive(Debug, Clone, PartialEq)]
pub struct PartialAnalysis {
    pub global_score: f32,
    /// After a window scale: the image score and the map of the scales so far.
    pub refined: Option<(f32, Arc<Grid>)>,
    /// Window scales done, of all.
    pub scales: (usize, usize),
}

impl PartialAnalysis {
    /// `partial` added to what was known (`self`, if anything).
    pub fn with(this: Option<Self>, partial: Partial) -> Self {
        match partial {
            Partial::Global { global_score } => Self { global_score, refined: None, scales: (0, 0) },
            Partial::Scale { done, total, image_score, map, .. } => {
                let global_score = this.map_or(f32::NAN, |p| p.global_score);
                Self { global_score, refined: Some((image_score, Arc::new(map))), scales: (done, total) }
            }
        }
    }

    /// The list's line: `S_G 0.81, refining…`, then `0.74 (1 of 2 scales), refining…`.
    pub fn label(&self) -> String {
        match &self.refined {
            None => format!("S_G {:.3}, refining…", self.global_score),
            Some((score, _)) => format!("{score:.3} ({} of {} scales), refining…", self.scales.0, self.scales.1),
        }
    }
}

impl Entry {
    pub fn score(&self) -> Option<f32> {
        self.analysis.as_ref().map(|a| a.image_score)
    }
}

/// OK/NG verdict of one image at a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SortKey {
    #[default]
    Name,
    /// Highest score first; images without a score last.
    Score,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Filter {
    #[default]
    All,
    /// Only images at or above the threshold.
    OnlyNg,
    /// Only files that could not be read or analysed.
    Failed,
}

/// Which values the colour map's ends stand for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Normalisation {
    /// Min and max of this image's map: always shows where this image is worst.
    PerImage,
    /// Min and max over every analysed image: good parts stay cold.
    #[default]
    PerSet,
    /// The raw scores, 0 to 1.
    Absolute,
}

/// A threshold and what set it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    pub value: f32,
    /// "set by hand", or "from 12 good images (refs) at FPR 1% on 2026-05-01".
    pub origin: String,
    /// How it was set, as the class's recipe records it (`None`: the default, or
    /// remembered before recipes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<ThresholdRecord>,
}

impl Threshold {
    pub const DEFAULT: &str = "default";

    fn default_value(value: f32) -> Self {
        Self { value, origin: Self::DEFAULT.into(), record: None }
    }

    /// Set by hand today.
    pub fn by_hand(value: f32) -> Self {
        Self::of(ThresholdRecord::by_hand(value))
    }

    /// The threshold a recipe records.
    pub fn of(record: ThresholdRecord) -> Self {
        Self { value: record.value, origin: record.describe(), record: Some(record) }
    }

    /// What a recipe records of it: nothing for the default.
    pub fn to_record(&self) -> Option<ThresholdRecord> {
        match &self.record {
            Some(record) if record.value == self.value => Some(record.clone()),
            _ if self.origin == Self::DEFAULT => None,
            _ => Some(ThresholdRecord::by_hand(self.value)),
        }
    }
}

/// The two thresholds of a class with a model: they mean different things, so they
/// are set apart (and both can be fitted from good images).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Thresholds {
    /// OK/NG: an image scoring at or above it is NG.
    pub image: Threshold,
    /// Regions: map values at or above it are outlined and make the exported mask.
    pub region: Threshold,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self { image: Threshold::default_value(0.5), region: Threshold::default_value(0.5) }
    }
}

impl Thresholds {
    /// A recipe's thresholds (the default where one is not set).
    pub fn of(recorded: &RecipeThresholds) -> Self {
        let defaults = Self::default();
        Self {
            image: recorded.image.clone().map_or(defaults.image, Threshold::of),
            region: recorded.region.clone().map_or(defaults.region, Threshold::of),
        }
    }

    /// What a recipe records of them.
    pub fn to_recipe(&self) -> RecipeThresholds {
        RecipeThresholds { image: self.image.to_record(), region: self.region.to_record() }
    }

    /// The ranges the sliders offer: image scores reach 2 in few-shot mode, map values 1.
    pub const IMAGE_RANGE: std::ops::RangeInclusive<f32> = 0.0..=2.0;
    pub const REGION_RANGE: std::ops::RangeInclusive<f32> = 0.0..=1.0;

    fn usable(&self) -> bool {
        let ok = |t: &Threshold, range: &std::ops::RangeInclusive<f32>| t.value.is_finite() && range.contains(&t.value);
        ok(&self.image, &Self::IMAGE_RANGE) && ok(&self.region, &Self::REGION_RANGE)
    }
}

/// Everything remembered across runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// A folder, a weights file or a hub repo id; empty for the default model.
    pub model: String,
    /// A tokenizer.json to use instead of the model's own (`--tokenizer`); empty for the
    /// model folder's own, else CLIP's embedded one.
    pub tokenizer: String,
    pub cpu: bool,
    /// The image tower's number format.
    pub precision: Precision,
    pub class: String,
    /// The method that scores the list: ALFA, or a baseline to compare it with.
    pub method: MethodKind,
    /// A second method shown beside the first for the image on screen.
    pub compare: Option<MethodKind>,
    pub detect: DetectSettings,
    /// The DINOv2 model of DINOv2 reference banks and AnomalyDINO (`--dino-model`:
    /// vits14, vitb14, a file or a folder); empty for vits14.
    pub dino_model: String,
    /// The recipes folder (`--recipes`); empty for `$ALFA_RECIPES` or the per-user
    /// data folder.
    pub recipes: String,
    /// Thresholds per class and model (`threshold_key`) that no recipe holds: set
    /// before the model was loaded, or for a model or method other than the one the
    /// class's recipe was made with (a threshold fitted for one does not carry over).
    /// The recipe's own are in the recipe only.
    pub thresholds: std::collections::BTreeMap<String, Thresholds>,
    pub colormap: Colormap,
    pub opacity: f32,
    pub normalisation: Normalisation,
    pub overlay: bool,
    pub outline: bool,
    pub side_by_side: bool,
    pub sort: SortKey,
    pub filter: Filter,
    /// False-positive rate on good images that "threshold from good images" aims at.
    pub target_fpr: f64,
    /// The LLM server "Generate more…" asks (the same defaults as `alfa prompts generate`).
    pub llm: LlmConfig,
    /// Answers asked per query by "Generate more…".
    pub llm_samples: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: String::new(),
            tokenizer: String::new(),
            cpu: false,
            precision: Precision::F32,
            class: "bottle".into(),
            method: MethodKind::Alfa,
            compare: None,
            detect: DetectSettings::default(),
            dino_model: String::new(),
            recipes: String::new(),
            thresholds: Default::default(),
            colormap: Colormap::default(),
            opacity: 0.5,
            normalisation: Normalisation::default(),
            overlay: true,
            outline: true,
            side_by_side: false,
            sort: SortKey::default(),
            filter: Filter::default(),
            target_fpr: 0.01,
            llm: LlmConfig::default(),
            llm_samples: 1,
        }
    }
}

impl Settings {
    /// Remembered settings with every value the app cannot use replaced by its
    /// default, and a notice for each (a bad value saved once must not break every
    /// later start). Window scales are checked against the model's grid when it loads.
    pub fn checked(mut self) -> (Self, Vec<String>) {
        let defaults = Settings::default();
        let mut notices = Vec::new();
        if let Err(e) = self.detect.validate(usize::MAX) {
            notices.push(format!("remembered detection settings not usable ({e}): defaults restored"));
            self.detect = defaults.detect.clone();
        }
        let mut check = |ok: bool, what: &str, value: String| {
            if !ok {
                notices.push(format!("remembered {what} {value} not usable: default restored"));
            }
            ok
        };
        let unusable: Vec<String> = self.thresholds.iter().filter(|(_, t)| !t.usable()).map(|(k, _)| k.clone()).collect();
        for key in unusable {
            check(false, "thresholds of", key.clone());
            self.thresholds.remove(&key);
        }
        if !check(self.target_fpr.is_finite() && (0.0..=0.5).contains(&self.target_fpr), "target FPR", self.target_fpr.to_string()) {
            self.target_fpr = defaults.target_fpr;
        }
        if !check(self.opacity.is_finite() && (0.0..=1.0).contains(&self.opacity), "opacity", self.opacity.to_string()) {
            self.opacity = defaults.opacity;
        }
        if !check((1..=10).contains(&self.llm_samples), "LLM answers per query", self.llm_samples.to_string()) {
            self.llm_samples = defaults.llm_samples;
        }
        if !check(!self.class.trim().is_empty(), "class", format!("{:?}", self.class)) {
            self.class = defaults.class;
        }
        (self, notices)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ModelStatus {
    Loading { model: String, file: String, done: u64, total: u64 },
    /// `grid`: the model's patch grid (window scales go up to it).
    Ready { model: String, precision: Precision, grid: usize },
    Failed { model: String, error: String },
}

/// The image on screen, decoded.
#[derive(Clone)]
pub struct Shown {
    pub id: ItemId,
    pub picture: Picture,
}

#[derive(Default)]
pub struct Progress {
    pub generation: u64,
    pub done: usize,
    pub total: usize,
    pub running: bool,
    /// Why the last analysis stopped early.
    pub error: Option<String>,
    /// Reference features computed so far, while the bank is being built.
    pub references: Option<(usize, usize)>,
}

/// A reference image in the References section.
pub struct ReferenceView {
    /// For its thumbnail's message.
    pub id: ItemId,
    pub path: PathBuf,
    pub thumbnail: Option<egui::TextureHandle>,
    pub error: Option<String>,
}

/// Scoring good images for the threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdTask {
    pub id: u64,
    pub done: usize,
    pub total: usize,
    /// Reference features computed so far, while the bank is being built.
    pub references: Option<(usize, usize)>,
    /// Where the good images came from, as the recipe records it (`refs`, a folder).
    pub good: Vec<String>,
}

/// "Generate more…": where the LLM request stands.
#[derive(Debug, Clone, PartialEq)]
pub enum LlmStatus {
    Asking { id: u64, endpoint: String, done: usize, total: usize },
    /// New prompts went into the editor (not saved yet).
    Added { normal: usize, abnormal: usize, descriptors: usize },
    Failed(String),
}

pub struct AppState {
    pub settings: Settings,
    pub entries: Vec<Entry>,
    /// Index into `entries`.
    pub selected: Option<usize>,
    pub shown: Option<Shown>,
    /// Pictures decoded recently or ahead of time (the list's neighbours), newest
    /// last, at most `DECODED_KEPT`: moving through the list shows them at once.
    pub decoded: std::collections::VecDeque<Shown>,
    pub model: Option<ModelStatus>,
    pub progress: Progress,
    /// Texts the text tower encoded for the last prompt change, and how long it took.
    pub last_encoding: Option<(usize, f64)>,
    /// Messages for the status bar (saves, exports, errors).
    pub notice: Option<String>,
    /// The current class's reference images: the files in its folder
    /// `<prompts>/<class>.refs/`, which `alfa refs` and `alfa detect` use too.
    pub reference_files: Vec<PathBuf>,
    /// The current class's references, in that order.
    pub reference_views: Vec<ReferenceView>,
    pub threshold_task: Option<ThresholdTask>,
    /// The last thresholds from good images, with the scores they came from.
    pub threshold_fit: Option<ThresholdFit>,
    pub llm: Option<LlmStatus>,
    /// The current class's recipe as on disk (or as last written); `None`: it has none.
    pub recipe: Option<Recipe>,
    /// Why the class's recipe.toml could not be read (file and line).
    pub recipe_error: Option<String>,
    /// The loaded model: the weights' hash says whether a recipe was made with it.
    pub model_stamp: Option<ModelStamp>,
    /// The key of thresholds the user set while the model was loading: they go into
    /// the recipe once it is loaded (remembered ones from earlier runs do not, so that
    /// loading a model never rewrites a recipe by itself).
    thresholds_set_while_loading: Option<String>,
    /// Class files of the old layout (`./prompts`) that the recipes lack: offered for
    /// migration until migrated or dismissed.
    pub legacy: Vec<LegacyClass>,
}

impl AppState {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            entries: Vec::new(),
            selected: None,
            shown: None,
            decoded: Default::default(),
            model: None,
            progress: Progress::default(),
            last_encoding: None,
            notice: None,
            reference_files: Vec::new(),
            reference_views: Vec::new(),
            threshold_task: None,
            threshold_fit: None,
            llm: None,
            recipe: None,
            recipe_error: None,
            model_stamp: None,
            thresholds_set_while_loading: None,
            legacy: Vec::new(),
        }
    }

    /// The loaded model's patch grid.
    pub fn model_grid(&self) -> Option<usize> {
        match &self.model {
            Some(ModelStatus::Ready { grid, .. }) => Some(*grid),
            _ => None,
        }
    }

    /// The current class's reference images.
    pub fn references(&self) -> &[PathBuf] {
        &self.reference_files
    }

    /// `few-shot (K refs)` or `zero-shot`.
    pub fn mode_label(&self) -> String {
        let few_shot_method = matches!(self.settings.method, MethodKind::Alfa | MethodKind::Winclip);
        match self.references().len() {
            0 => "zero-shot".into(),
            _ if !few_shot_method => "zero-shot (this method takes no references)".into(),
            1 => "few-shot (1 ref)".into(),
            k => format!("few-shot ({k} refs)"),
        }
    }

    /// The model as the settings name it (the default's id when empty).
    pub fn model_id(&self) -> String {
        let model = self.settings.model.trim();
        if model.is_empty() { crate::clip::DEFAULT_MODEL.to_owned() } else { model.to_owned() }
    }

    /// Thresholds no recipe holds are kept per class and model (and method, for a
    /// baseline, whose scores mean something else): `bottle @ <model>`,
    /// `bottle @ <model> (Winclip)`.
    pub fn threshold_key(&self) -> String {
        key_of(&self.settings.class, &self.model_id(), self.settings.method)
    }

    /// The class's recipe holds the thresholds of this model and method: made with the
    /// loaded model's weights (before the model is loaded: the same model as named)
    /// and the method in use.
    pub fn recipe_applies(&self) -> bool {
        let Some(recipe) = self.recipe.as_ref().filter(|r| !r.thresholds.is_empty()) else { return false };
        match (&self.model_stamp, &recipe.model) {
            (Some(stamp), _) => recipe.made_with(stamp, self.settings.method),
            (None, Some(model)) => {
                model.id == self.model_id()
                    && model.precision == self.settings.precision
                    && recipe.method.as_ref().is_some_and(|m| m.name == self.settings.method)
            }
            (None, None) => false,
        }
    }

    /// Why the class's recipe's thresholds are not the ones shown, or may not fit: it
    /// was made with another model or method, or with other detection settings.
    pub fn recipe_warning(&self) -> Option<String> {
        if let Some(error) = &self.recipe_error {
            return Some(format!("the class's recipe cannot be read: {error}"));
        }
        let recipe = self.recipe.as_ref().filter(|r| !r.thresholds.is_empty())?;
        if !self.recipe_applies() {
            return Some(match (&self.model_stamp, &recipe.model) {
                (Some(stamp), _) => recipe.mismatch(stamp, self.settings.method).unwrap_or_default(),
                (None, Some(model)) => format!(
                    "the recipe of `{}` was made with {} ({}): its thresholds may not transfer",
                    recipe.class,
                    model.id,
                    recipe.method.as_ref().map_or_else(|| "no method".into(), |m| m.name.name())
                ),
                (None, None) => format!("the recipe of `{}` records no model: its thresholds are not used", recipe.class),
            });
        }
        let method = recipe.method.as_ref()?;
        (method.settings() != self.settings.detect).then(|| {
            let scales: Vec<String> = method.scales.iter().map(usize::to_string).collect();
            format!(
                "the thresholds were set with other detection settings (scales {}, {:?} windows, sigma {}, {} few-shot features): \
                 fit or set them again",
                scales.join(", "),
                method.window_mode,
                method.sigma,
                method.refs_backbone.name()
            )
        })
    }

    /// The current class's thresholds: its recipe's when they hold for this model and
    /// method, else the ones remembered for them, else the defaults.
    pub fn thresholds(&self) -> Thresholds {
        if self.recipe_applies()
            && let Some(recipe) = &self.recipe
        {
            return Thresholds::of(&recipe.thresholds);
        }
        self.settings.thresholds.get(&self.threshold_key()).cloned().unwrap_or_default()
    }

    /// Makes `thresholds` the current class's. With the model loaded they go into the
    /// class's recipe, which is then made with this model, method and settings (what
    /// the recipe held for another model or method is remembered under that one's key,
    /// not lost); the recipe to write is returned. Before the model is loaded they are
    /// remembered per class and model until a later change writes them.
    pub fn set_thresholds(&mut self, thresholds: Thresholds) -> Option<Recipe> {
        let key = self.threshold_key();
        let Some(stamp) = self.model_stamp.clone() else {
            self.settings.thresholds.insert(key.clone(), thresholds);
            self.thresholds_set_while_loading = Some(key);
            return None;
        };
        let mut recipe = self.recipe.clone().unwrap_or_else(|| Recipe::new(&self.settings.class));
        if !recipe.thresholds.is_empty()
            && !recipe.made_with(&stamp, self.settings.method)
            && let (Some(model), Some(method)) = (&recipe.model, &recipe.method)
        {
            let old = key_of(&recipe.class, &model.id, method.name);
            self.settings.thresholds.entry(old).or_insert_with(|| Thresholds::of(&recipe.thresholds));
        }
        let kept = recipe.method.as_ref().filter(|m| m.name == self.settings.method && m.settings() == self.settings.detect);
        let mut method = MethodRecipe::new(self.settings.method, &self.settings.detect);
        if let Some(kept) = kept {
            (method.shots, method.seed, method.anovl_views) = (kept.shots, kept.seed, kept.anovl_views);
        }
        recipe.model = Some(stamp);
        recipe.method = Some(method);
        recipe.thresholds = thresholds.to_recipe();
        self.settings.thresholds.remove(&key);
        self.recipe = Some(recipe.clone());
        Some(recipe)
    }

    /// The model is loaded (`stamp`: its weights, `None` if they could not be hashed):
    /// thresholds the user set for this class and model while it loaded go into the
    /// recipe, which is returned to be written.
    pub fn model_loaded(&mut self, stamp: Option<ModelStamp>) -> Option<Recipe> {
        self.model_stamp = stamp;
        self.model_stamp.as_ref()?;
        let key = self.thresholds_set_while_loading.take().filter(|key| *key == self.threshold_key())?;
        let thresholds = self.settings.thresholds.get(&key).cloned()?;
        self.set_thresholds(thresholds)
    }

    /// The OK/NG threshold on image scores.
    pub fn image_threshold(&self) -> f32 {
        self.thresholds().image.value
    }

    /// The threshold on map values for outlines and masks.
    pub fn region_threshold(&self) -> f32 {
        self.thresholds().region.value
    }

    /// What set each threshold, for the label: `OK/NG 0.734 from 12 good images (the
    /// references) at FPR 1%; region 0.412 set by hand`.
    pub fn threshold_origin(&self) -> String {
        let t = self.thresholds();
        format!("OK/NG {:.3} {}; region {:.3} {}", t.image.value, t.image.origin, t.region.value, t.region.origin)
    }

    /// Indices of the entries the list shows, in display order.
    pub fn visible(&self) -> Vec<usize> {
        let threshold = self.image_threshold();
        let mut ids: Vec<usize> = (0..self.entries.len())
            .filter(|&i| {
                let e = &self.entries[i];
                match self.settings.filter {
                    Filter::All => true,
                    Filter::OnlyNg => e.score().is_some_and(|s| Verdict::of(s, threshold) == Verdict::Ng),
                    Filter::Failed => e.error.is_some(),
                }
            })
            .collect();
        match self.settings.sort {
            SortKey::Name => ids.sort_by(|&a, &b| name_order(&self.entries[a].name, &self.entries[b].name)),
            SortKey::Score => ids.sort_by(|&a, &b| {
                let score = |i: usize| self.entries[i].score().unwrap_or(f32::NEG_INFINITY);
                score(b).total_cmp(&score(a)).then_with(|| name_order(&self.entries[a].name, &self.entries[b].name))
            }),
        }
        ids
    }

    /// Moves the selection within the visible list: `delta` steps, or to an end.
    pub fn step_selection(&mut self, step: SelectionStep) -> Option<usize> {
        let visible = self.visible();
        let last = visible.len().checked_sub(1)?;
        let position = self.selected.and_then(|s| visible.iter().position(|&v| v == s));
        let next = match (step, position) {
            (SelectionStep::First, _) | (SelectionStep::Next(_), None) => 0,
            (SelectionStep::Last, _) | (SelectionStep::Previous(_), None) => last,
            (SelectionStep::Next(n), Some(p)) => p.saturating_add(n).min(last),
            (SelectionStep::Previous(n), Some(p)) => p.saturating_sub(n),
        };
        self.selected = Some(visible[next]);
        self.selected
    }

    /// Keeps a decoded picture for later, dropping the oldest beyond `DECODED_KEPT`.
    pub fn keep_decoded(&mut self, shown: Shown) {
        self.decoded.retain(|s| s.id != shown.id);
        self.decoded.push_back(shown);
        while self.decoded.len() > DECODED_KEPT {
            self.decoded.pop_front();
        }
    }

    pub fn index_of(&self, id: ItemId) -> Option<usize> {
        self.entries.iter().position(|e| e.id == id)
    }

    pub fn verdict(&self, index: usize) -> Option<Verdict> {
        self.entries.get(index)?.score().map(|s| Verdict::of(s, self.image_threshold()))
    }

    pub fn selected_analysis(&self) -> Option<&Arc<Analysis>> {
        self.entries.get(self.selected?)?.analysis.as_ref()
    }

    /// Values at the ends of the colour map for the image at `index`.
    pub fn levels(&self, index: usize) -> (f32, f32) {
        let per_image = self.entries.get(index).and_then(|e| e.analysis.as_ref()).map(|a| a.map_range);
        let range = match self.settings.normalisation {
            Normalisation::Absolute => None,
            Normalisation::PerImage => per_image,
            Normalisation::PerSet => self
                .entries
                .iter()
                .filter_map(|e| e.analysis.as_ref().map(|a| a.map_range))
                .reduce(|(lo, hi), (l, h)| (lo.min(l), hi.max(h))),
        };
        match range {
            Some((lo, hi)) if hi > lo => (lo, hi),
            _ => (0.0, 1.0),
        }
    }

    /// Images with a result of the current prompts and settings (old ones not counted).
    pub fn analysed(&self) -> usize {
        self.entries.iter().filter(|e| e.analysis.is_some() && !e.stale).count()
    }
}

/// `bottle @ <model>`, `bottle @ <model> (Winclip)`.
fn key_of(class: &str, model: &str, method: MethodKind) -> String {
    match method {
        MethodKind::Alfa => format!("{class} @ {model}"),
        method => format!("{class} @ {model} ({method:?})"),
    }
}

/// Decoded pictures kept: the one on screen, its neighbours and a few just left.
pub const DECODED_KEPT: usize = 8;

/// Names as a person sorts them: case does not matter (`B.png` after `a.png`), and
/// equal names apart from case keep a fixed order.
fn name_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.to_lowercase().cmp(&b.to_lowercase()).then_with(|| a.cmp(b))
}

/// A score with enough digits to tell it from `threshold`: three decimals, more when
/// they would show the same number for a score on the other side of it.
pub fn score_text(score: f32, threshold: f32) -> String {
    (3..=7)
        .map(|digits| (format!("{score:.digits$}"), format!("{threshold:.digits$}")))
        .find(|(s, t)| s != t || score == threshold)
        .map_or_else(|| format!("{score}"), |(s, _)| s)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectionStep {
    /// So many images back or forward (a key pressed several times, or a page).
    Previous(usize),
    Next(usize),
    First,
    Last,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> Entry {
        Entry { id: 0, path: name.into(), name: name.into(), thumbnail: None, preview: None, error: None, analysis: None, compare: None, stale: false, partial: None }
    }

    fn state_with(names: &[&str]) -> AppState {
        let mut state = AppState::new(Settings::default());
        state.entries = names.iter().map(|n| entry(n)).collect();
        state
    }

    #[test]
    fn keyboard_steps_follow_the_visible_order_and_stop_at_the_ends() {
        let mut state = state_with(&["c", "a", "b"]);
        assert_eq!(state.visible(), [1, 2, 0]);
        assert_eq!(state.step_selection(SelectionStep::Next(1)), Some(1));
        assert_eq!(state.step_selection(SelectionStep::Next(1)), Some(2));
        assert_eq!(state.step_selection(SelectionStep::Next(1)), Some(0));
        assert_eq!(state.step_selection(SelectionStep::Next(1)), Some(0));
        assert_eq!(state.step_selection(SelectionStep::First), Some(1));
        assert_eq!(state.step_selection(SelectionStep::Previous(1)), Some(1));
        assert_eq!(state.step_selection(SelectionStep::Last), Some(0));
        assert_eq!(state.step_selection(SelectionStep::Previous(10)), Some(1), "a page stops at the first");
        assert_eq!(state.step_selection(SelectionStep::Next(2)), Some(0));
    }

    #[test]
    fn failed_filter_keeps_unreadable_files() {
        let mut state = state_with(&["a", "b"]);
        state.entries[1].error = Some("not an image".into());
        state.settings.filter = Filter::Failed;
        assert_eq!(state.visible(), [1]);
        state.settings.filter = Filter::OnlyNg;
        assert!(state.visible().is_empty());
    }

    #[test]
    fn names_sort_without_regard_to_case() {
        let state = state_with(&["b.png", "C.png", "a.png", "B.png"]);
        let names: Vec<&str> = state.visible().iter().map(|&i| state.entries[i].name.as_str()).collect();
        assert_eq!(names, ["a.png", "B.png", "b.png", "C.png"]);
    }

    #[test]
    fn scores_show_enough_digits_to_compare_with_the_threshold() {
        assert_eq!(score_text(0.734, 0.5), "0.734");
        // 0.1498 would read 0.150 beside a threshold of 0.150 and look like NG.
        assert_eq!(score_text(0.1498, 0.15), "0.1498");
        assert_eq!(score_text(0.15, 0.15), "0.150");
        assert_eq!(score_text(0.150_02, 0.15), "0.15002");
    }

    #[test]
    fn remembered_settings_that_cannot_work_fall_back_with_a_notice() {
        let mut settings = Settings::default();
        settings.detect.scales = vec![2, 2];
        settings.detect.sigma = f32::NAN;
        settings.opacity = 7.0;
        settings.thresholds.insert("bottle @ m".into(), Thresholds { image: Threshold { value: f32::INFINITY, origin: "x".into(), record: None }, ..Default::default() });
        settings.thresholds.insert("screw @ m".into(), Thresholds::default());
        let (checked, notices) = settings.checked();
        assert_eq!(checked.detect, DetectSettings::default());
        assert_eq!(checked.opacity, Settings::default().opacity);
        assert_eq!(checked.thresholds.keys().collect::<Vec<_>>(), ["screw @ m"]);
        assert_eq!(notices.len(), 3, "{notices:?}");
        assert!(notices[0].contains("window scale 2 is given twice"), "{notices:?}");
        let (again, none) = checked.clone().checked();
        assert_eq!((again, none.len()), (checked, 0));
    }

    #[test]
    fn thresholds_are_kept_per_class_and_model() {
        let mut state = state_with(&[]);
        let mut thresholds = state.thresholds();
        thresholds.image = Threshold::by_hand(0.8);
        assert_eq!(state.set_thresholds(thresholds), None, "no model loaded: nothing for the recipe yet");
        state.settings.class = "screw".into();
        assert_eq!(state.image_threshold(), 0.5, "another class starts at the default");
        state.settings.class = "bottle".into();
        assert_eq!(state.image_threshold(), 0.8);
        state.settings.model = "/models/other".into();
        assert_eq!(state.image_threshold(), 0.5, "another model starts at the default");
    }

    #[test]
    fn thresholds_and_where_they_came_from_survive_a_restart() {
        let mut state = state_with(&[]);
        let mut thresholds = state.thresholds();
        thresholds.region = Threshold::of(ThresholdRecord::from_good_images(0.41, 0.01, vec!["/data/good".into()], 12));
        state.set_thresholds(thresholds);
        let stored = serde_json::to_string(&state.settings).unwrap();
        let restarted = AppState::new(serde_json::from_str::<Settings>(&stored).unwrap().checked().0);
        assert_eq!(restarted.thresholds(), state.thresholds());
        let origin = restarted.threshold_origin();
        assert!(origin.contains("region 0.410 from 12 good images (good) at FPR 1% on "), "{origin}");
    }

    fn stamp(hash: &str) -> ModelStamp {
        ModelStamp { id: hash.into(), arch: "ViT-B-16".into(), weights_blake3: hash.repeat(64), precision: crate::clip::Precision::F32 }
    }

    #[test]
    fn the_recipe_holds_the_thresholds_of_its_model_and_method_only() {
        let mut state = state_with(&[]);
        state.settings.model = "a".into();
        state.model_stamp = Some(stamp("a"));
        let mut thresholds = state.thresholds();
        thresholds.image = Threshold::by_hand(0.7);
        let recipe = state.set_thresholds(thresholds).expect("a recipe to write");
        assert_eq!(recipe.model, Some(stamp("a")));
        assert_eq!(recipe.method.as_ref().map(|m| (m.name, m.settings())), Some((MethodKind::Alfa, DetectSettings::default())));
        assert_eq!(recipe.thresholds.image.as_ref().map(|t| t.value), Some(0.7));
        assert_eq!(recipe.thresholds.region, None, "the default is not recorded");
        assert!(state.settings.thresholds.is_empty(), "one truth: the recipe");
        assert!(state.recipe_applies() && state.recipe_warning().is_none());
        assert_eq!(state.image_threshold(), 0.7);

        // Another model (other weights): the recipe's thresholds are not used, and it says so.
        state.settings.model = "b".into();
        state.model_stamp = Some(stamp("b"));
        assert_eq!(state.image_threshold(), 0.5);
        assert!(state.recipe_warning().unwrap().contains("may not transfer"), "{:?}", state.recipe_warning());
        // Set for this one, the recipe is this model's; the other's are remembered, not lost.
        let mut thresholds = state.thresholds();
        thresholds.region = Threshold::by_hand(0.3);
        let recipe = state.set_thresholds(thresholds).unwrap();
        assert_eq!(recipe.model, Some(stamp("b")));
        assert_eq!((recipe.thresholds.image, recipe.thresholds.region.map(|t| t.value)), (None, Some(0.3)));
        assert_eq!(state.settings.thresholds["bottle @ a"].image.value, 0.7);
        // Other detection settings: used, with a warning.
        state.settings.detect.scales = vec![2];
        assert_eq!(state.region_threshold(), 0.3);
        assert!(state.recipe_warning().unwrap().contains("other detection settings"));
    }

    #[test]
    fn thresholds_set_while_the_model_loads_go_into_the_recipe_once_it_is_loaded() {
        let mut state = state_with(&[]);
        state.settings.model = "a".into();
        // Remembered from an earlier run: loading the model does not write them.
        state.settings.thresholds.insert(state.threshold_key(), Thresholds { image: Threshold::by_hand(0.6), ..state.thresholds() });
        assert_eq!(state.model_loaded(Some(stamp("a"))), None);
        assert_eq!(state.image_threshold(), 0.6, "still remembered");

        state.model_stamp = None;
        let mut thresholds = state.thresholds();
        thresholds.image = Threshold::by_hand(0.7);
        assert_eq!(state.set_thresholds(thresholds), None, "no model yet: remembered");
        let recipe = state.model_loaded(Some(stamp("a"))).expect("the recipe to write");
        assert_eq!((recipe.model, recipe.thresholds.image.map(|t| t.value)), (Some(stamp("a")), Some(0.7)));
        assert!(state.settings.thresholds.is_empty(), "one truth: the recipe");
        assert_eq!(state.model_loaded(Some(stamp("a"))), None, "written once");

        // Set for another class while loading: that class's, not this one's.
        state.model_stamp = None;
        state.set_thresholds(Thresholds { image: Threshold::by_hand(0.9), ..state.thresholds() });
        state.settings.class = "screw".into();
        assert_eq!(state.model_loaded(Some(stamp("a"))), None);
    }

    #[test]
    fn verdict_is_ng_at_or_above_the_threshold() {
        assert_eq!(Verdict::of(0.5, 0.5), Verdict::Ng);
        assert_eq!(Verdict::of(0.49, 0.5), Verdict::Ok);
    }
}
