//! Finding a class's prompt set: an explicit file, the class's recipe
//! (`<recipes>/<class>/prompts.toml`), or the sets shipped inside the binary; an unknown
//! class gets the generic set (the recipe `generic`'s, if there is one, else the shipped one).

use std::path::{Path, PathBuf};

use super::set::PromptSet;
use super::PromptError;
use crate::recipes_folder::{Recipes, check_class_name};

/// The sets shipped in `prompts/`, compiled in so an installed binary has them.
/// A class's recipe with a prompts.toml takes precedence.
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
    /// The recipes folder: a class's own set is `<recipes>/<class>/prompts.toml`
    /// (`None`: only the shipped sets).
    pub recipes: Option<Recipes>,
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
    /// Where the set came from, for messages: `…/recipes/bottle/prompts.toml`, `built-in bottle`,
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

impl PromptStore {
    /// The sets of the recipes in `recipes`, and the shipped ones.
    pub fn in_recipes(recipes: &Recipes) -> Self {
        Self { recipes: Some(recipes.clone()) }
    }

    /// The classes with a set, shipped or in a recipe, sorted.
    pub fn classes(&self) -> Vec<String> {
        let mut classes: Vec<String> = SHIPPED.iter().map(|(id, _)| id.to_string()).collect();
        if let Some(recipes) = &self.recipes {
            classes.extend(recipes.classes().into_iter().filter(|c| recipes.prompts_file(c).is_file()));
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
        if let Some(recipes) = &self.recipes
            && check_class_name(class).is_ok()
        {
            let path = recipes.prompts_file(class);
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
