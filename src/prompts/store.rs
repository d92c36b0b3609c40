//! Finding a class's prompt set: an explicit file, a prompts folder the user edits,
//! or the sets shipped inside the binary; an unknown class gets the generic set.

use std::path::{Path, PathBuf};

use super::set::{PromptSet, file_for};
use super::PromptError;

/// The sets shipped in `prompts/`, compiled in so an installed binary has them.
/// A file of the same name in the prompts folder takes precedence.
const SHIPPED: &[(&str, &str)] = &[
    ("bottle", include_str!("../../prompts/bottle.toml")),
    ("cable", include_str!("../../prompts/cable.toml")),
    ("capsule", include_str!("../../prompts/capsule.toml")),
    ("carpet", include_str!("../../prompts/carpet.toml")),
    ("grid", include_str!("../../prompts/grid.toml")),
    ("hazelnut", include_str!("../../prompts/hazelnut.toml")),
    ("leather", include_str!("../../prompts/leather.toml")),
    ("metal_nut", include_str!("../../prompts/metal_nut.toml")),
    ("pill", include_str!("../../prompts/pill.toml")),
    ("screw", include_str!("../../prompts/screw.toml")),
    ("tile", include_str!("../../prompts/tile.toml")),
    ("toothbrush", include_str!("../../prompts/toothbrush.toml")),
    ("transistor", include_str!("../../prompts/transistor.toml")),
    ("wood", include_str!("../../prompts/wood.toml")),
    ("zipper", include_str!("../../prompts/zipper.toml")),
    ("candle", include_str!("../../prompts/candle.toml")),
    ("capsules", include_str!("../../prompts/capsules.toml")),
    ("cashew", include_str!("../../prompts/cashew.toml")),
    ("chewinggum", include_str!("../../prompts/chewinggum.toml")),
    ("fryum", include_str!("../../prompts/fryum.toml")),
    ("macaroni1", include_str!("../../prompts/macaroni1.toml")),
    ("macaroni2", include_str!("../../prompts/macaroni2.toml")),
    ("pcb1", include_str!("../../prompts/pcb1.toml")),
    ("pcb2", include_str!("../../prompts/pcb2.toml")),
    ("pcb3", include_str!("../../prompts/pcb3.toml")),
    ("pcb4", include_str!("../../prompts/pcb4.toml")),
    ("pipe_fryum", include_str!("../../prompts/pipe_fryum.toml")),
    (GENERIC, include_str!("../../prompts/generic.toml")),
];

/// The set used for classes without their own file.
pub const GENERIC: &str = "generic";

/// Where prompt sets are looked up.
#[derive(Debug, Clone, Default)]
pub struct PromptStore {
    /// A folder of `<class>.toml` files the user edits (default: `./prompts` when it exists).
    pub dir: Option<PathBuf>,
}

/// A resolved set and where it came from.
#[derive(Debug, Clone)]
pub struct ResolvedPrompts {
    pub set: PromptSet,
    /// The file read, or `None` for a set compiled into the binary.
    pub path: Option<PathBuf>,
    /// The class had no set of its own: this is the generic set under its name.
    pub generic_fallback: bool,
}

impl ResolvedPrompts {
    /// Where the set came from, for messages: `prompts/bottle.toml`, `built-in bottle`,
    /// or `generic (no prompt set named folder_ds)`, so a class that silently got the
    /// generic prompts shows.
    pub fn origin(&self) -> String {
        let id = &self.set.class.id;
        match (&self.path, self.generic_fallback) {
            (None, true) => format!("generic (no prompt set named {id})"),
            (Some(path), true) => format!("generic from {} (no prompt set named {id})", path.display()),
            (Some(path), false) => path.display().to_string(),
            (None, false) => format!("built-in {id}"),
        }
    }
}

/// The prompts folder the CLI and the app use unless told otherwise (relative to the
/// working directory); class references live beside the sets, in `<class>.refs/`.
pub const DEFAULT_DIR: &str = "prompts";

impl PromptStore {
    /// `./prompts` if it exists, else only the shipped sets.
    pub fn default_location() -> Self {
        let dir = PathBuf::from(DEFAULT_DIR);
        Self { dir: dir.is_dir().then_some(dir) }
    }

    /// The classes with a set, shipped or in the folder, sorted.
    pub fn classes(&self) -> Vec<String> {
        let mut classes: Vec<String> = SHIPPED.iter().map(|(id, _)| id.to_string()).collect();
        if let Some(entries) = self.dir.as_ref().and_then(|d| std::fs::read_dir(d).ok()) {
            classes.extend(entries.filter_map(|e| {
                let path = e.ok()?.path();
                (path.extension()? == "toml").then(|| path.file_stem()?.to_str().map(str::to_owned))?
            }));
        }
        classes.sort();
        classes.dedup();
        classes.retain(|c| c != GENERIC);
        classes
    }

    /// The set of `class`; an unknown class gets the generic set, flagged.
    pub fn resolve(&self, class: &str) -> Result<ResolvedPrompts, PromptError> {
        if let Some(found) = self.lookup(class)? {
            return Ok(found);
        }
        let generic = self.lookup(GENERIC)?.expect("the generic set is compiled in");
        Ok(ResolvedPrompts {
            set: generic.set.renamed(class, &class.replace('_', " ")),
            path: generic.path,
            generic_fallback: true,
        })
    }

    fn lookup(&self, class: &str) -> Result<Option<ResolvedPrompts>, PromptError> {
        if let Some(dir) = &self.dir {
            let path = file_for(dir, class);
            if path.is_file() {
                return Ok(Some(ResolvedPrompts {
                    set: PromptSet::from_file(&path)?,
                    path: Some(path),
                    generic_fallback: false,
                }));
            }
        }
        match SHIPPED.iter().find(|(id, _)| *id == class) {
            Some((id, text)) => Ok(Some(ResolvedPrompts {
                set: PromptSet::from_toml(text, Path::new(&format!("(built-in) prompts/{id}.toml")))?,
                path: None,
                generic_fallback: false,
            })),
            None => Ok(None),
        }
    }

    /// Reads one explicit file (`--prompts FILE`).
    pub fn from_file(path: &Path) -> Result<ResolvedPrompts, PromptError> {
        Ok(ResolvedPrompts {
            set: PromptSet::from_file(path)?,
            path: Some(path.to_owned()),
            generic_fallback: false,
        })
    }

    /// The shipped sets, for tests.
    pub fn shipped() -> impl Iterator<Item = (&'static str, &'static str)> {
        SHIPPED.iter().copied()
    }
}
