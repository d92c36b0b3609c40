//! `alfa refs`: a class's normal reference images for few-shot mode.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::detect::references::{add_references, list_references, references_dir, remove_references};

#[derive(Args, Debug)]
pub struct RefsArgs {
    #[command(subcommand)]
    pub action: RefsAction,
}

#[derive(Args, Debug)]
pub struct ClassRefs {
    /// Object class whose references these are.
    #[arg(long)]
    pub class: String,
    /// Folder of prompt sets; the references live in <DIR>/<class>.refs/.
    #[arg(long, value_name = "DIR", default_value = "prompts")]
    pub prompts_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum RefsAction {
    /// Copy normal images into the class's references (the originals stay where they are).
    Add {
        #[command(flatten)]
        class: ClassRefs,
        #[arg(required = true, value_name = "IMAGE")]
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
            let dir = references_dir(&class.prompts_dir, &class.class);
            for added in add_references(&dir, &images)? {
                println!("added {}", added.display());
            }
            println!("{} reference image(s) for `{}`", list_references(&dir)?.len(), class.class);
        }
        RefsAction::Remove { class, names } => {
            let dir = references_dir(&class.prompts_dir, &class.class);
            for removed in remove_references(&dir, &names)? {
                println!("removed {}", removed.display());
            }
        }
        RefsAction::List { class } => {
            let dir = references_dir(&class.prompts_dir, &class.class);
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
