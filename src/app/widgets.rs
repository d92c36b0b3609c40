//! Colours and small widgets the panels and pages share.

use eframe::egui::{Color32, RichText, Ui};

use super::state::Verdict;
use crate::detect::MethodKind;

pub(super) const NG_COLOR: Color32 = Color32::from_rgb(220, 60, 50);
pub(super) const OK_COLOR: Color32 = Color32::from_rgb(60, 170, 80);
pub(super) const WARN_COLOR: Color32 = Color32::from_rgb(230, 160, 30);

pub(super) fn verdict_badge(ui: &mut Ui, verdict: Verdict) {
    let color = match verdict {
        Verdict::Ok => OK_COLOR,
        Verdict::Ng => NG_COLOR,
    };
    ui.label(RichText::new(verdict.label()).strong().color(Color32::WHITE).background_color(color));
}

/// A method as the window names it.
pub fn method_label(kind: MethodKind) -> &'static str {
    match kind {
        MethodKind::Alfa => "ALFA",
        MethodKind::Clip => "CLIP",
        MethodKind::Winclip => "WinCLIP",
        MethodKind::AnovlTfa => "AnoVL TFA",
        MethodKind::AnovlTta => "AnoVL TTA",
        MethodKind::Anomalydino => "AnomalyDINO",
    }
}

/// Every method, in the order the selectors list them.
pub(super) const METHODS: [MethodKind; 6] =
    [MethodKind::Alfa, MethodKind::Clip, MethodKind::Winclip, MethodKind::AnovlTfa, MethodKind::AnovlTta, MethodKind::Anomalydino];
