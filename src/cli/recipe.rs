//! `alfa recipe`: the class folders (prompt set, references, thresholds, model and
//! method) in the recipes folder: list, show, export, import, migrate.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::detect::references::list_references;
use crate::prompts::PromptStore;
use crate::recipe::legacy::{self, LEGACY_DIR};
use crate::recipe::{ClassSummary, ENV, Recipe, Recipes, ThresholdRecord, archive};

/// `--recipes DIR`, on every command that reads or writes class data.
#[derive(Args, Debug, Default, Clone)]
pub struct RecipesArg {
    /// Folder of the class recipes: <DIR>/<class>/ holds recipe.toml (model, method,
    /// thresholds), prompts.toml (the prompt set) and refs/ (reference images)
    /// [default: $ALFA_RECIPES, else the per-user data folder, e.g. ~/.local/share/alfa/recipes].
    #[arg(long, value_name = "DIR", global = true)]
    pub recipes: Option<PathBuf>,
}

static LEGACY_NOTED: AtomicBool = AtomicBool::new(false);

impl RecipesArg {
    /// The recipes folder; the first call also says (once, on stderr) when
    /// `./prompts` holds class files the recipes lack.
    pub fn locate(&self) -> Result<Recipes> {
        let recipes = Recipes::locate(self.recipes.as_deref())?;
        if !LEGACY_NOTED.swap(true, Ordering::SeqCst)
            && let Some(note) = legacy::note(Path::new(LEGACY_DIR), &recipes)
        {
            eprintln!("note: {note}");
        }
        Ok(recipes)
    }
}

#[derive(Args, Debug)]
pub struct RecipeArgs {
    #[command(subcommand)]
    pub command: RecipeCommand,
    #[command(flatten)]
    pub recipes: RecipesArg,
}

#[derive(Subcommand, Debug)]
pub enum RecipeCommand {
    /// The classes in the recipes folder: model, method, thresholds, references, folder.
    List,
    /// Everything a class's recipe holds, readable (or --json).
    Show {
        /// The class (its folder's name).
        class: String,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write classes (recipe, prompt set, references) into one .zip file, for
    /// `alfa recipe import` on another machine.
    Export {
        /// Classes to export.
        #[arg(required = true, value_name = "CLASS")]
        classes: Vec<String>,
        /// The .zip file to write (replaced if it exists).
        #[arg(long, value_name = "FILE.zip")]
        out: PathBuf,
    },
    /// Unpack a .zip file from `alfa recipe export` into the recipes folder.
    ///
    /// The whole file is checked first (every recipe, prompt set and image; an entry
    /// whose name would leave the folder, such as `../x`, refuses the file): either all
    /// of it is imported or nothing. Classes that exist are refused unless --force.
    Import {
        #[arg(value_name = "FILE.zip")]
        file: PathBuf,
        /// Replace classes that exist: their recipe, prompt set and references become the
        /// archive's (other files in their folders stay).
        #[arg(long)]
        force: bool,
    },
    /// Copy the class files of the old layout (./prompts/<class>.toml and
    /// ./prompts/<class>.refs/) into the recipes. The originals stay; a file identical
    /// to the built-in set is not copied.
    Migrate {
        /// The old prompts folder.
        #[arg(long, value_name = "DIR", default_value = LEGACY_DIR)]
        from: PathBuf,
        /// Replace a recipe's own prompts.toml, and add references to a recipe that has
        /// some (without it, such files are named and left).
        #[arg(long)]
        force: bool,
    },
}

pub fn run(args: RecipeArgs) -> Result<()> {
    // Migrate says itself what it finds: no note first.
    if matches!(args.command, RecipeCommand::Migrate { .. }) {
        LEGACY_NOTED.store(true, Ordering::SeqCst);
    }
    let recipes = args.recipes.locate()?;
    match args.command {
        RecipeCommand::List => list(&recipes),
        RecipeCommand::Show { class, json } => show(&recipes, &class, json),
        RecipeCommand::Export { classes, out } => {
            let files = archive::export(&recipes, &classes, &out)?;
            println!("wrote {} ({} files of {} class(es) from {})", out.display(), files.len(), classes.len(), recipes.root.display());
            Ok(())
        }
        RecipeCommand::Import { file, force } => {
            let imported = archive::import(&recipes, &file, force)?;
            for (class, files, replaced) in imported.classes {
                let how = if replaced { "replaced" } else { "imported" };
                println!("{how} `{class}` ({files} files) in {}", recipes.class_dir(&class).display());
            }
            Ok(())
        }
        RecipeCommand::Migrate { from, force } => migrate(&recipes, &from, force),
    }
}

fn migrate(recipes: &Recipes, from: &Path, force: bool) -> Result<()> {
    if !from.is_dir() {
        bail!("{} is not a folder: nothing to migrate (pass the old prompts folder with --from DIR)", from.display());
    }
    let done = legacy::migrate(from, recipes, force)?;
    for (original, copy) in &done.copied {
        println!("copied {} -> {}", original.display(), copy.display());
    }
    for (file, reason) in &done.skipped {
        eprintln!("left {}: {reason}", file.display());
    }
    if done.copied.is_empty() && done.skipped.is_empty() {
        println!(
            "nothing to migrate: {} holds no class files that the recipes in {} lack (files identical to the built-in sets are not copied)",
            from.display(),
            recipes.root.display()
        );
    } else {
        println!("{} file(s) copied into {}; the originals in {} are unchanged", done.copied.len(), recipes.root.display(), from.display());
    }
    Ok(())
}

fn threshold_text(record: &Option<ThresholdRecord>) -> String {
    record.as_ref().map_or_else(|| "-".into(), |t| format!("{} ({})", t.value, short_how(t)))
}

fn short_how(record: &ThresholdRecord) -> String {
    match record.how {
        crate::recipe::ThresholdHow::ByHand => "by hand".into(),
        crate::recipe::ThresholdHow::GoodImages => format!("{} good, FPR {}", record.images.unwrap_or(0), record.fpr.unwrap_or(0.0)),
    }
}

fn list(recipes: &Recipes) -> Result<()> {
    let classes = recipes.classes();
    if classes.is_empty() {
        println!(
            "no recipes in {} (the app, `alfa threshold`, `alfa refs add` and `alfa recipe import` make them; \
             --recipes DIR or {ENV} name another folder)",
            recipes.root.display()
        );
        return Ok(());
    }
    let mut rows = vec![["class", "model", "method", "OK/NG", "region", "refs", "folder"].map(String::from)];
    for class in classes {
        let ClassSummary { class, dir, recipe, has_prompts, refs } = recipes.summary(&class);
        let (model, method, image, region) = match &recipe {
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
            Some(Err(e)) => (format!("error: {e}"), String::new(), String::new(), String::new()),
            Some(Ok(r)) => (
                r.model.as_ref().map_or_else(|| "-".into(), |m| m.id.clone()),
                r.method.as_ref().map_or_else(|| "-".into(), |m| m.name.name()),
                threshold_text(&r.thresholds.image),
                threshold_text(&r.thresholds.region),
            ),
        };
        let prompts = if has_prompts { "" } else { " (built-in prompts)" };
        rows.push([class, model, method, image, region, refs.to_string(), format!("{}{prompts}", dir.display())]);
    }
    let widths: Vec<usize> = (0..7).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = std::io::stdout().lock();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:w$}")).collect();
        writeln!(out, "{}", cells.join("  ").trim_end())?;
    }
    Ok(())
}

#[derive(Serialize)]
struct Shown {
    class: String,
    folder: PathBuf,
    recipe_file: Option<PathBuf>,
    recipe: Option<Recipe>,
    /// The recipe's prompts.toml, or `None` for the built-in (or generic) set.
    prompts_file: Option<PathBuf>,
    prompt_set: String,
    normal_prompts: usize,
    abnormal_prompts: usize,
    descriptors: usize,
    references: Vec<PathBuf>,
}

fn show(recipes: &Recipes, class: &str, json: bool) -> Result<()> {
    crate::recipe::check_class_name(class).map_err(anyhow::Error::msg)?;
    let recipe = recipes.read(class)?;
    let prompts = PromptStore::in_recipes(recipes).resolve(class)?;
    let expanded = prompts.set.expand();
    let references = list_references(&recipes.refs_dir(class))?;
    let folder = recipes.class_dir(class);
    if recipe.is_none() && prompts.path.is_none() && references.is_empty() && !folder.exists() {
        bail!("no recipe of `{class}` in {} (`alfa recipe list` shows the classes there)", recipes.root.display());
    }
    let shown = Shown {
        class: class.to_owned(),
        recipe_file: recipe.is_some().then(|| recipes.recipe_file(class)),
        folder,
        recipe,
        prompts_file: prompts.path.clone(),
        prompt_set: prompts.origin(),
        normal_prompts: expanded.normal.len(),
        abnormal_prompts: expanded.abnormal.len(),
        descriptors: expanded.descriptors.len(),
        references,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{} ({})", shown.class, shown.folder.display())?;
    match &shown.recipe {
        None => writeln!(out, "  recipe: none yet (no thresholds set; the app or `alfa threshold` write one)")?,
        Some(r) => {
            match &r.model {
                Some(m) => writeln!(
                    out,
                    "  model: {}\n    architecture {}, precision {}, weights BLAKE3 {}",
                    m.id,
                    m.arch,
                    m.precision.name(),
                    m.weights_blake3
                )?,
                None => writeln!(out, "  model: not recorded")?,
            }
            match &r.method {
                Some(m) => {
                    let scales: Vec<String> = m.scales.iter().map(usize::to_string).collect();
                    writeln!(
                        out,
                        "  method: {}\n    scales {}, window mode {:?}, sigma {} px, ridge lambda {}, context k {} tau {}, \
                         top descriptors {}, window batch {}, aligner {}",
                        m.name.name(),
                        scales.join(","),
                        m.window_mode,
                        m.sigma,
                        m.ridge_lambda,
                        m.context_k,
                        m.context_tau,
                        m.top_descriptors,
                        m.window_batch,
                        if m.aligner { "on" } else { "off" }
                    )?;
                    if m.refs_backbone != crate::detect::RefsBackbone::Clip {
                        writeln!(out, "    few-shot bank: {} features", m.refs_backbone.name())?;
                    }
                    if let Some(shots) = m.shots {
                        writeln!(out, "    few-shot: {shots} of the references, drawn with seed {}", m.seed.unwrap_or(0))?;
                    }
                    if let Some(views) = m.anovl_views {
                        writeln!(out, "    AnoVL views: {views}")?;
                    }
                }
                None => writeln!(out, "  method: not recorded")?,
            }
            for (name, record) in [("OK/NG threshold", &r.thresholds.image), ("region threshold", &r.thresholds.region)] {
                match record {
                    Some(t) => writeln!(out, "  {name}: {} {}", t.value, t.describe())?,
                    None => writeln!(out, "  {name}: not set (the default 0.5 applies)")?,
                }
            }
        }
    }
    writeln!(
        out,
        "  prompts: {} ({} normal, {} abnormal, {} descriptors)",
        shown.prompt_set, shown.normal_prompts, shown.abnormal_prompts, shown.descriptors
    )?;
    writeln!(out, "  references: {}", if shown.references.is_empty() { "none (zero-shot)".into() } else { shown.references.len().to_string() })?;
    for r in &shown.references {
        writeln!(out, "    {}", r.display())?;
    }
    Ok(())
}

/// Checks that `class`'s recipe folder can be written before slow work, saying where
/// and what to do when not.
pub fn ensure_writable(recipes: &Recipes, class: &str) -> Result<PathBuf> {
    recipes.ensure_writable(class).with_context(|| format!("the recipe of `{class}` cannot be written"))
}
