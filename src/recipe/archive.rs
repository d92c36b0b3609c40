//! `alfa recipe export` / `import`: class folders in one `.zip` file
//! (`<class>/recipe.toml`, `<class>/prompts.toml`, `<class>/refs/<image>`).
//!
//! An import is checked whole before anything is written: every entry's name (a name
//! that could leave the recipes folder, `../x` or `/x`, refuses the file), every
//! recipe and prompt set, every image. A class that exists is replaced only with
//! `force`.

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};

use super::{PROMPTS_FILE, RECIPE_FILE, REFS_DIR, Recipe, RecipeError, Recipes, check_class_name};
use crate::detect::inputs::is_image;
use crate::detect::references::list_references;
use crate::prompts::PromptSet;

/// The most one entry may hold once unpacked, and the whole archive.
const MAX_ENTRY: u64 = 512 << 20;
const MAX_TOTAL: u64 = 4 << 30;

/// Writes `classes` of `recipes` into the zip file `out`; returns the files it holds.
pub fn export(recipes: &Recipes, classes: &[String], out: &Path) -> Result<Vec<String>, RecipeError> {
    if out.extension().and_then(|e| e.to_str()).is_none_or(|e| !e.eq_ignore_ascii_case("zip")) {
        return Err(RecipeError::Refused(format!("{}: the export is a .zip file: name it FILE.zip", out.display())));
    }
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for class in classes {
        check_class_name(class).map_err(RecipeError::Refused)?;
        let dir = recipes.class_dir(class);
        let recipe = recipes.recipe_file(class);
        let prompts = recipes.prompts_file(class);
        let refs = list_references(&recipes.refs_dir(class)).map_err(|e| RecipeError::Refused(e.to_string()))?;
        if !recipe.is_file() && !prompts.is_file() && refs.is_empty() {
            return Err(RecipeError::Refused(format!(
                "no recipe of `{class}` in {} (`alfa recipe list` shows the classes there)",
                recipes.root.display()
            )));
        }
        // What is exported must import: a broken file is named now.
        if recipe.is_file() {
            Recipe::from_file(&recipe)?;
            files.push((format!("{class}/{RECIPE_FILE}"), recipe));
        }
        if prompts.is_file() {
            PromptSet::from_file(&prompts)?;
            files.push((format!("{class}/{PROMPTS_FILE}"), prompts));
        }
        for image in refs {
            let name = image.file_name().and_then(|n| n.to_str()).filter(|n| check_class_name(n).is_ok()).ok_or_else(|| {
                RecipeError::Refused(format!("{}: a reference's name must be plain text to be exported", dir.display()))
            })?;
            files.push((format!("{class}/{REFS_DIR}/{name}"), image));
        }
    }
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o644);
    let zip_error = |e: zip::result::ZipError| RecipeError::Refused(format!("cannot build {}: {e}", out.display()));
    for (name, path) in &files {
        let bytes = std::fs::read(path).map_err(|source| RecipeError::Read { path: path.clone(), source })?;
        zip.start_file(name.as_str(), options).map_err(zip_error)?;
        zip.write_all(&bytes).map_err(|e| zip_error(e.into()))?;
    }
    let bytes = zip.finish().map_err(zip_error)?.into_inner();
    crate::files::write_atomic(out, &bytes)
        .map_err(|source| RecipeError::Write { path: out.to_owned(), source, hint: String::new() })?;
    Ok(files.into_iter().map(|(name, _)| name).collect())
}

/// One class as the archive holds it.
#[derive(Debug, Default)]
struct Incoming {
    recipe: Option<Vec<u8>>,
    prompts: Option<Vec<u8>>,
    refs: Vec<(String, Vec<u8>)>,
}

/// What `import` did, per class.
#[derive(Debug, Default)]
pub struct Imported {
    /// (class, files written, whether a class was replaced)
    pub classes: Vec<(String, usize, bool)>,
}

/// Unpacks the zip file `file` into `recipes` after checking all of it. Classes that
/// exist are refused (all of the import, nothing written) unless `force`: then their
/// recipe, prompt set and references become the archive's (other files stay).
pub fn import(recipes: &Recipes, file: &Path, force: bool) -> Result<Imported, RecipeError> {
    let refuse = |reason: String| RecipeError::Refused(format!("{}: {reason}; nothing imported", file.display()));
    let bytes = std::fs::read(file).map_err(|source| RecipeError::Read { path: file.to_owned(), source })?;
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| refuse(format!("not a zip file ({e})")))?;
    let mut classes: BTreeMap<String, Incoming> = BTreeMap::new();
    let mut total = 0u64;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| refuse(format!("entry {} cannot be read ({e})", i + 1)))?;
        let name = entry.name().map_err(|e| refuse(format!("entry {} has no usable name ({e})", i + 1)))?.into_owned();
        let parts = entry_parts(&name).map_err(refuse)?;
        if entry.is_symlink() {
            return Err(refuse(format!("`{name}` is a link; only files are imported")));
        }
        if entry.is_dir() {
            continue;
        }
        let (class, kind) = match parts.as_slice() {
            [class, file] if file == RECIPE_FILE || file == PROMPTS_FILE => (class.clone(), file.clone()),
            [class, refs, image] if refs == REFS_DIR && is_image(Path::new(image)) => (class.clone(), image.clone()),
            _ => {
                return Err(refuse(format!(
                    "unexpected entry `{name}` (a recipe archive holds <class>/{RECIPE_FILE}, <class>/{PROMPTS_FILE} and <class>/{REFS_DIR}/<image>)"
                )));
            }
        };
        if entry.size() > MAX_ENTRY || total + entry.size() > MAX_TOTAL {
            return Err(refuse(format!("`{name}` is too large ({} bytes unpacked)", entry.size())));
        }
        let mut content = Vec::with_capacity(entry.size() as usize);
        (&mut entry).take(MAX_ENTRY + 1).read_to_end(&mut content).map_err(|e| refuse(format!("`{name}` cannot be unpacked ({e})")))?;
        total += content.len() as u64;
        if content.len() as u64 > MAX_ENTRY || total > MAX_TOTAL {
            return Err(refuse(format!("`{name}` is too large")));
        }
        let incoming = classes.entry(class).or_default();
        match kind.as_str() {
            RECIPE_FILE => incoming.recipe = Some(content),
            PROMPTS_FILE => incoming.prompts = Some(content),
            image => incoming.refs.push((image.to_owned(), content)),
        }
    }
    if classes.is_empty() {
        return Err(refuse("it holds no recipe".into()));
    }
    // Every file is checked before anything is written.
    for (class, incoming) in &classes {
        // Named as inside the archive: `recipes.zip/bottle/recipe.toml, line 3: …`.
        let inside = |f: &str| file.join(class).join(f);
        if let Some(recipe) = &incoming.recipe {
            Recipe::from_toml(&String::from_utf8_lossy(recipe), &inside(RECIPE_FILE))?;
        }
        if let Some(prompts) = &incoming.prompts {
            let set = PromptSet::from_toml(&String::from_utf8_lossy(prompts), &inside(PROMPTS_FILE))?;
            if set.class.id != *class {
                return Err(refuse(format!("{class}/{PROMPTS_FILE} is the prompt set of `{}`", set.class.id)));
            }
        }
        for (name, content) in &incoming.refs {
            image::ImageReader::new(Cursor::new(content))
                .with_guessed_format()
                .map_err(|e| refuse(format!("{class}/{REFS_DIR}/{name}: {e}")))?
                .decode()
                .map_err(|e| refuse(format!("{class}/{REFS_DIR}/{name} is not a readable image ({e})")))?;
        }
    }
    let present = recipes.classes();
    let existing: Vec<String> = classes.keys().filter(|c| present.contains(c)).cloned().collect();
    if !existing.is_empty() && !force {
        let names: Vec<&str> = existing.iter().map(|c| c.as_str()).collect();
        return Err(refuse(format!(
            "{} already in {} ({}): pass --force to replace {}",
            if names.len() == 1 { "this class is" } else { "these classes are" },
            recipes.root.display(),
            names.join(", "),
            if names.len() == 1 { "it" } else { "them" },
        )));
    }
    let mut imported = Imported::default();
    for (class, incoming) in classes {
        recipes.ensure_writable(&class)?;
        let replaced = existing.contains(&class);
        let mut written = 0;
        for (path, content) in [(recipes.recipe_file(&class), &incoming.recipe), (recipes.prompts_file(&class), &incoming.prompts)] {
            match content {
                Some(bytes) => {
                    recipes.write_file(&path, bytes)?;
                    written += 1;
                }
                // The archive's class has none: the built-in set (or no recipe) it is.
                None if path.exists() => std::fs::remove_file(&path).map_err(|e| recipes.write_error(&path, e))?,
                None => {}
            }
        }
        let refs = recipes.refs_dir(&class);
        for old in list_references(&refs).map_err(|e| RecipeError::Refused(e.to_string()))? {
            let name = old.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if !incoming.refs.iter().any(|(n, _)| n == name) {
                std::fs::remove_file(&old).map_err(|e| recipes.write_error(&old, e))?;
            }
        }
        for (name, bytes) in &incoming.refs {
            recipes.write_file(&refs.join(name), bytes)?;
            written += 1;
        }
        imported.classes.push((class, written, replaced));
    }
    Ok(imported)
}

/// The parts of an entry's name, refusing any that could leave the folder it is
/// unpacked in (`..`, absolute paths, drive letters, backslashes, empty parts).
fn entry_parts(name: &str) -> Result<Vec<String>, String> {
    let escapes = || format!("entry `{name}` would be written outside the recipes folder: refused");
    if name.starts_with('/') || name.contains(['\\', '\0', ':']) {
        return Err(escapes());
    }
    let trimmed = name.strip_suffix('/').unwrap_or(name);
    let parts: Vec<String> = trimmed.split('/').map(str::to_owned).collect();
    if parts.iter().any(|p| p.is_empty() || p == "." || p == "..") {
        return Err(escapes());
    }
    if let Some(bad) = parts.iter().find(|p| check_class_name(p).is_err()) {
        return Err(format!("entry `{name}`: `{bad}` is not a usable file or folder name"));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::{MethodRecipe, ThresholdRecord};

    fn png(path: &Path, shade: u8) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::from_pixel(8, 8, image::Rgb([shade, 90, 120])).save(path).unwrap();
    }

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, bytes) in entries {
            zip.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    #[test]
    fn export_then_import_reproduces_the_class_folders() {
        let dir = tempfile::tempdir().unwrap();
        let here = Recipes::new(dir.path().join("here"));
        let mut recipe = Recipe::new("bottle");
        recipe.method = Some(MethodRecipe::new(crate::detect::MethodKind::Alfa, &Default::default()));
        recipe.thresholds.image = Some(ThresholdRecord::by_hand(0.61));
        here.write(&recipe).unwrap();
        let (_, shipped) = crate::prompts::PromptStore::shipped().find(|(id, _)| *id == "bottle").unwrap();
        here.write_file(&here.prompts_file("bottle"), format!("# mine\n{shipped}").as_bytes()).unwrap();
        png(&here.refs_dir("bottle").join("a.png"), 10);
        png(&here.refs_dir("bottle").join("b.png"), 20);
        png(&here.refs_dir("screw").join("s.png"), 30);

        let out = dir.path().join("recipes.zip");
        let files = export(&here, &["bottle".into(), "screw".into()], &out).unwrap();
        assert_eq!(files, ["bottle/recipe.toml", "bottle/prompts.toml", "bottle/refs/a.png", "bottle/refs/b.png", "screw/refs/s.png"]);
        assert!(export(&here, &["nut".into()], &dir.path().join("x.zip")).unwrap_err().to_string().contains("no recipe of `nut`"));

        let there = Recipes::new(dir.path().join("there"));
        let imported = import(&there, &out, false).unwrap();
        assert_eq!(imported.classes, [("bottle".to_owned(), 4, false), ("screw".to_owned(), 1, false)]);
        assert_eq!(there.read("bottle").unwrap(), Some(recipe));
        for relative in ["bottle/prompts.toml", "bottle/refs/a.png", "bottle/refs/b.png", "screw/refs/s.png"] {
            assert_eq!(std::fs::read(there.root.join(relative)).unwrap(), std::fs::read(here.root.join(relative)).unwrap(), "{relative}");
        }

        // Again: the classes exist, nothing is written without --force.
        png(&there.refs_dir("bottle").join("local.png"), 40);
        let err = import(&there, &out, false).unwrap_err().to_string();
        assert!(err.contains("bottle, screw") && err.contains("--force") && err.contains("nothing imported"), "{err}");
        assert!(there.refs_dir("bottle").join("local.png").is_file());
        let imported = import(&there, &out, true).unwrap();
        assert!(imported.classes.iter().all(|c| c.2), "{imported:?}");
        assert!(!there.refs_dir("bottle").join("local.png").exists(), "the archive's references replace the class's");
    }

    #[test]
    fn entries_that_escape_or_do_not_belong_refuse_the_whole_archive() {
        let dir = tempfile::tempdir().unwrap();
        let recipes = Recipes::new(dir.path().join("recipes"));
        let good = Recipe::new("bottle").to_toml();
        for (name, expected) in [
            ("../evil/recipe.toml", "outside the recipes folder"),
            ("bottle/../../recipe.toml", "outside the recipes folder"),
            ("/etc/recipe.toml", "outside the recipes folder"),
            ("bottle\\..\\recipe.toml", "outside the recipes folder"),
            ("bottle/notes.txt", "unexpected entry"),
        ] {
            let zip = dir.path().join("bad.zip");
            std::fs::write(&zip, zip_of(&[("bottle/recipe.toml", good.as_bytes()), (name, b"x")])).unwrap();
            let err = import(&recipes, &zip, true).unwrap_err().to_string();
            assert!(err.contains(expected) && err.contains("nothing imported"), "{name}: {err}");
            assert!(!recipes.root.exists(), "{name}: something was written");
        }
        // A broken recipe is named with its line; a broken image is refused too.
        let zip = dir.path().join("broken.zip");
        std::fs::write(&zip, zip_of(&[("bottle/recipe.toml", b"format = 1\nclass = \"bottle\"\nscales = 3\n")])).unwrap();
        let err = import(&recipes, &zip, false).unwrap_err().to_string();
        assert!(err.contains("bottle/recipe.toml, line 3") && err.contains("unknown field `scales`"), "{err}");
        std::fs::write(&zip, zip_of(&[("bottle/refs/a.png", b"not a png")])).unwrap();
        assert!(import(&recipes, &zip, false).unwrap_err().to_string().contains("not a readable image"));
        assert!(!recipes.root.exists());
    }
}
