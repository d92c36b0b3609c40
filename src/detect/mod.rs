//! Anomaly detection on top of CLIP: ALFA's building blocks (contextual scoring,
//! global-to-local projection, dense maps). The `Detector` engine, the baselines and
//! few-shot mode build on these.

pub mod context;
pub mod maps;
pub mod ridge;
