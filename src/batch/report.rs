//! `alfa detect --report`: one self-contained HTML page for a batch run.
//!
//! The page works offline and from any folder: CSS and JavaScript are inline, the
//! overlays are linked as files relative to the page, and nothing is fetched from the
//! network. It shows the run's summary, a histogram of the image scores with the
//! threshold (good and defective images coloured apart when their folders say which),
//! and a gallery of overlay thumbnails sorted by score, filterable by verdict and
//! paginated, so that a run of 10,000 images opens as fast as one of ten: only the
//! current page's cards are in the document, and the histogram is drawn here, once.
//!
//! Data never becomes markup: the summary is HTML-escaped here, the image list travels
//! as JSON inside `<script type="application/json">` with every `<` escaped, and the
//! page's script inserts file names and descriptors as text only.

use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use crate::detect::threshold::Verdict;

/// Thumbnails per gallery page.
pub const PAGE_SIZE: usize = 60;
/// Descriptors shown per image.
pub const MAX_DESCRIPTORS: usize = 3;
/// Bins of the score histogram.
pub const HISTOGRAM_BINS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write the report {}: {error}", path.display())]
    Write { path: PathBuf, error: std::io::Error },
    #[error("cannot encode the report's image list: {0}")]
    Json(#[from] serde_json::Error),
}

/// What the run was: the page's summary.
#[derive(Debug, Clone, Serialize)]
pub struct ReportRun {
    /// The page's heading, e.g. `alfa detect: bottle`.
    pub title: String,
    /// When the run was made, as it should read (e.g. `2026-11-20 14:03`).
    pub created: String,
    pub model: String,
    pub method: String,
    /// The run's settings, shown in this order (see [`settings_list`]).
    pub settings: Vec<(String, String)>,
    /// The OK/NG threshold, or `None`: then no image has a verdict.
    pub threshold: Option<ReportThreshold>,
    pub counts: ReportCounts,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReportThreshold {
    /// An image is NG at `score >= value`.
    pub value: f32,
    /// How it was set, e.g. `from 12 good images at FPR 0.01, 2026-11-20` or `set by hand`.
    pub how: String,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ReportCounts {
    /// The images the run was given, failed ones included.
    pub images: usize,
    pub ok: usize,
    pub ng: usize,
    /// Images that could not be read or analysed (not in the gallery).
    pub failed: usize,
    /// The run was stopped before every image was analysed: the page says the
    /// results are partial.
    pub interrupted: bool,
}

/// One analysed image: a gallery card and a histogram count.
#[derive(Debug, Clone, Serialize)]
pub struct ReportImage {
    /// The input path as the user should read it.
    pub file: String,
    /// The overlay PNG, relative to the report's folder, with `/` separators
    /// (see [`relative_link`]).
    pub overlay: String,
    pub score: f32,
    /// `None` when the run has no threshold.
    pub verdict: Option<Verdict>,
    /// What the image's folder says: `Some(true)` defective, `Some(false)` good,
    /// `None` unknown (see [`truth_from_path`]).
    pub truth: Option<bool>,
    /// The best-matching descriptors, best first; the page shows the first three.
    pub descriptors: Vec<String>,
}

/// Folder names that say an image is good.
const GOOD_FOLDERS: [&str; 3] = ["good", "ok", "normal"];
/// Folder names that say an image is defective.
const DEFECTIVE_FOLDERS: [&str; 4] = ["ng", "bad", "abnormal", "anomaly"];

/// Whether the folder an image is in says it is defective (`Some(true)`), good
/// (`Some(false)`), or nothing (`None`). Only the image's own folder and the one
/// above count, so a distant `ok/` in a home directory says nothing:
/// - a folder named `good`, `ok` or `normal` (any case): good;
/// - a folder named `ng`, `bad`, `abnormal` or `anomaly` (any case): defective;
/// - MVTec AD's `test/<defect>/` with any other defect name: defective.
pub fn truth_from_path(path: &Path) -> Option<bool> {
    let mut folders = path.parent()?.components().rev().filter_map(|c| match c {
        Component::Normal(name) => name.to_str(),
        _ => None,
    });
    let parent = folders.next()?;
    let is = |names: &[&str], name: &str| names.iter().any(|n| n.eq_ignore_ascii_case(name));
    if is(&GOOD_FOLDERS, parent) {
        return Some(false);
    }
    if is(&DEFECTIVE_FOLDERS, parent) {
        return Some(true);
    }
    match folders.next() {
        Some(above) if above.eq_ignore_ascii_case("test") => Some(true),
        _ => None,
    }
}

/// `file` relative to `report_dir` as a link the page can use (`/` separators), or
/// `None` when `file` is not inside `report_dir`.
pub fn relative_link(report_dir: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(report_dir).ok()?;
    let parts: Option<Vec<&str>> = relative
        .components()
        .map(|c| match c {
            Component::Normal(name) => name.to_str(),
            _ => None,
        })
        .collect();
    let parts = parts?;
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// A settings object (e.g. `DetectSettings` through `serde_json::to_value`) as
/// `(name, value)` rows: nested objects become `outer.inner`, strings lose their
/// quotes, everything else reads as JSON (`[2,3]`, `4.0`, `null`).
pub fn settings_list(value: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, inner) in map {
                    let name = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                    walk(&name, inner, out);
                }
            }
            serde_json::Value::String(s) => out.push((prefix.to_owned(), s.clone())),
            other => out.push((prefix.to_owned(), other.to_string())),
        }
    }
    let mut out = Vec::new();
    match value {
        serde_json::Value::Object(_) => walk("", value, &mut out),
        serde_json::Value::Null => {}
        other => walk("settings", other, &mut out),
    }
    out
}

/// Writes the report page to `path` (atomically: a reader sees the old page or the
/// new one). `images` may come in any order: the gallery shows them by score, highest
/// first; images without a finite score come last and stay out of the histogram.
pub fn write_report(path: &Path, run: &ReportRun, images: &[ReportImage]) -> Result<(), ReportError> {
    let html = render(run, images)?;
    crate::files::write_atomic(path, html.as_bytes()).map_err(|error| ReportError::Write { path: path.to_owned(), error })
}

/// The page's image list, in gallery order.
#[derive(Serialize)]
struct Entry<'a> {
    file: &'a str,
    overlay: &'a str,
    /// Non-finite scores become `null`.
    score: Option<f32>,
    verdict: Option<Verdict>,
    truth: Option<bool>,
    descriptors: &'a [String],
}

/// The whole page.
pub fn render(run: &ReportRun, images: &[ReportImage]) -> Result<String, ReportError> {
    let mut order: Vec<&ReportImage> = images.iter().collect();
    // Highest score first; NaN and the like last. Stable, so ties keep input order.
    order.sort_by(|a, b| match (a.score.is_finite(), b.score.is_finite()) {
        (true, true) => b.score.total_cmp(&a.score),
        (x, y) => y.cmp(&x),
    });
    let entries: Vec<Entry> = order
        .iter()
        .map(|im| Entry {
            file: &im.file,
            overlay: &im.overlay,
            score: im.score.is_finite().then_some(im.score),
            verdict: im.verdict,
            truth: im.truth,
            descriptors: &im.descriptors[..im.descriptors.len().min(MAX_DESCRIPTORS)],
        })
        .collect();
    let data = script_json(&serde_json::to_string(&entries)?);

    let mut page = String::with_capacity(data.len() + 16 * 1024);
    let title = esc(&run.title);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"generator\" content=\"alfa {version}\">\n<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        version = env!("CARGO_PKG_VERSION"),
    );
    let _ = write!(page, "<header class=\"top\"><h1>{title}</h1><p class=\"sub\">Anomaly detection report \u{00b7} {}</p></header>\n<main>\n", esc(&run.created));
    if run.counts.interrupted {
        page.push_str(
            "<div class=\"banner\" role=\"alert\"><strong>Interrupted: partial results.</strong> \
             The run was stopped before every image was analysed; the counts and the gallery \
             cover the images done by then.</div>\n",
        );
    }
    summary(&mut page, run, images.len());
    histogram_section(&mut page, run.threshold.as_ref().map(|t| t.value), images);
    let _ = write!(
        page,
        "<section class=\"panel\" id=\"gallery-panel\">\n<div class=\"toolbar\"><h2>Images <span class=\"muted\">by score, highest first</span></h2>\
         <div class=\"filters\" role=\"group\" aria-label=\"Filter by verdict\">\
         <button type=\"button\" data-filter=\"all\">All <span class=\"n\"></span></button>\
         <button type=\"button\" data-filter=\"ng\">NG <span class=\"n\"></span></button>\
         <button type=\"button\" data-filter=\"ok\">OK <span class=\"n\"></span></button></div></div>\n\
         <div class=\"range-row\"><p class=\"range muted\" id=\"range\"></p><nav class=\"pages\" id=\"pages-top\" aria-label=\"Gallery pages\"></nav></div>\n\
         <div class=\"grid\" id=\"gallery\" data-page-size=\"{PAGE_SIZE}\"></div>\n\
         <nav class=\"pages\" id=\"pages\" aria-label=\"Gallery pages\"></nav>\n\
         <noscript><p class=\"muted\">The gallery needs JavaScript; the overlays are the <code>*_overlay.png</code> files beside this page.</p></noscript>\n\
         </section>\n</main>\n<footer>Written by alfa {version}. Click a thumbnail for the full-size overlay; \
         <code>#ng</code>, <code>#ok</code> or <code>#all/3</code> in the address select a filter and page.</footer>\n",
        version = env!("CARGO_PKG_VERSION"),
    );
    let _ = write!(
        page,
        "<script type=\"application/json\" id=\"report-data\">{data}</script>\n<script>{SCRIPT}</script>\n</body>\n</html>\n"
    );
    Ok(page)
}

/// JSON safe inside a `<script>` element: `<` (which JSON only has inside strings)
/// becomes `\u003c`, so no `</script>` or `<!--` can end or confuse the element.
fn script_json(json: &str) -> String {
    json.replace('<', "\\u003c")
}

/// Text safe in HTML content and in quoted attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A count with thousands separators: `10,000`.
fn count_text(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A score with as many decimals as the page shows everywhere.
fn score_text(score: f32) -> String {
    format!("{score:.3}")
}

fn summary(page: &mut String, run: &ReportRun, scored: usize) {
    let c = &run.counts;
    page.push_str("<section class=\"panel summary\">\n<div class=\"stats\">");
    let stat = |page: &mut String, class: &str, label: &str, value: String, note: &str| {
        let _ = write!(
            page,
            "<div class=\"stat {class}\"><div class=\"value\">{value}</div><div class=\"label\">{label}</div>{}</div>",
            if note.is_empty() { String::new() } else { format!("<div class=\"note\">{}</div>", esc(note)) }
        );
    };
    let verdicts = run.threshold.is_some();
    let dash = |n: usize| if verdicts { count_text(n) } else { "\u{2014}".to_owned() };
    stat(page, "", "images", count_text(c.images), &format!("{} scored", count_text(scored)));
    stat(page, "ng", "NG", dash(c.ng), "");
    stat(page, "ok", "OK", dash(c.ok), "");
    stat(page, if c.failed > 0 { "failed" } else { "" }, "failed", count_text(c.failed), if c.failed > 0 { "not in the gallery" } else { "" });
    page.push_str("</div>\n<dl class=\"facts\">");
    match &run.threshold {
        Some(t) => {
            let _ = write!(
                page,
                "<dt>Threshold</dt><dd><strong>{}</strong> <span class=\"muted\">NG at score \u{2265} threshold; {}</span></dd>",
                score_text(t.value),
                esc(&t.how)
            );
        }
        None => page.push_str("<dt>Threshold</dt><dd><strong>none</strong> <span class=\"muted\">no threshold: no verdicts</span></dd>"),
    }
    let _ = write!(
        page,
        "<dt>Method</dt><dd>{}</dd><dt>Model</dt><dd class=\"wrap\">{}</dd><dt>Date</dt><dd>{}</dd>",
        esc(&run.method),
        esc(&run.model),
        esc(&run.created)
    );
    if !run.settings.is_empty() {
        page.push_str("<dt>Settings</dt><dd><ul class=\"settings\">");
        for (name, value) in &run.settings {
            let _ = write!(page, "<li><span class=\"k\">{}</span> <span class=\"v\">{}</span></li>", esc(name), esc(value));
        }
        page.push_str("</ul></dd>");
    }
    page.push_str("</dl>\n</section>\n");
}

/// Colours of the histogram's classes: good, defective, unknown.
const GOOD_COLOR: &str = "#2f6fdf";
const DEFECTIVE_COLOR: &str = "#e8702a";
const UNKNOWN_COLOR: &str = "#9aa3ae";
/// The bars' colour when no folder says anything (one class only).
const PLAIN_COLOR: &str = "#5b7fa6";

struct Histogram {
    lo: f32,
    hi: f32,
    /// Per bin: good, defective, unknown.
    bins: Vec<[usize; 3]>,
}

impl Histogram {
    fn new(scores: impl Iterator<Item = (f32, Option<bool>)> + Clone, threshold: Option<f32>) -> Option<Self> {
        let finite = scores.clone().map(|(s, _)| s).filter(|s| s.is_finite());
        let (mut lo, mut hi) = finite
            .chain(threshold.filter(|t| t.is_finite()))
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), s| (lo.min(s), hi.max(s)));
        if lo > hi {
            return None;
        }
        if hi - lo < 1e-6 {
            lo -= 0.05;
            hi += 0.05;
        }
        let mut bins = vec![[0usize; 3]; HISTOGRAM_BINS];
        let mut any = false;
        for (score, truth) in scores.filter(|(s, _)| s.is_finite()) {
            let i = (((score - lo) / (hi - lo)) * HISTOGRAM_BINS as f32) as usize;
            let class = match truth {
                Some(false) => 0,
                Some(true) => 1,
                None => 2,
            };
            bins[i.min(HISTOGRAM_BINS - 1)][class] += 1;
            any = true;
        }
        any.then_some(Self { lo, hi, bins })
    }
}

/// A round step (1, 2 or 5 times a power of ten) that cuts `span` into about `parts`.
fn nice_step(span: f64, parts: f64) -> f64 {
    let raw = (span / parts).max(f64::MIN_POSITIVE);
    let power = 10f64.powf(raw.log10().floor());
    let m = raw / power;
    power * if m <= 1.0 { 1.0 } else if m <= 2.0 { 2.0 } else if m <= 5.0 { 5.0 } else { 10.0 }
}

fn histogram_section(page: &mut String, threshold: Option<f32>, images: &[ReportImage]) {
    page.push_str("<section class=\"panel\" id=\"histogram-panel\">\n<h2>Image scores</h2>\n");
    let Some(h) = Histogram::new(images.iter().map(|im| (im.score, im.truth)), threshold) else {
        page.push_str("<p class=\"muted\">No image was scored.</p>\n</section>\n");
        return;
    };
    let present = |k: usize| h.bins.iter().any(|b| b[k] > 0);
    let labelled = present(0) || present(1);
    let colors = if labelled { [GOOD_COLOR, DEFECTIVE_COLOR, UNKNOWN_COLOR] } else { [PLAIN_COLOR; 3] };

    let (w, ht) = (1200.0f64, 300.0f64);
    let (left, right, top, bottom) = (52.0, 20.0, 30.0, 44.0);
    let plot_w = w - left - right;
    let plot_h = ht - top - bottom;
    let (lo, hi) = (h.lo as f64, h.hi as f64);
    let x_of = |v: f64| left + (v - lo) / (hi - lo) * plot_w;
    let max_count = h.bins.iter().map(|b| b.iter().sum::<usize>()).max().unwrap_or(1).max(1);
    let y_step = nice_step(max_count as f64, 4.0).max(1.0);
    let y_max = (max_count as f64 / y_step).ceil() * y_step;
    let y_of = |n: f64| top + plot_h - n / y_max * plot_h;

    let _ = write!(
        page,
        "<svg class=\"hist\" id=\"histogram\" viewBox=\"0 0 {w} {ht}\" role=\"img\" aria-label=\"Histogram of image scores\">"
    );
    // The NG side of the threshold, lightly shaded.
    if let Some(t) = threshold.filter(|t| t.is_finite()) {
        let x = x_of(t as f64);
        let _ = write!(page, "<rect class=\"ng-zone\" x=\"{x:.1}\" y=\"{top}\" width=\"{:.1}\" height=\"{plot_h}\"/>", (left + plot_w - x).max(0.0));
    }
    // Grid lines and the count axis.
    let mut n = 0.0;
    while n <= y_max + 1e-9 {
        let y = y_of(n);
        let _ = write!(
            page,
            "<line class=\"grid\" x1=\"{left}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/><text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{n}</text>",
            left + plot_w,
            left - 6.0,
            y + 4.0
        );
        n += y_step;
    }
    // Bars, stacked good / defective / unknown, each bin with its counts as a tooltip.
    let bin_w = plot_w / HISTOGRAM_BINS as f64;
    let bin_lo = |i: usize| lo + (hi - lo) * i as f64 / HISTOGRAM_BINS as f64;
    for (i, bin) in h.bins.iter().enumerate() {
        let total: usize = bin.iter().sum();
        if total == 0 {
            continue;
        }
        let x = left + i as f64 * bin_w;
        let mut tip = format!("{:.3}\u{2013}{:.3}: {total} image{}", bin_lo(i), bin_lo(i + 1), if total == 1 { "" } else { "s" });
        if labelled {
            let parts: Vec<String> = [(0, "good"), (1, "defective"), (2, "unknown")]
                .iter()
                .filter(|(k, _)| bin[*k] > 0)
                .map(|(k, name)| format!("{} {name}", bin[*k]))
                .collect();
            let _ = write!(tip, " ({})", parts.join(", "));
        }
        let _ = write!(page, "<g class=\"bin\"><title>{}</title>", esc(&tip));
        let mut stacked = 0usize;
        for k in 0..3 {
            if bin[k] == 0 {
                continue;
            }
            let y0 = y_of(stacked as f64);
            stacked += bin[k];
            let y1 = y_of(stacked as f64);
            let _ = write!(
                page,
                "<rect x=\"{:.1}\" y=\"{y1:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>",
                x + 0.5,
                (bin_w - 1.0).max(0.5),
                (y0 - y1).max(0.5),
                colors[k]
            );
        }
        page.push_str("</g>");
    }
    // The score axis.
    let baseline = top + plot_h;
    let _ = write!(page, "<line class=\"axis\" x1=\"{left}\" x2=\"{:.1}\" y1=\"{baseline:.1}\" y2=\"{baseline:.1}\"/>", left + plot_w);
    let x_step = nice_step(hi - lo, 6.0);
    let decimals = (-x_step.log10().floor()).clamp(0.0, 6.0) as usize;
    let mut v = (lo / x_step).ceil() * x_step;
    while v <= hi + x_step * 1e-6 {
        let x = x_of(v);
        let _ = write!(
            page,
            "<line class=\"axis\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{baseline:.1}\" y2=\"{:.1}\"/><text class=\"tick\" x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{v:.decimals$}</text>",
            baseline + 5.0,
            baseline + 18.0
        );
        v += x_step;
    }
    let _ = write!(
        page,
        "<text class=\"axis-label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">image score</text>\
         <text class=\"axis-label\" transform=\"translate(14 {:.1}) rotate(-90)\" text-anchor=\"middle\">images</text>",
        left + plot_w / 2.0,
        ht - 6.0,
        top + plot_h / 2.0
    );
    // The threshold, over the bars.
    if let Some(t) = threshold.filter(|t| t.is_finite()) {
        let x = x_of(t as f64);
        let anchor = if x > left + plot_w * 0.75 { ("end", -6.0) } else { ("start", 6.0) };
        let _ = write!(
            page,
            "<line class=\"threshold\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{:.1}\" y2=\"{baseline:.1}\"/>\
             <text class=\"threshold-label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"{}\">threshold {}</text>",
            top - 14.0,
            x + anchor.1,
            top - 4.0,
            anchor.0,
            score_text(t)
        );
    }
    page.push_str("</svg>\n<div class=\"legend\">");
    let swatch = |page: &mut String, color: &str, text: &str| {
        let _ = write!(page, "<span><i style=\"background:{color}\"></i>{text}</span>");
    };
    if labelled {
        swatch(page, GOOD_COLOR, "good (folder name)");
        swatch(page, DEFECTIVE_COLOR, "defective (folder name)");
        if present(2) {
            swatch(page, UNKNOWN_COLOR, "unknown");
        }
    } else {
        swatch(page, PLAIN_COLOR, "images");
    }
    if threshold.is_some() {
        page.push_str("<span><i class=\"line\"></i>threshold (NG at or above)</span>");
    }
    page.push_str("</div>\n</section>\n");
}

const STYLE: &str = r#"
:root { --fg:#1f2733; --muted:#6a7380; --line:#e3e7ec; --bg:#f5f7fa; --card:#fff;
  --ok:#3caa50; --ng:#dc3c32; --none:#8d96a1; --accent:#2f6fdf; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin:0; background:var(--bg); color:var(--fg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Noto Sans", sans-serif; }
header.top { background:#fff; border-bottom:1px solid var(--line); padding:14px 28px; }
header.top h1 { margin:0; font-size:20px; font-weight:600; }
header.top .sub { margin:2px 0 0; color:var(--muted); }
main { max-width:1320px; margin:0 auto; padding:18px 28px 8px; }
footer { max-width:1320px; margin:0 auto; padding:4px 28px 24px; color:var(--muted); font-size:12px; }
h2 { font-size:15px; font-weight:600; margin:0 0 10px; }
.muted { color:var(--muted); font-weight:normal; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.panel { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:16px 18px; margin-bottom:16px; }
.banner { background:#fff4d6; border:1px solid #f0c85a; color:#6b4d00; border-radius:8px; padding:10px 14px; margin-bottom:16px; }
.summary { display:flex; gap:28px; flex-wrap:wrap; align-items:flex-start; }
.stats { display:flex; gap:10px; }
.stat { min-width:92px; padding:8px 12px; border:1px solid var(--line); border-radius:6px; background:#fafbfc; }
.stat .value { font-size:24px; font-weight:600; font-variant-numeric:tabular-nums; }
.stat .label { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.stat .note { color:var(--muted); font-size:12px; }
.stat.ng .value { color:var(--ng); } .stat.ok .value { color:var(--ok); } .stat.failed .value { color:#b7791f; }
.facts { flex:1; min-width:320px; margin:0; display:grid; grid-template-columns:max-content 1fr; gap:4px 14px; }
.facts dt { color:var(--muted); }
.facts dd { margin:0; }
.wrap { overflow-wrap:anywhere; }
.settings { list-style:none; margin:0; padding:0; display:flex; flex-wrap:wrap; gap:4px 6px; }
.settings li { background:#f0f3f7; border-radius:4px; padding:0 6px; font-size:12px; }
.settings .k { color:var(--muted); }
svg.hist { width:100%; height:auto; display:block; }
svg.hist .grid { stroke:#edf0f3; } svg.hist .axis { stroke:#9aa3ae; }
svg.hist .tick { fill:var(--muted); font-size:11px; } svg.hist .axis-label { fill:var(--muted); font-size:12px; }
svg.hist .ng-zone { fill:#dc3c32; opacity:.06; }
svg.hist .threshold { stroke:#1f2733; stroke-width:2; stroke-dasharray:5 3; }
svg.hist .threshold-label { fill:#1f2733; font-size:12px; font-weight:600; }
svg.hist .bin:hover rect { opacity:.8; }
.legend { display:flex; gap:18px; flex-wrap:wrap; color:var(--muted); font-size:12px; margin-top:4px; }
.legend i { display:inline-block; width:12px; height:12px; border-radius:2px; margin-right:6px; vertical-align:-2px; }
.legend i.line { width:16px; height:0; border-top:2px dashed #1f2733; border-radius:0; vertical-align:3px; }
.toolbar { display:flex; align-items:center; justify-content:space-between; gap:12px; flex-wrap:wrap; }
.toolbar h2 { margin:0; }
.filters { display:flex; gap:0; }
.filters button, .pages button { font:inherit; border:1px solid #cfd6de; background:#fff; color:var(--fg); padding:4px 12px; cursor:pointer; }
.filters button:first-child { border-radius:6px 0 0 6px; } .filters button:last-child { border-radius:0 6px 6px 0; }
.filters button + button { border-left:none; }
.filters button[aria-pressed="true"] { background:var(--fg); border-color:var(--fg); color:#fff; }
.filters button:disabled { color:#b0b7bf; cursor:default; }
.filters .n { opacity:.7; font-variant-numeric:tabular-nums; }
.range-row { display:flex; align-items:center; justify-content:space-between; gap:12px; flex-wrap:wrap; margin:8px 0 10px; min-height:30px; }
.range { margin:0; font-size:12px; }
.range-row .pages { margin:0; }
.grid { display:grid; grid-template-columns:repeat(auto-fill, minmax(190px, 1fr)); gap:12px; }
.card { border:1px solid var(--line); border-radius:6px; overflow:hidden; background:#fff; display:flex; flex-direction:column; }
.card .thumb { display:block; aspect-ratio:4/3; background:#eef1f4; color:var(--muted); font-size:12px; text-decoration:none; overflow:hidden; }
.card .thumb.missing { display:flex; align-items:center; justify-content:center; }
.card .thumb img { width:100%; height:100%; object-fit:contain; display:block; }
.card .meta { padding:6px 8px 8px; display:flex; flex-direction:column; gap:2px; min-width:0; }
.card .row { display:flex; align-items:center; justify-content:space-between; gap:6px; }
.card .score { font-size:16px; font-weight:600; font-variant-numeric:tabular-nums; }
.badge { font-size:11px; font-weight:700; letter-spacing:.04em; color:#fff; border-radius:4px; padding:1px 7px; }
.badge.ok { background:var(--ok); } .badge.ng { background:var(--ng); } .badge.none { background:var(--none); font-weight:600; }
.card .name { font-size:12px; white-space:nowrap; overflow:hidden; text-overflow:ellipsis; }
.card .truth { font-size:11px; color:var(--muted); }
.card .desc { margin:2px 0 0; padding:0; list-style:none; font-size:11px; color:var(--muted); }
.card .desc li { white-space:nowrap; overflow:hidden; text-overflow:ellipsis; }
.card .desc li::before { content:"\2022\00a0"; }
.empty { color:var(--muted); padding:24px 0; grid-column:1/-1; text-align:center; }
.pages { display:flex; gap:4px; justify-content:center; flex-wrap:wrap; margin-top:14px; }
.pages button { border-radius:5px; min-width:34px; font-variant-numeric:tabular-nums; }
.pages button[aria-current="page"] { background:var(--accent); border-color:var(--accent); color:#fff; }
.pages button:disabled { color:#b0b7bf; cursor:default; }
.pages .gap { padding:4px 4px; color:var(--muted); }
"#;

const SCRIPT: &str = r#"
(function () {
  "use strict";
  var t0 = performance.now();
  var images = JSON.parse(document.getElementById("report-data").textContent);
  var gallery = document.getElementById("gallery");
  var navs = [document.getElementById("pages-top"), document.getElementById("pages")];
  var range = document.getElementById("range");
  var perPage = parseInt(gallery.getAttribute("data-page-size"), 10) || 60;
  var lists = {
    all: images,
    ng: images.filter(function (im) { return im.verdict === "NG"; }),
    ok: images.filter(function (im) { return im.verdict === "OK"; })
  };
  var labels = { all: "images", ng: "NG images", ok: "OK images" };
  var shown = null;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function href(path) {
    return path.split("/").map(encodeURIComponent).join("/");
  }
  function tail(path) {
    var parts = path.split(/[\\/]/);
    return parts[parts.length - 1] || path;
  }
  function num(n) {
    return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  }
  function fmt(score) {
    return typeof score === "number" ? score.toFixed(3) : "\u2014";
  }
  function card(im) {
    var c = el("article", "card");
    c.setAttribute("data-verdict", im.verdict || "none");
    c.setAttribute("data-score", im.score === null ? "" : String(im.score));
    var link = el("a", "thumb");
    link.href = href(im.overlay);
    link.target = "_blank";
    link.rel = "noopener";
    link.title = "Open the full-size overlay";
    var img = el("img");
    img.loading = "lazy";
    img.decoding = "async";
    img.alt = "Overlay of " + tail(im.file);
    img.addEventListener("error", function () {
      link.classList.add("missing");
      link.replaceChildren(el("span", "", "overlay not found"));
    });
    img.src = href(im.overlay);
    link.appendChild(img);
    c.appendChild(link);
    var meta = el("div", "meta");
    var row = el("div", "row");
    row.appendChild(el("span", "score", fmt(im.score)));
    var v = im.verdict === "NG" ? ["ng", "NG"] : im.verdict === "OK" ? ["ok", "OK"] : ["none", "no verdict"];
    row.appendChild(el("span", "badge " + v[0], v[1]));
    meta.appendChild(row);
    var name = el("div", "name", tail(im.file));
    name.title = im.file;
    meta.appendChild(name);
    if (im.truth !== null && im.truth !== undefined) {
      meta.appendChild(el("div", "truth", im.truth ? "folder: defective" : "folder: good"));
    }
    if (im.descriptors && im.descriptors.length) {
      var ul = el("ul", "desc");
      im.descriptors.slice(0, 3).forEach(function (d) {
        var li = el("li", "", d);
        li.title = d;
        ul.appendChild(li);
      });
      meta.appendChild(ul);
    }
    c.appendChild(meta);
    return c;
  }
  function state() {
    var parts = location.hash.replace(/^#/, "").toLowerCase().split("/");
    var filter = lists.hasOwnProperty(parts[0]) ? parts[0] : "all";
    var page = parseInt(parts[1], 10);
    return { filter: filter, page: page > 0 ? page : 1 };
  }
  function go(filter, page) {
    location.hash = filter + (page > 1 ? "/" + page : "");
  }
  function pageButton(label, page, current, aria) {
    var b = el("button", "", label);
    b.type = "button";
    if (aria) b.setAttribute("aria-label", aria);
    if (page === current) b.setAttribute("aria-current", "page");
    b.setAttribute("data-page", String(page));
    return b;
  }
  function render() {
    var s = state();
    var list = lists[s.filter];
    var count = Math.max(1, Math.ceil(list.length / perPage));
    var page = Math.min(s.page, count);
    var first = (page - 1) * perPage;
    var slice = list.slice(first, first + perPage);
    var frag = document.createDocumentFragment();
    slice.forEach(function (im) { frag.appendChild(card(im)); });
    if (!slice.length) {
      frag.appendChild(el("p", "empty", images.length ? "No " + labels[s.filter] + " in this run." : "No image was scored."));
    }
    gallery.replaceChildren(frag);
    gallery.setAttribute("data-filter", s.filter);
    gallery.setAttribute("data-page", String(page));
    range.textContent = list.length
      ? "Showing " + num(first + 1) + "\u2013" + num(first + slice.length) + " of " + num(list.length) + " " + labels[s.filter] + (count > 1 ? ", page " + num(page) + " of " + num(count) : "")
      : "";
    document.querySelectorAll(".filters button").forEach(function (b) {
      b.setAttribute("aria-pressed", String(b.getAttribute("data-filter") === s.filter));
    });
    navs.forEach(function (n) { n.replaceChildren(pageNav(page, count)); });
    if (shown && (shown.filter !== s.filter || shown.page !== page)) {
      document.getElementById("gallery-panel").scrollIntoView({ block: "start" });
    }
    shown = { filter: s.filter, page: page };
  }
  function pageNav(page, count) {
    var nav = document.createDocumentFragment();
    if (count > 1) {
      var prev = pageButton("\u2039 Prev", page - 1, page, "Previous page");
      prev.disabled = page === 1;
      nav.appendChild(prev);
      var last = 0;
      for (var p = 1; p <= count; p++) {
        if (p === 1 || p === count || Math.abs(p - page) <= 2) {
          if (last && p - last > 1) nav.appendChild(el("span", "gap", "\u2026"));
          nav.appendChild(pageButton(String(p), p, page));
          last = p;
        }
      }
      var next = pageButton("Next \u203a", page + 1, page, "Next page");
      next.disabled = page === count;
      nav.appendChild(next);
    }
    return nav;
  }
  document.querySelectorAll(".filters button").forEach(function (b) {
    var f = b.getAttribute("data-filter");
    b.querySelector(".n").textContent = num(lists[f].length);
    if (f !== "all" && !lists[f].length) {
      b.disabled = true;
      b.title = lists.ng.length + lists.ok.length ? "No " + labels[f] : "No threshold: no verdicts";
    }
    b.addEventListener("click", function () { go(f, 1); });
  });
  navs.forEach(function (n) {
    n.addEventListener("click", function (e) {
      var b = e.target.closest("button");
      if (b && !b.disabled) go(state().filter, parseInt(b.getAttribute("data-page"), 10));
    });
  });
  window.addEventListener("hashchange", render);
  render();
  var done = performance.now();
  document.documentElement.setAttribute("data-render-ms", (done - t0).toFixed(1));
  document.documentElement.setAttribute("data-ready-ms", done.toFixed(1));
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn run(threshold: Option<f32>) -> ReportRun {
        ReportRun {
            title: "alfa detect: bottle".into(),
            created: "2026-11-20 14:03".into(),
            model: "ViT-L-14-336 (openai)".into(),
            method: "alfa".into(),
            settings: vec![("scales".into(), "[2,3]".into()), ("sigma".into(), "4.0".into())],
            threshold: threshold.map(|value| ReportThreshold { value, how: "set by hand".into() }),
            counts: ReportCounts { images: 3, ok: 1, ng: 2, failed: 0, interrupted: false },
        }
    }

    fn image(file: &str, score: f32) -> ReportImage {
        ReportImage {
            file: file.into(),
            overlay: format!("{file}_overlay.png"),
            score,
            verdict: Some(Verdict::of(score, 0.5)),
            truth: None,
            descriptors: vec!["a crack".into(), "a dent".into(), "a scratch".into(), "a hole".into()],
        }
    }

    /// The JSON blob between the data script's tags.
    fn data_blob(html: &str) -> &str {
        let start = html.find("id=\"report-data\">").unwrap() + "id=\"report-data\">".len();
        let end = start + html[start..].find("</script>").unwrap();
        &html[start..end]
    }

    #[test]
    fn a_file_name_cannot_leave_the_data_script_or_the_summary() {
        let evil = "</script><b>x";
        let mut r = run(Some(0.5));
        r.title = "<img src=x onerror=alert(1)>".into();
        r.settings.push(("prompts".into(), "\"'><script>alert(2)</script>".into()));
        r.threshold.as_mut().unwrap().how = "<i>by hand</i> & co".into();
        let html = render(&r, &[image(evil, 0.9), image("<!--<script>", 0.1)]).unwrap();
        assert!(!html.contains(evil), "the raw name is in the page");
        assert!(!html.contains("<b>x"));
        assert!(!html.contains("<!--<script>"));
        assert!(!html.contains("<img src=x"));
        assert!(!html.contains("<script>alert(2)"));
        assert!(html.contains("&lt;i&gt;by hand&lt;/i&gt; &amp; co"));
        // Exactly the page's own two script elements, each closed once.
        assert_eq!(html.matches("<script").count(), 2);
        assert_eq!(html.matches("</script>").count(), 2);
        // The blob is still the exact data.
        let parsed: serde_json::Value = serde_json::from_str(data_blob(&html)).unwrap();
        assert_eq!(parsed[0]["file"], evil);
        assert_eq!(parsed[1]["file"], "<!--<script>");
    }

    #[test]
    fn the_page_has_no_external_urls() {
        let mut images: Vec<ReportImage> = (0..200).map(|i| image(&format!("img{i}"), i as f32 / 200.0)).collect();
        images[0].truth = Some(true);
        images[1].truth = Some(false);
        for html in [render(&run(Some(0.5)), &images).unwrap(), render(&run(None), &[]).unwrap()] {
            let lower = html.to_ascii_lowercase();
            for needle in ["http://", "https://", "src=\"//", "href=\"//", "url(", "@import", "xmlns"] {
                assert!(!lower.contains(needle), "the page contains {needle}");
            }
        }
    }

    #[test]
    fn the_gallery_data_is_sorted_by_score_with_three_descriptors_and_nan_last() {
        let images = [image("a", 0.2), image("b", f32::NAN), image("c", 0.9), image("d", 0.5)];
        let html = render(&run(Some(0.5)), &images).unwrap();
        let parsed: Vec<serde_json::Value> = serde_json::from_str(data_blob(&html)).unwrap();
        let files: Vec<&str> = parsed.iter().map(|e| e["file"].as_str().unwrap()).collect();
        assert_eq!(files, ["c", "d", "a", "b"]);
        assert_eq!(parsed[3]["score"], serde_json::Value::Null);
        assert_eq!(parsed[0]["verdict"], "NG");
        assert_eq!(parsed[2]["verdict"], "OK");
        assert_eq!(parsed[0]["descriptors"].as_array().unwrap().len(), 3);
        assert_eq!(parsed[0]["truth"], serde_json::Value::Null);
    }

    #[test]
    fn the_summary_says_how_the_threshold_was_set_or_that_there_is_none() {
        let html = render(&run(Some(0.5321)), &[image("a", 0.6)]).unwrap();
        assert!(html.contains("0.532") && html.contains("set by hand"));
        assert!(html.contains("threshold 0.532"), "the histogram's threshold label");
        assert!(!html.contains("Interrupted"));
        let mut none = run(None);
        none.counts.interrupted = true;
        let html = render(&none, &[image("a", 0.6)]).unwrap();
        assert!(html.contains("no threshold: no verdicts"));
        assert!(!html.contains("class=\"threshold\""));
        assert!(html.contains("Interrupted: partial results"));
        assert!(render(&none, &[]).unwrap().contains("No image was scored"));
    }

    #[test]
    fn the_histogram_colours_good_and_defective_apart_only_when_folders_say() {
        let fill = |color: &str| format!("fill=\"{color}\"");
        let mut images = vec![image("a", 0.1), image("b", 0.8)];
        let plain = render(&run(Some(0.5)), &images).unwrap();
        assert!(plain.contains(&fill(PLAIN_COLOR)));
        assert!(!plain.contains(&fill(GOOD_COLOR)) && !plain.contains(&fill(DEFECTIVE_COLOR)));
        images[0].truth = Some(false);
        images[1].truth = Some(true);
        let labelled = render(&run(Some(0.5)), &images).unwrap();
        assert!(labelled.contains(&fill(GOOD_COLOR)) && labelled.contains(&fill(DEFECTIVE_COLOR)));
        assert!(!labelled.contains(&fill(UNKNOWN_COLOR)), "no unknown image, no unknown colour");
        assert!(labelled.contains("good (folder name)") && !plain.contains("good (folder name)"));
    }

    #[test]
    fn histogram_bins_cover_every_finite_score_and_the_threshold() {
        let scores = [(0.2, Some(false)), (0.2, None), (0.9, Some(true)), (f32::NAN, None)];
        let h = Histogram::new(scores.iter().copied(), Some(1.5)).unwrap();
        assert_eq!((h.lo, h.hi), (0.2, 1.5));
        assert_eq!(h.bins.len(), HISTOGRAM_BINS);
        assert_eq!(h.bins[0], [1, 0, 1]);
        assert_eq!(h.bins.iter().map(|b| b[1]).sum::<usize>(), 1);
        // One score: a range around it, not a zero-width one.
        let one = Histogram::new([(0.4, None)].into_iter(), None).unwrap();
        assert!(one.lo < 0.4 && one.hi > 0.4);
        assert!(Histogram::new([(f32::NAN, None)].into_iter(), None).is_none());
    }

    #[test]
    fn truth_comes_from_the_images_folder() {
        let t = |p: &str| truth_from_path(Path::new(p));
        assert_eq!(t("mvtec/bottle/test/good/000.png"), Some(false));
        assert_eq!(t("mvtec/bottle/test/broken_large/000.png"), Some(true));
        assert_eq!(t("/data/bottle/TEST/Crack/1.png"), Some(true));
        assert_eq!(t("bottle/train/good/000.png"), Some(false));
        assert_eq!(t("line3/OK/img.jpg"), Some(false));
        assert_eq!(t("line3/NG/img.jpg"), Some(true));
        assert_eq!(t("line3/ng/img.jpg"), Some(true));
        assert_eq!(t("visa/candle/Data/Images/Normal/0001.JPG"), Some(false));
        assert_eq!(t("visa/candle/Data/Images/Anomaly/0001.JPG"), Some(true));
        assert_eq!(t("folder/abnormal/x.png"), Some(true));
        // Nothing to go by.
        assert_eq!(t("photos/2026/x.png"), None);
        assert_eq!(t("x.png"), None);
        assert_eq!(t("bottle/ground_truth/crack/000_mask.png"), None);
        // `test` as the image's own folder names no defect.
        assert_eq!(t("bottle/test/000.png"), None);
        // A distant `ok` folder says nothing about this image.
        assert_eq!(t("/home/ok/photos/x.png"), None);
        // The file's own name is not a folder.
        assert_eq!(t("photos/good"), None);
    }

    #[test]
    fn counts_have_thousands_separators() {
        let t: Vec<String> = [0, 7, 999, 1000, 10_000, 1_234_567].into_iter().map(count_text).collect();
        assert_eq!(t, ["0", "7", "999", "1,000", "10,000", "1,234,567"]);
    }

    #[test]
    fn links_are_relative_with_forward_slashes() {
        let out = Path::new("/runs/out");
        assert_eq!(
            relative_link(out, Path::new("/runs/out/bottle/test/crack/000_overlay.png")).as_deref(),
            Some("bottle/test/crack/000_overlay.png")
        );
        assert_eq!(relative_link(out, Path::new("/elsewhere/x.png")), None);
        assert_eq!(relative_link(out, out), None);
    }

    #[test]
    fn settings_objects_flatten_to_rows() {
        let value = serde_json::json!({"scales": [2, 3], "window_mode": "tokens", "sigma": 4.0, "ridge": {"lambda": 0.1}});
        let rows = settings_list(&value);
        let get = |k: &str| rows.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("scales"), Some("[2,3]"));
        assert_eq!(get("window_mode"), Some("tokens"));
        assert_eq!(get("sigma"), Some("4.0"));
        assert_eq!(get("ridge.lambda"), Some("0.1"));
        assert!(settings_list(&serde_json::Value::Null).is_empty());
    }

    #[test]
    fn write_report_writes_the_page_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/report.html");
        write_report(&path, &run(Some(0.5)), &[image("a", 0.7)]).unwrap();
        let html = std::fs::read_to_string(&path).unwrap();
        assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left beside the page");
    }
}
