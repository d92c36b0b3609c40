//! alfa: zero- and few-shot visual anomaly detection with CLIP (ALFA), its baselines,
//! evaluation, and the inspection GUI.

pub mod allocator;
pub mod app;
pub mod batch;
pub mod bench;
pub mod cli;
pub mod clip;
pub mod detect;
pub mod eval;
pub mod dinov2;
pub mod files;
pub mod hub;
pub mod options;
pub mod prompts;
pub mod recipe;
pub mod recipes_folder;
pub mod time;
