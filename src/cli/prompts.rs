//! `alfa prompts`: generate a class's prompts with an LLM, and show a class's prompts.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{ArgGroup, Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::clip::{ClipTokenizer, TokenizerSource};
use crate::prompts::generate::{self, CLIP_CONTEXT, GenerateEvent, QueryKind};
use crate::prompts::llm::{self, LlmApi, LlmClient, LlmConfig};
use crate::prompts::merge::PromptFileUpdate;
use super::recipe::RecipesArg;
use crate::prompts::set::file_for;
use crate::prompts::{Prompt, PromptSource, PromptStore};

#[derive(Args, Debug)]
pub struct PromptsArgs {
    #[command(subcommand)]
    pub command: PromptsCommand,
}

#[derive(Subcommand, Debug)]
pub enum PromptsCommand {
    /// Ask an LLM for a class's normal and abnormal prompts and descriptors (ALFA's queries)
    /// and add them to the class's recipe (<recipes>/<class>/prompts.toml), or to
    /// DIR/<class>.toml with --out DIR.
    ///
    /// Works with any OpenAI-compatible server. The defaults fit a stock local Ollama
    /// (`ollama serve`, `ollama pull llama3.1`): --llm-url http://localhost:11434/v1,
    /// --llm-model llama3.1, no API key. For OpenAI: --llm-url https://api.openai.com/v1
    /// --llm-model gpt-4o-mini with the key in $OPENAI_API_KEY (or --completions
    /// --llm-model gpt-3.5-turbo-instruct, the paper's model).
    ///
    /// A missing file starts from the shipped set of the class (or the generic one); an
    /// existing file keeps every prompt it has, new unique ones are appended, and the
    /// model, date and queries are recorded in it.
    Generate(GenerateArgs),
    /// Print a class's prompts (templates expanded, LLM prompts, descriptors) by label.
    Show(ShowArgs),
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("classes").required(true).multiple(true).args(["class", "classes_from"])))]
pub struct GenerateArgs {
    /// Class to generate for (its file name, e.g. metal_nut; repeatable).
    #[arg(long, value_name = "C")]
    pub class: Vec<String>,
    /// Generate for every class folder (a folder with a `test/` sub-folder) of an
    /// MVTec-style dataset root.
    #[arg(long, value_name = "DATASET_ROOT")]
    pub classes_from: Option<PathBuf>,
    /// Folder of prompt files (<DIR>/<class>.toml, the layout of this repository's
    /// prompts/) to write or merge into instead of the class's recipe.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub recipes: RecipesArg,
    /// Base URL of the OpenAI-compatible API (up to /v1). The default is a local Ollama.
    #[arg(long, value_name = "URL", default_value = llm::DEFAULT_BASE_URL)]
    pub llm_url: String,
    /// Model name on the server.
    #[arg(long, value_name = "NAME", default_value = llm::DEFAULT_MODEL)]
    pub llm_model: String,
    /// Environment variable holding the API key (sent as a bearer token when set).
    #[arg(long, value_name = "VAR", default_value = llm::DEFAULT_API_KEY_ENV)]
    pub api_key_env: String,
    /// Answers asked per query (normal, abnormal, descriptors).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub samples: usize,
    #[arg(long, value_name = "T", default_value_t = llm::DEFAULT_TEMPERATURE)]
    pub temperature: f32,
    /// Longest answer, in the LLM's tokens.
    #[arg(long, value_name = "N", default_value_t = llm::DEFAULT_MAX_TOKENS)]
    pub max_tokens: u32,
    /// Seconds to wait for one answer.
    #[arg(long, value_name = "SECS", default_value_t = llm::DEFAULT_TIMEOUT_SECS)]
    pub timeout: u64,
    /// Retries after HTTP 429 or 5xx, with exponential backoff (or the server's Retry-After).
    #[arg(long, value_name = "N", default_value_t = llm::DEFAULT_RETRIES)]
    pub retries: u32,
    /// Use POST /completions (instruct models such as gpt-3.5-turbo-instruct) instead of
    /// /chat/completions.
    #[arg(long)]
    pub completions: bool,
    /// CLIP's tokenizer.json, to drop prompts over CLIP's 77 tokens [default: CLIP's, built in].
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Print what would be added; write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// The class (e.g. bottle, metal_nut, pcb1).
    pub class: String,
    /// The class's recipe's prompts.toml is shown when it has one, else the built-in set.
    #[command(flatten)]
    pub recipes: RecipesArg,
}

pub fn run(args: PromptsArgs) -> Result<()> {
    match args.command {
        PromptsCommand::Generate(args) => run_generate(args),
        PromptsCommand::Show(args) => run_show(args),
    }
}

fn run_generate(args: GenerateArgs) -> Result<()> {
    let mut classes = args.class.clone();
    if let Some(root) = &args.classes_from {
        let found = dataset_classes(root)?;
        if found.is_empty() {
            bail!("{} has no class folders (sub-folders with a `test/` folder)", root.display());
        }
        classes.extend(found);
    }
    // Where each class's prompts go: the recipe's prompts.toml, or DIR/<class>.toml.
    let recipes = match &args.out {
        Some(_) => None,
        None => Some(args.recipes.locate()?),
    };
    let target = |class: &str| -> Result<PathBuf> {
        match (&args.out, &recipes) {
            (Some(dir), _) => Ok(file_for(dir, class)),
            (None, Some(recipes)) => {
                if !args.dry_run {
                    super::recipe::ensure_writable(recipes, class)?;
                }
                Ok(recipes.prompts_file(class))
            }
            (None, None) => unreachable!("located above"),
        }
    };
    for class in &classes {
        crate::recipe::check_class_name(class).map_err(anyhow::Error::msg)?;
    }
    let tokenizer = ClipTokenizer::load(&TokenizerSource::or_embedded(args.tokenizer.clone()), CLIP_CONTEXT)?;
    let client = LlmClient::new(LlmConfig {
        base_url: args.llm_url.clone(),
        model: args.llm_model.clone(),
        api: if args.completions { LlmApi::Completions } else { LlmApi::Chat },
        api_key_env: args.api_key_env.clone(),
        temperature: args.temperature,
        max_tokens: args.max_tokens,
        timeout_ms: args.timeout.saturating_mul(1000),
        retries: args.retries,
        ..LlmConfig::default()
    })?;

    let requests = classes.len() * QueryKind::ALL.len() * args.samples;
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(requests as u64);
        bar.set_style(
            ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} answers ({elapsed})")
                .expect("the template is valid"),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let say = |line: String| {
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    };
    for class in &classes {
        bar.set_message(class.clone());
        let file = target(class)?;
        let plan = generate::plan_class(&client, &tokenizer, &file, class, args.samples, &mut |event| {
            match event {
                GenerateEvent::Answered { .. } => bar.inc(1),
                GenerateEvent::Retrying(n) => say(format!(
                    "{}: HTTP {} (attempt {} of {}), retrying in {:.1} s",
                    client.endpoint(),
                    n.status,
                    n.attempt,
                    n.attempts,
                    n.wait.as_secs_f64()
                )),
            }
        })
        .with_context(|| format!("generating prompts for `{class}`"))?;
        let d = plan.generated.dropped;
        say(format!(
            "{class}: dropped {} items without the required beginning, {} over {CLIP_CONTEXT} tokens, {} repeated",
            d.wrong_beginning, d.too_long, d.duplicates
        ));
        bar.suspend(|| report(class, &plan.update, args.dry_run))?;
        if !args.dry_run && plan.update.added_count() > 0 {
            plan.update.write()?;
        }
    }
    bar.finish_and_clear();
    Ok(())
}

fn report(class: &str, update: &PromptFileUpdate, dry_run: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let action = match (dry_run, update.added_count(), update.creates) {
        (_, 0, _) => "nothing new, not written",
        (true, _, true) => "would create",
        (true, _, false) => "would update",
        (false, _, true) => "created",
        (false, _, false) => "updated",
    };
    writeln!(
        out,
        "{class}: +{} normal, +{} abnormal, +{} descriptors: {action} {}",
        update.added_normal.len(),
        update.added_abnormal.len(),
        update.added_descriptors.len(),
        update.path.display()
    )?;
    if dry_run {
        for (label, added) in [
            ("normal", &update.added_normal),
            ("abnormal", &update.added_abnormal),
            ("descriptor", &update.added_descriptors),
        ] {
            for text in added {
                writeln!(out, "  + {label}: {text}")?;
            }
        }
    }
    Ok(())
}

/// Sub-folders of an MVTec-style root that hold a `test/` folder, sorted.
fn dataset_classes(root: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(root).with_context(|| format!("cannot read dataset root {}", root.display()))?;
    let mut classes = Vec::new();
    for entry in entries {
        let path = entry.with_context(|| format!("cannot read dataset root {}", root.display()))?.path();
        if path.join("test").is_dir()
            && let Some(name) = path.file_name().and_then(|n| n.to_str())
        {
            classes.push(name.to_owned());
        }
    }
    classes.sort();
    Ok(classes)
}

fn run_show(args: ShowArgs) -> Result<()> {
    let recipes = args.recipes.locate()?;
    let resolved = PromptStore::in_recipes(&recipes).resolve(&args.class)?;
    let from = match (&resolved.path, resolved.generic_fallback) {
        (Some(path), false) => path.display().to_string(),
        (None, false) => "the built-in set".to_owned(),
        (_, true) => "the generic set (the class has no set of its own)".to_owned(),
    };
    let expanded = resolved.set.expand();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{} (\"{}\"), from {from}", args.class, resolved.set.class.name)?;
    for (label, prompts) in [("normal", &expanded.normal), ("abnormal", &expanded.abnormal)] {
        let count = |source| prompts.iter().filter(|p: &&Prompt| p.source == source).count();
        writeln!(
            out,
            "\n{label}: {} prompts ({} template, {} LLM)",
            prompts.len(),
            count(PromptSource::Template),
            count(PromptSource::Llm)
        )?;
        for p in prompts {
            let source = match p.source {
                PromptSource::Template => "template",
                PromptSource::Llm => "llm",
            };
            writeln!(out, "  [{source}] {}", p.text)?;
        }
    }
    writeln!(out, "\ndescriptors: {}", expanded.descriptors.len())?;
    for d in &expanded.descriptors {
        writeln!(out, "  {d}")?;
    }
    Ok(())
}
