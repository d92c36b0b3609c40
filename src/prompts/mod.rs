//! Prompts: the per-class prompt sets (templates, LLM prompts, descriptors) and
//! where they are found.

pub mod generate;
pub mod llm;
pub mod merge;
pub mod set;
pub mod store;

use std::path::PathBuf;

pub use set::{ExpandedPrompts, Prompt, PromptSet, PromptSource};
pub use store::{PromptStore, ResolvedPrompts};

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("cannot read prompt file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}{}: {reason}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Parse {
        path: PathBuf,
        line: Option<usize>,
        reason: String,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot write prompt file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}
