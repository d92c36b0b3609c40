//! Which images a run analyses and where their outputs go.
//!
//! Images under an MVTec AD layout (`<class>/test/<defect>/<name>.png`) keep that
//! layout in the output (`<class>/test/<defect>/<name>`), which is what the official
//! MVTec AD evaluation reads; other images keep their path relative to the folder given.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// File extensions read as images (lower case).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputImage {
    pub path: PathBuf,
    /// Output path relative to the output folder, without extension.
    pub output_stem: PathBuf,
    /// The class an MVTec AD layout names, if any.
    pub class: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{}: no such file or folder", .0.display())]
    Missing(PathBuf),
    #[error("cannot list {}: {reason}", path.display())]
    List { path: PathBuf, reason: String },
    #[error("{} is not an image (known extensions: {})", .0.display(), IMAGE_EXTENSIONS.join(", "))]
    NotAnImage(PathBuf),
    #[error("no images found in {}", .0.display())]
    Empty(PathBuf),
    #[error("{} and {} would write the same output `{}`: pass them in separate runs or folders", first.display(), second.display(), stem.display())]
    Clash { first: PathBuf, second: PathBuf, stem: PathBuf },
}

pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The images of `paths` (files or folders, folders searched recursively, in sorted
/// order). In a folder that has a `test` sub-folder (an MVTec AD class), only `test`
/// is searched: `train` and `ground_truth` are not test images.
pub fn collect(paths: &[PathBuf]) -> Result<Vec<InputImage>, InputError> {
    let mut images = Vec::new();
    for path in paths {
        if path.is_dir() {
            let before = images.len();
            walk(path, path, &mut images)?;
            if images.len() == before {
                return Err(InputError::Empty(path.clone()));
            }
        } else if path.is_file() {
            if !is_image(path) {
                return Err(InputError::NotAnImage(path.clone()));
            }
            let stem = path.file_stem().map(PathBuf::from).unwrap_or_default();
            images.push(input(path, stem));
        } else {
            return Err(InputError::Missing(path.clone()));
        }
    }
    let mut seen: HashMap<&Path, &Path> = HashMap::new();
    for image in &images {
        if let Some(first) = seen.insert(&image.output_stem, &image.path) {
            if first != image.path {
                return Err(InputError::Clash {
                    first: first.to_owned(),
                    second: image.path.clone(),
                    stem: image.output_stem.clone(),
                });
            }
        }
    }
    images.dedup_by(|a, b| a.path == b.path);
    Ok(images)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<InputImage>) -> Result<(), InputError> {
    let listing_failed = |e: std::io::Error| InputError::List {
        path: dir.to_owned(),
        reason: e.to_string(),
    };
    let mut entries = std::fs::read_dir(dir)
        .map_err(listing_failed)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(listing_failed)?;
    entries.sort();
    let test = dir.join("test");
    if test.is_dir() {
        entries = vec![test];
    }
    for entry in entries {
        if entry.is_dir() {
            walk(root, &entry, out)?;
        } else if is_image(&entry) {
            out.push(in_folder(root, &entry));
        }
    }
    Ok(())
}

/// One image the app lists (or `alfa refs add` copies), with the name the list uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundImage {
    pub path: PathBuf,
    /// Path relative to the opened folder (`broken_large/003.png`), or the file name.
    pub name: String,
}

/// Expands files and folders into images, in a stable order. Folders are scanned
/// recursively (MVTec's `test/<defect>/` layout), except `ground_truth/` folders, which
/// hold masks, not inputs. Explicitly named files are kept even if their extension is
/// unknown, so that a bad file shows in the list with its reason.
pub fn scan(paths: &[PathBuf]) -> Vec<FoundImage> {
    let mut found = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut files = Vec::new();
            walk_images(path, &mut files);
            files.sort();
            found.extend(files.into_iter().map(|file| FoundImage {
                name: file.strip_prefix(path).unwrap_or(&file).display().to_string(),
                path: file,
            }));
        } else {
            found.push(FoundImage { name: short_name(path), path: path.clone() });
        }
    }
    found
}

/// `folder/file`: files named one by one often share their name (`000.png`) across
/// MVTec's defect folders.
fn short_name(path: &Path) -> String {
    let file = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let folder = path.parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned());
    match (folder, file) {
        (Some(folder), Some(file)) => format!("{folder}/{file}"),
        (None, Some(file)) => file,
        _ => path.display().to_string(),
    }
}

fn walk_images(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "ground_truth") {
                walk_images(&path, out);
            }
        } else if is_image(&path) {
            out.push(path);
        }
    }
}

/// The class an MVTec AD layout path names (`.../screw/test/scratch/000.png`: `screw`).
pub fn layout_class(path: &Path) -> Option<String> {
    let names: Vec<&str> = path.iter().filter_map(|c| c.to_str()).collect();
    match names.as_slice() {
        [.., class, "test", _, _] => Some((*class).to_owned()),
        _ => None,
    }
}

/// `path`, an image found in the folder `root`: its output keeps its path relative to
/// `root` (or the MVTec AD layout when the path has it).
pub fn in_folder(root: &Path, path: &Path) -> InputImage {
    input(path, path.strip_prefix(root).unwrap_or(path).with_extension(""))
}

/// An image the app lists under `name` ([`FoundImage::name`]), with the output `alfa
/// detect` gives it when its folder is opened: the MVTec AD layout when the path has it,
/// else the name without its extension (only its plain parts: never outside the folder).
pub fn listed(path: &Path, name: &str) -> InputImage {
    let stem: PathBuf =
        Path::new(name).with_extension("").components().filter(|c| matches!(c, std::path::Component::Normal(_))).collect();
    input(path, if stem.as_os_str().is_empty() { PathBuf::from("image") } else { stem })
}

/// An input whose output follows the MVTec AD layout when the path has it.
fn input(path: &Path, fallback_stem: PathBuf) -> InputImage {
    let names: Vec<&str> = path.iter().filter_map(|c| c.to_str()).collect();
    if let [.., class, "test", defect, file] = names.as_slice() {
        let stem = Path::new(file).file_stem().unwrap_or_default();
        return InputImage {
            path: path.to_owned(),
            output_stem: [*class, "test", *defect].iter().collect::<PathBuf>().join(stem),
            class: Some((*class).to_owned()),
        };
    }
    InputImage {
        path: path.to_owned(),
        output_stem: fallback_stem,
        class: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"").unwrap();
    }

    #[test]
    fn mvtec_layout_keeps_class_test_defect_and_skips_train() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("mvtec");
        for rel in [
            "bottle/train/good/000.png",
            "bottle/test/good/000.png",
            "bottle/test/broken_large/001.png",
            "bottle/ground_truth/broken_large/001_mask.png",
            "bottle/license.txt",
            "cable/test/cut/003.PNG",
        ] {
            touch(&root, rel);
        }
        let images = collect(&[root.clone()]).unwrap();
        let stems: Vec<_> = images.iter().map(|i| i.output_stem.to_str().unwrap().to_owned()).collect();
        assert_eq!(stems, ["bottle/test/broken_large/001", "bottle/test/good/000", "cable/test/cut/003"]);
        assert_eq!(images[2].class.as_deref(), Some("cable"));
        // A class folder given directly, and a single file, give the same layout.
        let class_only = collect(&[root.join("bottle")]).unwrap();
        assert_eq!(class_only[0].output_stem, PathBuf::from("bottle/test/broken_large/001"));
        let file = collect(&[root.join("bottle/test/good/000.png")]).unwrap();
        assert_eq!(file[0].output_stem, PathBuf::from("bottle/test/good/000"));
    }

    #[test]
    fn plain_folders_keep_relative_paths_and_clashes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "a/x.png");
        touch(dir.path(), "a/sub/y.jpg");
        touch(dir.path(), "b/x.png");
        let images = collect(&[dir.path().join("a")]).unwrap();
        let stems: Vec<_> = images.iter().map(|i| i.output_stem.clone()).collect();
        assert_eq!(stems, [PathBuf::from("sub/y"), PathBuf::from("x")]);
        assert!(images.iter().all(|i| i.class.is_none()));
        let err = collect(&[dir.path().join("a/x.png"), dir.path().join("b/x.png")]).unwrap_err();
        assert!(matches!(err, InputError::Clash { .. }), "{err}");
        assert!(matches!(collect(&[dir.path().join("nope.png")]), Err(InputError::Missing(_))));
        touch(dir.path(), "notes.txt");
        assert!(matches!(collect(&[dir.path().join("notes.txt")]), Err(InputError::NotAnImage(_))));
        std::fs::create_dir(dir.path().join("empty")).unwrap();
        assert!(matches!(collect(&[dir.path().join("empty")]), Err(InputError::Empty(_))));
    }
}
