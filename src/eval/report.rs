//! The paper's table: per class and the mean, image AUROC / AUPR / F1-max and pixel
//! AUROC / PRO / F1-max, as JSON, Markdown and CSV, with what is needed to repeat the run.

use std::collections::BTreeMap;

use serde::Serialize;

use super::maps::ClassMetrics;

/// One row of the table, every value in [0, 1]; pixel metrics are absent for
/// classes without masks.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct MetricRow {
    pub image_auroc: f64,
    pub image_aupr: f64,
    pub image_f1_max: f64,
    pub pixel_auroc: Option<f64>,
    pub pixel_f1_max: Option<f64>,
    pub pro: Option<f64>,
}

impl From<&ClassMetrics> for MetricRow {
    fn from(m: &ClassMetrics) -> Self {
        Self {
            image_auroc: m.image.auroc,
            image_aupr: m.image.aupr,
            image_f1_max: m.image.f1_max,
            pixel_auroc: m.pixel.map(|p| p.auroc),
            pixel_f1_max: m.pixel.map(|p| p.f1_max),
            pro: m.pixel.map(|p| p.pro),
        }
    }
}

impl MetricRow {
    fn values(&self) -> [Option<f64>; 6] {
        [
            Some(self.image_auroc),
            Some(self.image_aupr),
            Some(self.image_f1_max),
            self.pixel_auroc,
            self.pro,
            self.pixel_f1_max,
        ]
    }

    fn from_values(v: [Option<f64>; 6]) -> Self {
        Self {
            image_auroc: v[0].unwrap_or(f64::NAN),
            image_aupr: v[1].unwrap_or(f64::NAN),
            image_f1_max: v[2].unwrap_or(f64::NAN),
            pixel_auroc: v[3],
            pro: v[4],
            pixel_f1_max: v[5],
        }
    }

    /// Column-wise mean; a pixel column is averaged over the rows that have it.
    pub fn mean(rows: &[MetricRow]) -> Self {
        Self::from_values(std::array::from_fn(|i| {
            let present: Vec<f64> = rows.iter().filter_map(|r| r.values()[i]).collect();
            (!present.is_empty()).then(|| present.iter().sum::<f64>() / present.len() as f64)
        }))
    }

    /// Column-wise sample standard deviation (n - 1), 0 for a single row.
    pub fn std(rows: &[MetricRow]) -> Self {
        let mean = Self::mean(rows).values();
        Self::from_values(std::array::from_fn(|i| {
            let present: Vec<f64> = rows.iter().filter_map(|r| r.values()[i]).collect();
            let m = mean[i]?;
            let n = present.len();
            Some(if n < 2 { 0.0 } else { (present.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() })
        }))
    }
}

/// A whole run: the table, and how it was made.
#[derive(Debug, Serialize)]
pub struct EvalReport {
    /// Method, model, dataset, settings and the command line: enough to repeat the run.
    pub run: serde_json::Value,
    pub classes: BTreeMap<String, MetricRow>,
    /// The mean over classes.
    pub mean: MetricRow,
    /// With several seeds (few-shot): standard deviation over seeds, per class and of the mean.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub std: Option<SeedSpread>,
    /// What a reader needs to read the table right, e.g. why pixel columns are empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct SeedSpread {
    pub classes: BTreeMap<String, MetricRow>,
    pub mean: MetricRow,
}

impl EvalReport {
    /// `per_seed[s][c]`: the metrics of class `c` with seed `s` (one seed for zero-shot).
    pub fn new(run: serde_json::Value, per_seed: &[Vec<ClassMetrics>]) -> Self {
        let mut by_class: BTreeMap<String, Vec<MetricRow>> = BTreeMap::new();
        for seed in per_seed {
            for m in seed {
                by_class.entry(m.class.clone()).or_default().push(MetricRow::from(m));
            }
        }
        let classes: BTreeMap<String, MetricRow> = by_class.iter().map(|(c, rows)| (c.clone(), MetricRow::mean(rows))).collect();
        let mean = MetricRow::mean(&classes.values().copied().collect::<Vec<_>>());
        let std = (per_seed.len() > 1).then(|| {
            let seed_means: Vec<MetricRow> = per_seed
                .iter()
                .map(|seed| MetricRow::mean(&seed.iter().map(MetricRow::from).collect::<Vec<_>>()))
                .collect();
            SeedSpread {
                classes: by_class.iter().map(|(c, rows)| (c.clone(), MetricRow::std(rows))).collect(),
                mean: MetricRow::std(&seed_means),
            }
        });
        let notes = Self::mask_note(&classes).into_iter().collect();
        Self { run, classes, mean, std, notes }
    }

    /// Names the classes whose pixel columns are empty: without ground-truth masks only
    /// the image metrics can be computed, and a bare `–` would read as a failure.
    fn mask_note(classes: &BTreeMap<String, MetricRow>) -> Option<String> {
        let unmasked: Vec<String> =
            classes.iter().filter(|(_, r)| r.pixel_auroc.is_none()).map(|(c, _)| format!("`{c}`")).collect();
        let (who, their) = match unmasked.len() {
            0 => return None,
            1 => (format!("class {} has none", unmasked[0]), "its"),
            _ => (format!("classes {} have none", unmasked.join(", ")), "their"),
        };
        let mean = if unmasked.len() < classes.len() { "; the mean's pixel columns average the classes that have masks" } else { "" };
        Some(format!(
            "pixel metrics (P-AUROC, PRO, P-F1-max) need ground-truth masks and {who}: {their} pixel columns are – (null in JSON){mean}"
        ))
    }

    const HEADER: [&'static str; 6] = ["I-AUROC", "I-AUPR", "I-F1-max", "P-AUROC", "PRO", "P-F1-max"];

    /// The paper's table in percent with one decimal (± the spread over seeds).
    pub fn markdown(&self) -> String {
        let mut out = format!("| class | {} |\n|---|{}\n", Self::HEADER.join(" | "), "---|".repeat(6));
        let cell = |v: Option<f64>, s: Option<f64>| match (v, s) {
            (Some(v), Some(s)) => format!("{:.1} ± {:.1}", 100.0 * v, 100.0 * s),
            (Some(v), None) => format!("{:.1}", 100.0 * v),
            (None, _) => "–".into(),
        };
        let mut row = |name: &str, r: &MetricRow, s: Option<&MetricRow>| {
            let spread = s.map(MetricRow::values);
            let cells: Vec<String> =
                r.values().iter().enumerate().map(|(i, v)| cell(*v, spread.and_then(|s| s[i]))).collect();
            out.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
        };
        for (class, r) in &self.classes {
            row(class, r, self.std.as_ref().map(|s| &s.classes[class]));
        }
        row("**mean**", &self.mean, self.std.as_ref().map(|s| &s.mean));
        for note in &self.notes {
            out.push_str(&format!("\nNote: {note}.\n"));
        }
        out
    }

    /// One line per class and the mean, values in [0, 1].
    pub fn csv(&self) -> String {
        let mut out = String::from("class,image_auroc,image_aupr,image_f1_max,pixel_auroc,pro,pixel_f1_max\n");
        let rows = self.classes.iter().map(|(c, r)| (c.as_str(), r)).chain([("mean", &self.mean)]);
        for (name, r) in rows {
            let cells: Vec<String> = r.values().iter().map(|v| v.map(|v| format!("{v:.6}")).unwrap_or_default()).collect();
            out.push_str(&format!("{name},{}\n", cells.join(",")));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{ImageMetrics, PixelMetrics};

    fn metrics(class: &str, auroc: f64, pro: Option<f64>) -> ClassMetrics {
        ClassMetrics {
            class: class.into(),
            images: 4,
            image: ImageMetrics { auroc, aupr: 0.5, f1_max: 0.5, f1_threshold: 0.1 },
            pixel: pro.map(|pro| PixelMetrics { auroc: 0.9, f1_max: 0.3, f1_threshold: 0.2, pro, exact: true }),
        }
    }

    #[test]
    fn means_over_classes_and_spread_over_seeds() {
        let seeds = vec![
            vec![metrics("a", 0.8, Some(0.6)), metrics("b", 0.6, None)],
            vec![metrics("a", 1.0, Some(0.8)), metrics("b", 0.8, None)],
        ];
        let report = EvalReport::new(serde_json::json!({}), &seeds);
        assert!((report.classes["a"].image_auroc - 0.9).abs() < 1e-12);
        assert!((report.mean.image_auroc - 0.8).abs() < 1e-12);
        // Pixel metrics average over the classes that have masks.
        assert!((report.mean.pro.unwrap() - 0.7).abs() < 1e-12);
        let std = report.std.as_ref().unwrap();
        // Seed means 0.7 and 0.9: sample std 0.1414.
        assert!((std.mean.image_auroc - 0.02f64.sqrt()).abs() < 1e-12);
        let md = report.markdown();
        assert!(md.contains("| a | 90.0 ± 14.1 |"), "{md}");
        assert!(md.contains("| b | 70.0 ± 14.1 | 50.0 ± 0.0 | 50.0 ± 0.0 | – | – | – |"), "{md}");
        // The empty pixel columns are explained, naming the class.
        assert!(md.contains("Note: pixel metrics") && md.contains("class `b` has none"), "{md}");
        assert!(!md.contains("`a`"), "{md}");
        assert!(report.csv().lines().any(|l| l.starts_with("mean,0.800000,")));
        let json = serde_json::to_value(&report).unwrap();
        assert!(json["classes"]["a"]["pro"].is_number() && json["mean"]["image_auroc"].is_number());
        assert!(json["classes"]["b"]["pro"].is_null());
        assert!(json["notes"][0].as_str().unwrap().contains("class `b` has none"), "{}", json["notes"]);

        // Every class with masks: no note.
        let report = EvalReport::new(serde_json::json!({}), &[vec![metrics("a", 0.8, Some(0.6))]]);
        assert!(report.notes.is_empty() && !report.markdown().contains("Note"));
        assert!(serde_json::to_value(&report).unwrap().get("notes").is_none());
    }
}
