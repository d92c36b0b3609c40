//! The Why page: the image's scores, the descriptors that matched best, the prompts
//! that survived contextual scoring, and the nearest reference in few-shot mode.

use egui::{RichText, Ui};
use egui_extras::{Column, TableBuilder};

use super::*;
use super::widgets::{NG_COLOR, OK_COLOR, WARN_COLOR, method_label, verdict_badge};
use super::state::score_text;
use crate::detect::RefsBackbone;
use crate::detect::engine::{FewShotReport, PromptVerdict};

impl AlfaApp {
    pub(super) fn why(&mut self, ui: &mut Ui) {
        let Some(index) = self.state.selected else {
            ui.label("Select an image.");
            return;
        };
        let entry = &self.state.entries[index];
        ui.heading(&entry.name);
        if let Some(error) = &entry.error {
            ui.colored_label(NG_COLOR, error);
            return;
        }
        if let Some(partial) = &entry.partial {
            ui.label(RichText::new(partial.label()).italics().strong());
        }
        let Some(analysis) = entry.analysis.clone() else {
            if entry.partial.is_none() {
                ui.label("Not analysed yet.");
            }
            return;
        };
        ui.horizontal(|ui| {
            let threshold = self.state.image_threshold();
            if entry.stale {
                ui.label(RichText::new("old result").italics())
                    .on_hover_text("From earlier prompts or settings: re-scored when the analysis reaches this image");
            } else {
                verdict_badge(ui, Verdict::of(analysis.image_score, threshold));
            }
            ui.label(RichText::new(format!("image score {}", score_text(analysis.image_score, threshold))).strong()).on_hover_text(
                "ALFA: (S_G + max S_L) / 2, plus the max few-shot score with references; NG at or above the OK/NG threshold",
            );
        });
        let Some(d) = &analysis.detection else {
            ui.label(format!(
                "{} gives an image score and a map only: the prompts, descriptors and scores behind them are ALFA's (Settings, Method).",
                method_label(analysis.method)
            ));
            return;
        };
        egui::Grid::new("scores").show(ui, |ui| {
            ui.label("S_G (global)").on_hover_text(
                "Global score: how much more the whole image matches the abnormal prompts than the normal ones (0 to 1)",
            );
            ui.label(format!("{:.3}", d.global_score));
            ui.end_row();
            ui.label("max S_L (local)").on_hover_text(
                "Largest local score: the hottest point of the zero-shot map, from windows matched to the prompts (0 to 1)",
            );
            ui.label(format!("{:.3}", d.local_max));
            ui.end_row();
            if let Some(few_shot) = &d.few_shot {
                let (label, explained) = match few_shot.backbone {
                    RefsBackbone::Clip => {
                        ("max few-shot", "How far the most unusual window is from every reference window: (1 - cosine) / 2")
                    }
                    RefsBackbone::Dinov2 => (
                        "few-shot (top 1%)",
                        "The mean of the 1% most unusual DINOv2 patches' distances to every reference patch: (1 - cosine) / 2",
                    ),
                };
                ui.label(format!("{label} ({} refs)", few_shot.references)).on_hover_text(explained);
                ui.label(format!("{:.3}", few_shot.max_score));
                ui.end_row();
            }
        });
        if let Some(few_shot) = &d.few_shot {
            self.nearest_reference(ui, few_shot);
        }
        for (label, fired) in [("normal", d.prompts.normal_fallback), ("abnormal", d.prompts.abnormal_fallback)] {
            if fired {
                ui.colored_label(
                    WARN_COLOR,
                    format!("Fallback: no {label} prompt survived contextual scoring; its best prompts were used."),
                );
            }
        }
        ui.separator();
        ui.strong("Closest descriptors");
        let best = d.descriptors.first().map_or(1.0, |m| m.similarity.max(1e-6));
        for m in &d.descriptors {
            ui.add(egui::ProgressBar::new((m.similarity / best).clamp(0.0, 1.0)).text(format!("{:.3}  {}", m.similarity, m.text)));
        }
        ui.separator();
        ui.horizontal(|ui| {
            ui.label("Sort prompts by:");
            ui.selectable_value(&mut self.prompt_sort, PromptSort::Score, "S_c");
            ui.selectable_value(&mut self.prompt_sort, PromptSort::Similarity, "similarity");
            ui.selectable_value(&mut self.prompt_sort, PromptSort::Text, "text");
        });
        for (label, verdicts) in [("Normal", &d.prompts.normal), ("Abnormal", &d.prompts.abnormal)] {
            let kept = verdicts.iter().filter(|v| v.kept).count();
            egui::CollapsingHeader::new(format!("{label} prompts: {kept} kept of {}", verdicts.len()))
                .default_open(label == "Abnormal")
                .show(ui, |ui| prompt_table(ui, label, verdicts, self.prompt_sort));
        }
        egui::CollapsingHeader::new("Timings").show(ui, |ui| {
            for t in &d.timings {
                ui.label(format!("{:<10} {:.3} s", t.stage, t.seconds));
            }
        });
    }

    /// The worst patch of the image beside the nearest window of the references.
    pub(super) fn nearest_reference(&mut self, ui: &mut Ui, few_shot: &FewShotReport) {
        let Some(nearest) = &few_shot.nearest else { return };
        let key = format!("nearest-{}-{:?}", nearest.file.display(), nearest.region);
        if self.nearest_crop.as_ref().is_none_or(|(k, _)| *k != key) {
            self.workers.crop(key.clone(), nearest.file.clone(), nearest.region);
            self.nearest_crop = Some((key, None));
        }
        let shown = self.state.shown.as_ref().filter(|s| Some(s.id) == self.state.selected.map(|i| self.state.entries[i].id));
        if let Some(shown) = shown {
            let key = (shown.id, few_shot.worst_patch);
            if self.worst_crop.as_ref().is_none_or(|(k, _)| *k != key) {
                let image = &shown.picture.image;
                let grid = few_shot.map.width.max(1) as u32;
                let [x, y] = few_shot.worst_patch.map(|v| v as u32);
                let (w, h) = image.dimensions();
                let (x0, y0) = (x * w / grid, y * h / grid);
                let (x1, y1) = (((x + 1) * w / grid).max(x0 + 1).min(w), ((y + 1) * h / grid).max(y0 + 1).min(h));
                let patch = image::imageops::crop_imm(image.as_ref(), x0, y0, x1 - x0, y1 - y0).to_image();
                let patch = egui::ColorImage::from_rgba_unmultiplied([patch.width() as usize, patch.height() as usize], patch.as_raw());
                self.worst_crop = Some((key, ui.ctx().load_texture("worst-patch", patch, egui::TextureOptions::NEAREST)));
            }
        }
        let query = shown.and(self.worst_crop.as_ref()).map(|(_, texture)| texture.clone());
        ui.strong(match few_shot.backbone {
            RefsBackbone::Clip => "Worst patch and the nearest reference window",
            RefsBackbone::Dinov2 => "Worst DINOv2 patch and the nearest reference patch",
        });
        ui.horizontal(|ui| {
            let size = egui::vec2(96.0, 96.0);
            ui.vertical(|ui| {
                match query {
                    Some(texture) => {
                        ui.add(egui::Image::new(&texture).fit_to_exact_size(size));
                    }
                    None => {
                        ui.spinner();
                    }
                }
                ui.label(format!("this image, patch {:?}", few_shot.worst_patch));
            });
            ui.vertical(|ui| {
                match self.nearest_crop.as_ref().and_then(|(_, t)| t.as_ref()) {
                    Some(texture) => {
                        ui.add(egui::Image::new(texture).fit_to_exact_size(size));
                    }
                    None => {
                        ui.spinner();
                    }
                }
                let name = nearest.file.file_name().map_or_else(|| nearest.file.display().to_string(), |n| n.to_string_lossy().into_owned());
                ui.label(format!("{name}, similarity {:.3}", nearest.similarity)).on_hover_text(nearest.file.display().to_string());
            });
        });
    }
}

/// How the prompt tables are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PromptSort {
    #[default]
    Score,
    Similarity,
    Text,
}

pub(super) fn prompt_table(ui: &mut Ui, label: &str, verdicts: &[PromptVerdict], sort: PromptSort) {
    let mut rows: Vec<&PromptVerdict> = verdicts.iter().collect();
    match sort {
        PromptSort::Score => rows.sort_by(|a, b| b.score.total_cmp(&a.score)),
        PromptSort::Similarity => rows.sort_by(|a, b| b.similarity.total_cmp(&a.similarity)),
        PromptSort::Text => rows.sort_by(|a, b| a.text.cmp(&b.text)),
    }
    TableBuilder::new(ui)
        .id_salt(label)
        .striped(true)
        .max_scroll_height(260.0)
        .column(Column::exact(40.0))
        .column(Column::exact(52.0))
        .column(Column::exact(52.0))
        .column(Column::remainder().clip(true))
        .header(18.0, |mut header| {
            for (title, hover) in [
                ("kept", "Whether contextual scoring kept the prompt for this image"),
                ("S_c", "Contextual score: how well the prompt agrees with the image against the other label's prompts; kept above tau"),
                ("sim", "Cosine similarity between the image and the prompt"),
                ("prompt", "The prompt text"),
            ] {
                header.col(|ui| {
                    ui.strong(title).on_hover_text(hover);
                });
            }
        })
        .body(|body| {
            body.rows(18.0, rows.len(), |mut row| {
                let v = rows[row.index()];
                row.col(|ui| {
                    if v.kept {
                        ui.colored_label(OK_COLOR, "kept");
                    } else {
                        ui.weak("drop");
                    }
                });
                row.col(|ui| {
                    ui.label(format!("{:.2}", v.score));
                });
                row.col(|ui| {
                    ui.label(format!("{:.3}", v.similarity));
                });
                row.col(|ui| {
                    let text = if v.kept { RichText::new(&v.text) } else { RichText::new(&v.text).weak() };
                    ui.label(text).on_hover_text(format!("{} ({:?})", v.text, v.source));
                });
            });
        });
}
