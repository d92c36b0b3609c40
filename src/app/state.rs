//! What the app knows and shows, apart from widgets: the images, their results,
//! the selection, the view settings. The panels read and change it; tests assert on it.

use eframe::egui;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::detect::colormap::Colormap;
use super::worker::{Analysis, ItemId, Picture, ThresholdFit};
use crate::clip::Precision;
use crate::detect::DetectSettings;
use crate::prompts::llm::LlmConfig;

/// One image in the list.
pub struct Entry {
    /// Unique for the app's lifetime, so late messages about a cleared list match nothing.
    pub id: ItemId,
    pub path: PathBuf,
    pub name: String,
    pub thumbnail: Option<egui::TextureHandle>,
    /// Why the file could not be read or analysed.
    pub error: Option<String>,
    pub analysis: Option<Arc<Analysis>>,
    /// The result is from older prompts or settings; a newer one is coming.
    pub stale: bool,
}

impl Entry {
    pub fn score(&self) -> Option<f32> {
        self.analysis.as_ref().map(|a| a.detection.image_score)
    }
}

/// OK/NG verdict of one image at a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Ng,
}

impl Verdict {
    pub fn of(score: f32, threshold: f32) -> Self {
        if score >= threshold { Verdict::Ng } else { Verdict::Ok }
    }

    pub fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "OK",
            Verdict::Ng => "NG",
        }
    }
}

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

/// Everything remembered across runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// A folder, a weights file or a hub repo id; empty for the default model.
    pub model: String,
    pub cpu: bool,
    /// The image tower's number format.
    pub precision: Precision,
    pub class: String,
    pub detect: DetectSettings,
    pub threshold: f32,
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
            cpu: false,
            precision: Precision::F32,
            class: "bottle".into(),
            detect: DetectSettings::default(),
            threshold: 0.5,
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

#[derive(Debug, Clone, PartialEq)]
pub enum ModelStatus {
    Loading { model: String, file: String, done: u64, total: u64 },
    Ready { model: String, precision: Precision },
    Failed { model: String, error: String },
}

/// The image on screen, decoded.
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
    /// The last threshold from good images (the slider may have moved since).
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

    /// The current class's reference images.
    pub fn references(&self) -> &[PathBuf] {
        &self.reference_files
    }

    /// `few-shot (K refs)` or `zero-shot`.
    pub fn mode_label(&self) -> String {
        match self.references().len() {
            0 => "zero-shot".into(),
            1 => "few-shot (1 ref)".into(),
            k => format!("few-shot ({k} refs)"),
        }
    }

    /// What set the threshold: `threshold 0.734 from 12 good images at FPR 1%`, or by hand.
    pub fn threshold_origin(&self) -> String {
        let threshold = self.settings.threshold;
        match &self.threshold_fit {
            Some(fit) if fit.threshold == threshold => format!(
                "threshold {threshold:.3} from {} good images ({}) at FPR {}%",
                fit.scores.len(),
                fit.source,
                fit.fpr * 100.0
            ),
            _ => format!("threshold {threshold:.3} set by hand"),
        }
    }

    /// Indices of the entries the list shows, in display order.
    pub fn visible(&self) -> Vec<usize> {
        let threshold = self.settings.threshold;
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
            SortKey::Name => ids.sort_by(|&a, &b| self.entries[a].name.cmp(&self.entries[b].name)),
            SortKey::Score => ids.sort_by(|&a, &b| {
                let score = |i: usize| self.entries[i].score().unwrap_or(f32::NEG_INFINITY);
                score(b).total_cmp(&score(a)).then_with(|| self.entries[a].name.cmp(&self.entries[b].name))
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
            (SelectionStep::First, _) | (SelectionStep::Next, None) => 0,
            (SelectionStep::Last, _) | (SelectionStep::Previous, None) => last,
            (SelectionStep::Next, Some(p)) => (p + 1).min(last),
            (SelectionStep::Previous, Some(p)) => p.saturating_sub(1),
        };
        self.selected = Some(visible[next]);
        self.selected
    }

    pub fn index_of(&self, id: ItemId) -> Option<usize> {
        self.entries.iter().position(|e| e.id == id)
    }

    pub fn verdict(&self, index: usize) -> Option<Verdict> {
        self.entries.get(index)?.score().map(|s| Verdict::of(s, self.settings.threshold))
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

    pub fn analysed(&self) -> usize {
        self.entries.iter().filter(|e| e.analysis.is_some()).count()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectionStep {
    Previous,
    Next,
    First,
    Last,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> Entry {
        Entry { id: 0, path: name.into(), name: name.into(), thumbnail: None, error: None, analysis: None, stale: false }
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
        assert_eq!(state.step_selection(SelectionStep::Next), Some(1));
        assert_eq!(state.step_selection(SelectionStep::Next), Some(2));
        assert_eq!(state.step_selection(SelectionStep::Next), Some(0));
        assert_eq!(state.step_selection(SelectionStep::Next), Some(0));
        assert_eq!(state.step_selection(SelectionStep::First), Some(1));
        assert_eq!(state.step_selection(SelectionStep::Previous), Some(1));
        assert_eq!(state.step_selection(SelectionStep::Last), Some(0));
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
    fn verdict_is_ng_at_or_above_the_threshold() {
        assert_eq!(Verdict::of(0.5, 0.5), Verdict::Ng);
        assert_eq!(Verdict::of(0.49, 0.5), Verdict::Ok);
    }
}
