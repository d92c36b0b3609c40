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
use crate::detect::{DetectSettings, MethodKind};
use crate::prompts::llm::LlmConfig;

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
    /// "set by hand", or "from 12 good images (the references) at FPR 1%".
    pub origin: String,
}

impl Threshold {
    pub const BY_HAND: &str = "set by hand";

    fn default_value(value: f32) -> Self {
        Self { value, origin: "default".into() }
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
    /// Per class and model (`threshold_key`): a threshold fitted for one does not
    /// carry over to another.
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

    /// Thresholds are kept per class and model (and method, for a baseline, whose
    /// scores mean something else): `bottle @ <model>`, `bottle @ <model> (Winclip)`.
    pub fn threshold_key(&self) -> String {
        let model = self.settings.model.trim();
        let model = if model.is_empty() { crate::clip::DEFAULT_MODEL } else { model };
        match self.settings.method {
            MethodKind::Alfa => format!("{} @ {model}", self.settings.class),
            method => format!("{} @ {model} ({method:?})", self.settings.class),
        }
    }

    /// The current class's thresholds (defaults until one is set).
    pub fn thresholds(&self) -> Thresholds {
        self.settings.thresholds.get(&self.threshold_key()).cloned().unwrap_or_default()
    }

    pub fn thresholds_mut(&mut self) -> &mut Thresholds {
        let key = self.threshold_key();
        self.settings.thresholds.entry(key).or_default()
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
        Entry { id: 0, path: name.into(), name: name.into(), thumbnail: None, preview: None, error: None, analysis: None, compare: None, stale: false }
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
        settings.thresholds.insert("bottle @ m".into(), Thresholds { image: Threshold { value: f32::INFINITY, origin: "x".into() }, ..Default::default() });
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
        state.thresholds_mut().image = Threshold { value: 0.8, origin: Threshold::BY_HAND.into() };
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
        state.thresholds_mut().region = Threshold { value: 0.41, origin: "from 12 good images (folder good) at FPR 1%".into() };
        let stored = serde_json::to_string(&state.settings).unwrap();
        let restarted = AppState::new(serde_json::from_str::<Settings>(&stored).unwrap().checked().0);
        assert_eq!(restarted.thresholds(), state.thresholds());
        assert!(restarted.threshold_origin().ends_with("region 0.410 from 12 good images (folder good) at FPR 1%"), "{}", restarted.threshold_origin());
    }

    #[test]
    fn verdict_is_ng_at_or_above_the_threshold() {
        assert_eq!(Verdict::of(0.5, 0.5), Verdict::Ng);
        assert_eq!(Verdict::of(0.49, 0.5), Verdict::Ok);
    }
}
