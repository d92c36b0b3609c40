//! Today's class files before recipes: `./prompts/<class>.toml` and
//! `./prompts/<class>.refs/` (relative to the working folder). They are found, named,
//! and copied into the recipes on request (`alfa recipe migrate`, the app's Migrate
//! button); never moved, changed or deleted. A prompt file identical to the set shipped
//! for its class (this repository's own `prompts/` folder) is not legacy.

use std::path::{Path, PathBuf};

use super::{RecipeError, Recipes, check_class_name};
use crate::detect::references::{add_readable_references, list_references};
use crate::prompts::PromptStore;

/// The folder legacy files are looked for in, relative to the working folder.
pub const LEGACY_DIR: &str = "prompts";

/// One class's legacy files.
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyClass {
    pub class: String,
    /// `<dir>/<class>.toml`, when it is not the shipped set.
    pub prompts: Option<PathBuf>,
    /// The images in `<dir>/<class>.refs/`.
    pub refs: Vec<PathBuf>,
    /// The recipe has its own prompts.toml (other than the legacy one): migrating
    /// would replace it.
    pub prompts_conflict: bool,
    /// The recipe has reference images already: migrating would add to them.
    pub refs_conflict: bool,
}

impl LegacyClass {
    /// Nothing here the recipe lacks (what is legacy is in the recipe already, or
    /// the recipe has its own): no reason to say anything unasked.
    pub fn settled(&self) -> bool {
        (self.prompts.is_none() || self.prompts_conflict) && (self.refs.is_empty() || self.refs_conflict)
    }

    /// `bottle.toml, bottle.refs/ (3 images)`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = &self.prompts {
            parts.push(p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned()));
        }
        if !self.refs.is_empty() {
            parts.push(format!("{}.refs/ ({} images)", self.class, self.refs.len()));
        }
        parts.join(", ")
    }
}

/// The legacy files in `dir` (sorted by class), with what the recipes already have.
pub fn find(dir: &Path, recipes: &Recipes) -> Vec<LegacyClass> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut classes = std::collections::BTreeMap::<String, LegacyClass>::new();
    let blank = |class: &str| LegacyClass {
        class: class.to_owned(),
        prompts: None,
        refs: Vec::new(),
        prompts_conflict: false,
        refs_conflict: false,
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if let Some(class) = name.strip_suffix(".toml").filter(|c| check_class_name(c).is_ok() && path.is_file()) {
            let Ok(bytes) = std::fs::read(&path) else { continue };
            if is_shipped(class, &bytes) {
                continue;
            }
            let target = recipes.prompts_file(class);
            let conflict = match std::fs::read(&target) {
                Ok(existing) => existing != bytes,
                Err(_) => false,
            };
            if target.exists() && !conflict {
                continue;
            }
            let found = classes.entry(class.to_owned()).or_insert_with(|| blank(class));
            found.prompts = Some(path.clone());
            found.prompts_conflict = conflict;
        } else if let Some(class) = name.strip_suffix(".refs").filter(|c| check_class_name(c).is_ok() && path.is_dir()) {
            let images = list_references(&path).unwrap_or_default();
            let present = list_references(&recipes.refs_dir(class)).unwrap_or_default();
            let missing: Vec<PathBuf> = images.into_iter().filter(|i| !present.iter().any(|p| same_bytes(i, p))).collect();
            if missing.is_empty() {
                continue;
            }
            let found = classes.entry(class.to_owned()).or_insert_with(|| blank(class));
            found.refs = missing;
            found.refs_conflict = !present.is_empty();
        }
    }
    classes.into_values().collect()
}

/// The shipped set of `class`, byte for byte (line endings aside).
fn is_shipped(class: &str, bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes).replace("\r\n", "\n");
    PromptStore::shipped().any(|(id, shipped)| id == class && shipped.replace("\r\n", "\n") == text)
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).ok();
    size(a).is_some() && size(a) == size(b) && std::fs::read(a).ok() == std::fs::read(b).ok()
}

/// The one-line note a command prints when legacy files in `dir` are not in the
/// recipes; `None` when there is nothing to say.
pub fn note(dir: &Path, recipes: &Recipes) -> Option<String> {
    let unsettled: Vec<String> = find(dir, recipes).iter().filter(|c| !c.settled()).map(LegacyClass::describe).collect();
    if unsettled.is_empty() {
        return None;
    }
    let from = if dir == Path::new(LEGACY_DIR) { String::new() } else { format!(" --from {}", dir.display()) };
    Some(format!(
        "{} holds class files that the recipes in {} lack: {}. They are not used any more: copy them with \
         `alfa recipe migrate{from}` (the originals stay)",
        dir.display(),
        recipes.root.display(),
        unsettled.join(", ")
    ))
}

/// What `migrate` did.
#[derive(Debug, Default)]
pub struct Migrated {
    /// (original, copy)
    pub copied: Vec<(PathBuf, PathBuf)>,
    /// Files left as they are, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Copies the legacy files of `dir` into the recipes. A recipe's own prompts.toml is
/// replaced, and references are added to a recipe that has some, only with `force`;
/// the originals are never changed.
pub fn migrate(dir: &Path, recipes: &Recipes, force: bool) -> Result<Migrated, RecipeError> {
    let mut done = Migrated::default();
    for class in find(dir, recipes) {
        if let Some(from) = &class.prompts {
            let to = recipes.prompts_file(&class.class);
            if class.prompts_conflict && !force {
                done.skipped.push((
                    from.clone(),
                    format!("{} exists with other prompts (--force replaces it)", to.display()),
                ));
            } else {
                let bytes = std::fs::read(from).map_err(|source| RecipeError::Read { path: from.clone(), source })?;
                // A file that does not parse would break the recipe: refused, named.
                let text = String::from_utf8_lossy(&bytes);
                crate::prompts::PromptSet::from_toml(&text, from)?;
                recipes.write_file(&to, &bytes)?;
                done.copied.push((from.clone(), to));
            }
        }
        if !class.refs.is_empty() {
            if class.refs_conflict && !force {
                for from in &class.refs {
                    done.skipped.push((
                        from.clone(),
                        format!("the recipe of `{}` has references of its own (--force adds these)", class.class),
                    ));
                }
                continue;
            }
            let to = recipes.refs_dir(&class.class);
            let added = add_readable_references(&to, &class.refs).map_err(|e| RecipeError::Refused(e.to_string()))?;
            for (from, reason) in added.refused {
                done.skipped.push((from, reason));
            }
            // Copies keep their names unless one is taken by other bytes.
            for copy in added.added {
                let from = class.refs.iter().find(|f| same_bytes(f, &copy)).cloned().unwrap_or_default();
                done.copied.push((from, copy));
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(path: &Path, shade: u8) {
        image::RgbImage::from_pixel(8, 8, image::Rgb([shade, 90, 120])).save(path).unwrap();
    }

    #[test]
    fn legacy_files_are_copied_never_moved_and_shipped_sets_are_not_legacy() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join("prompts");
        std::fs::create_dir_all(legacy.join("bottle.refs")).unwrap();
        // The shipped sets, as in this repository's prompts/ folder: not legacy.
        for (id, text) in PromptStore::shipped() {
            std::fs::write(legacy.join(format!("{id}.toml")), text).unwrap();
        }
        let recipes = Recipes::new(dir.path().join("recipes"));
        assert!(find(&legacy, &recipes).is_empty());
        assert_eq!(note(&legacy, &recipes), None, "no nagging in the repository's root");

        // An edited set and two references are.
        let (_, shipped) = PromptStore::shipped().find(|(id, _)| *id == "bottle").unwrap();
        let edited = format!("# mine\n{shipped}");
        std::fs::write(legacy.join("bottle.toml"), &edited).unwrap();
        png(&legacy.join("bottle.refs/a.png"), 10);
        png(&legacy.join("bottle.refs/b.png"), 20);
        let found = find(&legacy, &recipes);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].describe(), "bottle.toml, bottle.refs/ (2 images)");
        let note = note(&legacy, &recipes).unwrap();
        assert!(note.contains("bottle.toml") && note.contains("alfa recipe migrate"), "{note}");

        let done = migrate(&legacy, &recipes, false).unwrap();
        assert_eq!(done.copied.len(), 3, "{done:?}");
        assert!(done.skipped.is_empty(), "{done:?}");
        assert_eq!(std::fs::read_to_string(recipes.prompts_file("bottle")).unwrap(), edited);
        assert_eq!(std::fs::read(recipes.refs_dir("bottle").join("a.png")).unwrap(), std::fs::read(legacy.join("bottle.refs/a.png")).unwrap());
        // The originals stay, unchanged; nothing is left to say.
        assert_eq!(std::fs::read_to_string(legacy.join("bottle.toml")).unwrap(), edited);
        assert!(legacy.join("bottle.refs/b.png").is_file());
        assert!(find(&legacy, &recipes).is_empty());
        assert_eq!(super::note(&legacy, &recipes), None);
        // Migrating again copies nothing.
        assert!(migrate(&legacy, &recipes, false).unwrap().copied.is_empty());
    }

    #[test]
    fn a_recipe_file_is_never_replaced_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join("prompts");
        std::fs::create_dir_all(&legacy).unwrap();
        let (_, shipped) = PromptStore::shipped().find(|(id, _)| *id == "bottle").unwrap();
        std::fs::write(legacy.join("bottle.toml"), format!("# old\n{shipped}")).unwrap();
        let recipes = Recipes::new(dir.path().join("recipes"));
        let own = format!("# the recipe's own\n{shipped}");
        recipes.write_file(&recipes.prompts_file("bottle"), own.as_bytes()).unwrap();
        let found = find(&legacy, &recipes);
        assert!(found[0].prompts_conflict && found[0].settled(), "{found:?}");
        assert_eq!(note(&legacy, &recipes), None, "the recipe has its own: no nagging");
        let done = migrate(&legacy, &recipes, false).unwrap();
        assert!(done.copied.is_empty() && done.skipped[0].1.contains("--force"), "{done:?}");
        assert_eq!(std::fs::read_to_string(recipes.prompts_file("bottle")).unwrap(), own);
        migrate(&legacy, &recipes, true).unwrap();
        assert!(std::fs::read_to_string(recipes.prompts_file("bottle")).unwrap().starts_with("# old"));
    }
}
