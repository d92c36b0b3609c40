//! Finding images: files and folders the user opens, and MVTec-layout ground truth.

use std::path::{Path, PathBuf};

pub use crate::detect::inputs::{IMAGE_EXTENSIONS, is_image};

/// One image to show, with the name the list uses.
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
            walk(path, &mut files);
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

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "ground_truth") {
                walk(&path, out);
            }
        } else if is_image(&path) {
            out.push(path);
        }
    }
}

/// MVTec AD's mask of a test image: `<class>/test/<defect>/<stem>.png` has
/// `<class>/ground_truth/<defect>/<stem>_mask.png`, if it exists.
pub fn ground_truth_mask(image: &Path) -> Option<PathBuf> {
    let defect_dir = image.parent()?;
    let test_dir = defect_dir.parent()?;
    if test_dir.file_name()? != "test" {
        return None;
    }
    let stem = image.file_stem()?.to_str()?;
    let mask = test_dir
        .parent()?
        .join("ground_truth")
        .join(defect_dir.file_name()?)
        .join(format!("{stem}_mask.png"));
    mask.is_file().then_some(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_are_scanned_recursively_without_masks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("bottle");
        for sub in ["test/good", "test/broken", "ground_truth/broken"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        for file in ["test/good/000.png", "test/good/001.JPG", "test/broken/000.png", "test/broken/notes.txt"] {
            std::fs::write(root.join(file), b"x").unwrap();
        }
        std::fs::write(root.join("ground_truth/broken/000_mask.png"), b"x").unwrap();
        let found = scan(&[root.clone()]);
        let names: Vec<_> = found.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["test/broken/000.png", "test/good/000.png", "test/good/001.JPG"]);
        assert_eq!(
            ground_truth_mask(&root.join("test/broken/000.png")),
            Some(root.join("ground_truth/broken/000_mask.png"))
        );
        assert_eq!(ground_truth_mask(&root.join("test/good/000.png")), None);
    }

    #[test]
    fn named_files_are_kept_whatever_their_extension() {
        let found = scan(&[PathBuf::from("/nowhere/report.txt")]);
        assert_eq!(found[0].name, "nowhere/report.txt");
    }
}
