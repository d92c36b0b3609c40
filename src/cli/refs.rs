//! `alfa refs`: a class's normal reference images for few-shot mode.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

use super::recipe::{RecipesArg, ensure_writable};
use crate::detect::inputs::scan;
use crate::detect::references::{add_readable_references, list_references, remove_references};

#[derive(Args, Debug)]
pub struct RefsArgs {
    #[command(subcommand)]
    pub action: RefsAction,
}

#[derive(Args, Debug)]
pub struct ClassRefs {
    /// Object class whose references these are (they live in the class's recipe,
    /// <recipes>/<class>/refs/).
    #[arg(long)]
    pub class: String,
    #[command(flatten)]
    pub recipes: RecipesArg,
}

#[derive(Subcommand, Debug)]
pub enum RefsAction {
    /// Copy normal images into the class's references (the originals stay where they are).
    ///
    /// Folders are searched recursively (png, jpg, jpeg, bmp, tif, tiff, webp; not
    /// `ground_truth/`, as in the app). Images that cannot be read are named and not
    /// copied, the others are; the exit status is then non-zero.
    Add {
        #[command(flatten)]
        class: ClassRefs,
        /// Images or folders.
        #[arg(required = true, value_name = "IMAGE|DIR")]
        images: Vec<PathBuf>,
    },
    /// Delete references by file name (as `list` prints them).
    Remove {
        #[command(flatten)]
        class: ClassRefs,
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Print the class's reference images.
    List {
        #[command(flatten)]
        class: ClassRefs,
    },
}

pub fn run(args: RefsArgs) -> Result<()> {
    match args.action {
        RefsAction::Add { class, images } => {
            let recipes = class.recipes.locate()?;
            let files = image_files(&images)?;
            ensure_writable(&recipes, &class.class)?;
            let dir = recipes.refs_dir(&class.class);
            let outcome = add_readable_references(&dir, &files)?;
            for added in &outcome.added {
                println!("added {}", added.display());
            }
            for (_, reason) in &outcome.refused {
                eprintln!("refused: {reason}");
            }
            println!("{} reference image(s) for `{}`", list_references(&dir)?.len(), class.class);
            if !outcome.refused.is_empty() {
                bail!("{} of {} image(s) could not be read (named above); the others were added", outcome.refused.len(), files.len());
            }
        }
        RefsAction::Remove { class, names } => {
            let dir = class.recipes.locate()?.refs_dir(&class.class);
            for removed in remove_references(&dir, &names)? {
                println!("removed {}", removed.display());
            }
        }
        RefsAction::List { class } => {
            let dir = class.recipes.locate()?.refs_dir(&class.class);
            let files = list_references(&dir)?;
            if files.is_empty() {
                println!(
                    "no reference images for `{}` in {}: detection is zero-shot (add some with `alfa refs add --class {} IMAGE...`)",
                    class.class,
                    dir.display(),
                    class.class
                );
            }
            for file in files {
                println!("{}", file.display());
            }
        }
    }
    Ok(())
}

/// Files as given, and the images in folders (recursively, sorted, as the app finds
/// them: `ground_truth/` folders hold MVTec masks and are skipped).
pub(super) fn image_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if !path.exists() {
            bail!("{}: no such file or folder", path.display());
        }
        let found = scan(std::slice::from_ref(path));
        if found.is_empty() {
            bail!("no images in {}", path.display());
        }
        files.extend(found.into_iter().map(|image| image.path));
    }
    Ok(files)
}
