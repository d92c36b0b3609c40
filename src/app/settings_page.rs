//! The Settings page: model, method, window scales and mode, recipes folder, LLM.

use egui::{RichText, Ui};

use super::*;
use super::widgets::{METHODS, NG_COLOR, method_label};
use crate::detect::{MethodKind, RefsBackbone, WindowMode};

impl AlfaApp {
    pub(super) fn settings_page(&mut self, ui: &mut Ui) {
        let grid = self.state.model_grid();
        let s = &mut self.state.settings;
        ui.heading("Model");
        ui.horizontal(|ui| {
            ui.label("Model:");
            ui.add(egui::TextEdit::singleline(&mut s.model).hint_text(crate::clip::DEFAULT_MODEL).desired_width(260.0));
        });
        ui.label(RichText::new("A hub repo id, a model folder or a weights file; empty for the default.").small());
        ui.horizontal(|ui| {
            let label = ui.label("Tokenizer:");
            ui.add(egui::TextEdit::singleline(&mut s.tokenizer).hint_text("the model's own, or CLIP's built in").desired_width(260.0))
                .labelled_by(label.id)
                .on_hover_text("A tokenizer.json to use instead of the model folder's own or CLIP's built-in one (as --tokenizer FILE)");
        });
        ui.checkbox(&mut s.cpu, "Run on the CPU");
        ui.label(RichText::new(device_note()).small());
        // What "Load model" runs on: this build's GPU unless "Run on the CPU", with the
        // kernels ALFA_KERNELS chooses (an invalid value stops the load itself).
        let device = crate::clip::DeviceKind::chosen(s.cpu);
        let kernels = crate::clip::Kernels::from_env().unwrap_or_default();
        ui.horizontal(|ui| {
            ui.label("Precision:");
            ui.selectable_value(&mut s.precision, Precision::F32, "f32 (as OpenCLIP)");
            for (precision, label) in [(Precision::Bf16, "bf16 (faster)"), (Precision::F16, "f16 (GPU)")] {
                let allowed = precision.check_on(device, kernels);
                ui.add_enabled_ui(allowed.is_ok(), |ui| {
                    ui.selectable_value(&mut s.precision, precision, label)
                        .on_disabled_hover_text(allowed.err().map(|e| precision_refusal(&e)).unwrap_or_default());
                });
            }
        });
        // Chosen, then "Run on the CPU" ticked: the load would refuse it, say so now.
        if let Err(refused) = s.precision.check_on(device, kernels) {
            ui.label(RichText::new(precision_refusal(&refused)).small().color(NG_COLOR));
        }
        ui.label(
            RichText::new(
                "bf16: about 1.5x faster on the CPU, maps move slightly; f16 and bf16 on a GPU: the image tower in half \
                 precision. f32 reproduces the paper. Applies on Load model.",
            )
            .small(),
        );
        let mut reload = false;
        let mut choose = false;
        ui.horizontal(|ui| {
            reload = ui.button("Load model").clicked();
            choose = ui.button("Choose model folder…").clicked();
        });
        ui.separator();
        ui.heading("Detection");
        let mut changed = false;
        ui.horizontal_wrapped(|ui| {
            ui.label("Method:");
            for kind in METHODS {
                changed |= ui
                    .selectable_value(&mut s.method, kind, method_label(kind))
                    .on_hover_text(match kind {
                        MethodKind::Alfa => "ALFA: prompt adaptation and the fine-grained aligner (+ the memory bank with references)",
                        MethodKind::Clip => "Plain CLIP: two prompts, last-layer patch tokens (zero-shot)",
                        MethodKind::Winclip => "WinCLIP: prompt ensemble and windows (WinCLIP+ with references)",
                        MethodKind::AnovlTfa => "AnoVL, training-free adaptation (zero-shot)",
                        MethodKind::AnovlTta => "AnoVL with test-time adaptation (zero-shot, slower)",
                        MethodKind::Anomalydino => "AnomalyDINO: DINOv2 patches against the references' (few-shot only, no text)",
                    })
                    .changed();
            }
        });
        ui.horizontal(|ui| {
            let label = ui.label("Window scales (patches):");
            let typed = ui
                .add(egui::TextEdit::singleline(&mut self.scales_input).desired_width(80.0))
                .labelled_by(label.id)
                .on_hover_text(match grid {
                    Some(grid) => format!("Window sizes in patches, e.g. 2, 3; from 1 to this model's grid, {grid}"),
                    None => "Window sizes in patches, e.g. 2, 3; checked against the model when it is loaded".into(),
                });
            if typed.changed() {
                match crate::detect::settings::parse_scales(&self.scales_input, grid) {
                    Ok(scales) => {
                        self.scales_error = None;
                        if scales != s.detect.scales {
                            s.detect.scales = scales;
                            changed = true;
                        }
                    }
                    Err(e) => self.scales_error = Some(e.to_string()),
                }
            }
        });
        if let Some(error) = &self.scales_error {
            let in_use = s.detect.scales.iter().map(usize::to_string).collect::<Vec<_>>().join(", ");
            ui.colored_label(NG_COLOR, format!("{error}; still using {in_use}"));
        }
        ui.horizontal(|ui| {
            ui.label("Window mode:");
            changed |= ui.selectable_value(&mut s.detect.window_mode, WindowMode::Tokens, "tokens (fast)").changed();
            changed |= ui.selectable_value(&mut s.detect.window_mode, WindowMode::Pixels, "pixels (paper, slow)").changed();
        });
        ui.horizontal(|ui| {
            ui.label("Few-shot features:");
            changed |= ui
                .selectable_value(&mut s.detect.refs_backbone, RefsBackbone::Clip, "CLIP windows")
                .on_hover_text("The paper's memory bank: the references' window features at the scales above")
                .changed();
            changed |= ui
                .selectable_value(&mut s.detect.refs_backbone, RefsBackbone::Dinov2, "DINOv2 patches")
                .on_hover_text("AnomalyDINO's memory bank: the references' DINOv2 patch features, fused with ALFA's map")
                .changed();
        });
        ui.horizontal(|ui| {
            let label = ui.label("DINOv2 model:");
            ui.add(egui::TextEdit::singleline(&mut s.dino_model).hint_text("vits14").desired_width(200.0))
                .labelled_by(label.id)
                .on_hover_text("vits14 or vitb14 (downloaded once from lmz/candle-dino-v2), or a .safetensors file or a folder; applies on Load model");
        });
        ui.separator();
        ui.heading("Recipes");
        let mut recipes_dir = None;
        ui.horizontal(|ui| {
            let label = ui.label("Folder:");
            let typed = ui
                .add(egui::TextEdit::singleline(&mut self.recipes_input).hint_text("the default").desired_width(240.0))
                .labelled_by(label.id)
                .on_hover_text("One folder per class: recipe.toml (model, method, thresholds), prompts.toml, refs/ (as --recipes DIR); empty for $ALFA_RECIPES or the per-user data folder");
            if typed.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter)) {
                recipes_dir = Some(self.recipes_input.clone());
            }
        });
        ui.horizontal(|ui| {
            if ui.button("Use folder").clicked() {
                recipes_dir = Some(self.recipes_input.clone());
            }
            let in_use = format!("in use: {}", self.recipes().root.display());
            ui.add(egui::Label::new(RichText::new(&in_use).small()).truncate()).on_hover_text(in_use);
        });
        if let Some(dir) = recipes_dir {
            self.set_recipes_dir(&dir);
        }
        let s = &mut self.state.settings;
        ui.separator();
        ui.heading("LLM (Generate more…)");
        egui::Grid::new("llm-settings").num_columns(2).show(ui, |ui| {
            let label = ui.label("Endpoint:");
            ui.add(egui::TextEdit::singleline(&mut s.llm.base_url).desired_width(260.0))
                .labelled_by(label.id)
                .on_hover_text("An OpenAI-compatible API root, up to /v1 (default: a local Ollama)");
            ui.end_row();
            let label = ui.label("Model:");
            ui.add(egui::TextEdit::singleline(&mut s.llm.model).desired_width(160.0)).labelled_by(label.id);
            ui.end_row();
            let label = ui.label("API key variable:");
            ui.add(egui::TextEdit::singleline(&mut s.llm.api_key_env).desired_width(160.0))
                .labelled_by(label.id)
                .on_hover_text("Environment variable holding the key; unset sends none");
            ui.end_row();
            let label = ui.label("Answers per query:");
            ui.add(egui::DragValue::new(&mut s.llm_samples).range(1..=10)).labelled_by(label.id);
            ui.end_row();
        });
        ui.label(RichText::new("Settings are remembered across runs.").small());
        if changed {
            self.analyse_all();
        }
        if reload {
            self.load_model();
        }
        if choose {
            self.ask_path(Purpose::ModelFolder);
        }
    }
}

/// Why a precision cannot be chosen, in this page's words (the error's own text names
/// the CLI's flags).
pub(super) fn precision_refusal(refused: &crate::clip::ClipError) -> String {
    use crate::clip::ClipError;
    match refused {
        ClipError::F16OnCpu { bf16_here } => format!(
            "f16 is for GPUs (a build with CUDA or Metal): this CPU's kernels have no f16. Choose f32{}.",
            if *bf16_here { ", or bf16 (this CPU has AVX512-BF16)" } else { "" }
        ),
        ClipError::Bf16Unsupported { found } => format!(
            "bf16 runs on GPUs and on CPUs with AVX512-BF16 (Intel Sapphire Rapids, AMD Zen 4 and later), and {found}: \
             choose f32."
        ),
        other => other.to_string(),
    }
}

pub(super) fn device_note() -> &'static str {
    if cfg!(feature = "cuda") {
        "Built with CUDA: the GPU is used when present."
    } else if cfg!(feature = "metal") {
        "Built with Metal: the GPU is used when present."
    } else {
        "This build runs on the CPU (build with --features cuda or metal for a GPU)."
    }
}
