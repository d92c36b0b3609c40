//! `alfa embed`: CLIP embeddings, or DINOv2 patch features, as JSON: the contract
//! parity checks use.

use std::io::Write;

use anyhow::{Context, Result, bail};

use super::EmbedArgs;
use crate::{clip, dinov2};

#[derive(serde::Serialize)]
struct EmbedOutput {
    images: Vec<ImageEmbedding>,
    texts: Vec<TextEmbedding>,
}

#[derive(serde::Serialize)]
struct ImageEmbedding {
    file: String,
    embedding: Vec<f32>,
}

#[derive(serde::Serialize)]
struct TextEmbedding {
    text: String,
    embedding: Vec<f32>,
}

#[derive(serde::Serialize)]
struct PatchOutput {
    images: Vec<ImagePatches>,
}

#[derive(serde::Serialize)]
struct ImagePatches {
    file: String,
    /// Patches per column and per row: [37, 37].
    grid: [usize; 2],
    /// Unit patch features, row-major over the grid.
    patches: Vec<Vec<f32>>,
}

/// Images go through the model in batches of this many (bounded memory).
const EMBED_BATCH: usize = 8;

pub fn run(args: EmbedArgs) -> Result<()> {
    if let Some(model) = &args.dinov2 {
        return run_dinov2(model, &args);
    }
    if args.images.is_empty() && args.texts.is_empty() {
        bail!("nothing to embed: give at least one --image FILE or --text TEXT");
    }
    if let Some(i) = args.texts.iter().position(|t| t.trim().is_empty()) {
        bail!("--text number {} is empty: a prompt needs at least one word", i + 1);
    }
    // Decode every image before loading the model, so a bad file fails fast.
    let decoded = args
        .images
        .iter()
        .map(|p| clip::open_image(p))
        .collect::<Result<Vec<_>, _>>()?;
    let clip = super::load_model(&args.model)?;
    let mut images = Vec::with_capacity(decoded.len());
    for (paths, batch) in args.images.chunks(EMBED_BATCH).zip(decoded.chunks(EMBED_BATCH)) {
        let rows = clip.encode_images(batch)?.to_vec2::<f32>()?;
        images.extend(paths.iter().zip(rows).map(|(p, embedding)| ImageEmbedding {
            file: p.display().to_string(),
            embedding,
        }));
    }
    let mut texts = Vec::with_capacity(args.texts.len());
    for batch in args.texts.chunks(64) {
        let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
        let rows = clip.encode_texts(&refs)?.to_vec2::<f32>()?;
        texts.extend(batch.iter().zip(rows).map(|(t, embedding)| TextEmbedding {
            text: t.clone(),
            embedding,
        }));
    }
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &EmbedOutput { images, texts })?;
    writeln!(out).context("cannot write to stdout")?;
    Ok(())
}


fn run_dinov2(model: &str, args: &EmbedArgs) -> Result<()> {
    if args.images.is_empty() {
        bail!("nothing to embed: give at least one --image FILE");
    }
    let decoded = args.images.iter().map(|p| clip::open_image(p)).collect::<Result<Vec<_>, _>>()?;
    let dino = super::load_dinov2(Some(model), args.model.cpu)?;
    let mut images = Vec::with_capacity(decoded.len());
    for (path, image) in args.images.iter().zip(&decoded) {
        images.push(ImagePatches {
            file: path.display().to_string(),
            grid: [dinov2::GRID, dinov2::GRID],
            patches: dino.patch_features(image)?.to_vec2::<f32>()?,
        });
    }
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &PatchOutput { images })?;
    writeln!(out).context("cannot write to stdout")?;
    Ok(())
}
