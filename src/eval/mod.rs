//! Evaluation foundation: reference-exact metrics (METHOD section 7) and dataset layouts
//! (MVTec AD, VisA, a generic folder layout). `alfa eval`, the GUI and the few-shot mode
//! build on these.

pub mod csv;
pub mod dataset;
pub mod maps;
pub mod metrics;
pub mod report;

pub use dataset::{Dataset, DatasetKind, Mask, Sample};
pub use maps::{ClassMetrics, SavedMaps, evaluate_class, score_class_maps};
pub use metrics::{ImageMetrics, PixelMetrics, PixelMetricsAccumulator};

use std::path::PathBuf;

/// Everything that can go wrong while loading evaluation data or computing metrics.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Detect(#[from] crate::detect::DetectError),
    #[error("cannot read image {path}: {reason}")]
    Image { path: PathBuf, reason: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    /// A saved map or scores file could not be written (the error names the file).
    #[error(transparent)]
    Export(#[from] crate::detect::export::ExportError),
    #[error("{path}, line {line}: {reason}")]
    Csv {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("anomalous image {image} has no ground-truth mask (expected {expected})")]
    MissingMask { image: PathBuf, expected: String },
    #[error("{root} matches no dataset layout; tried:\n{tried}")]
    NoLayout { root: PathBuf, tried: String },
    #[error("{root} is not a {kind} dataset: {reason}")]
    WrongLayout {
        root: PathBuf,
        kind: String,
        reason: String,
    },
    #[error("unknown class `{class}`; available: {}", available.join(", "))]
    UnknownClass {
        class: String,
        available: Vec<String>,
    },
    #[error("class `{class}` has no test images")]
    NoTestImages { class: String },
    #[error("{what}: no samples")]
    Empty { what: &'static str },
    #[error(
        "{what}: metrics need both classes, got {positives} anomalous and {negatives} normal samples"
    )]
    SingleClass {
        what: &'static str,
        positives: u64,
        negatives: u64,
    },
    #[error("{what}: score {index} is {value} (scores must be finite)")]
    NonFinite {
        what: &'static str,
        index: usize,
        value: f32,
    },
    #[error("{what}: expected {expected} values, got {found}")]
    LengthMismatch {
        what: &'static str,
        expected: usize,
        found: usize,
    },
}
