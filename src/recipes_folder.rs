//! The recipes folder's layout: a folder per class holding its recipe
//! (`recipe.toml`), its prompt set (`prompts.toml`) and its reference images
//! (`refs/`). Apart from `recipe`, which reads and writes recipes there, because the
//! prompt store (`prompts::store`) finds a class's prompt set here too, and `recipe`
//! itself stands on the prompts and the detector.

use std::path::PathBuf;

/// The recipe's own file in a class folder.
pub const RECIPE_FILE: &str = "recipe.toml";
/// The class's prompt set in a class folder (today's prompt-file format).
pub const PROMPTS_FILE: &str = "prompts.toml";
/// The class's reference images in a class folder.
pub const REFS_DIR: &str = "refs";

/// A class name usable as a folder name: not empty, no path separators, not `.`/`..`.
pub fn check_class_name(class: &str) -> Result<(), String> {
    if class.is_empty() || class.starts_with('.') || class.contains(['/', '\\', ':', '\0']) || class.trim() != class {
        return Err(format!("{class:?} is not a usable class name (it names a folder: no /, \\, :, leading dot or spaces)"));
    }
    Ok(())
}

/// The recipes folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipes {
    pub root: PathBuf,
}

impl Recipes {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn class_dir(&self, class: &str) -> PathBuf {
        self.root.join(class)
    }

    pub fn recipe_file(&self, class: &str) -> PathBuf {
        self.class_dir(class).join(RECIPE_FILE)
    }

    pub fn prompts_file(&self, class: &str) -> PathBuf {
        self.class_dir(class).join(PROMPTS_FILE)
    }

    pub fn refs_dir(&self, class: &str) -> PathBuf {
        self.class_dir(class).join(REFS_DIR)
    }

    /// The class folders (sub-folders holding a recipe.toml, a prompts.toml or refs/), sorted.
    pub fn classes(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return Vec::new() };
        let mut classes: Vec<String> = entries
            .filter_map(|e| {
                let path = e.ok()?.path();
                let name = path.file_name()?.to_str()?.to_owned();
                let is_class = check_class_name(&name).is_ok()
                    && (path.join(RECIPE_FILE).is_file() || path.join(PROMPTS_FILE).is_file() || path.join(REFS_DIR).is_dir());
                is_class.then_some(name)
            })
            .collect();
        classes.sort();
        classes
    }
}
