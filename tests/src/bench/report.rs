//! The figures of a benchmark run, their statistics and their rendering (Markdown and JSON).
//!
//! A [`Figure`] is one measured quantity (e.g. "keep-alive request latency p50") with one
//! [`Series`] per variant (direct, mirrord, ...). A series holds one value per run (`None` when
//! that run of that variant failed), so a variant's ratio to the baseline is computed **per
//! run** (the two were measured minutes apart at most, interleaved) and the figure shows the
//! median of those ratios with their min–max.

use serde_json::{json, Value};

/// Which direction is good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
}

/// A goal for one variant of a figure.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Goal {
    /// median ratio to the baseline ≤ x
    RatioAtMost(f64),
    /// median ratio to the baseline ≥ x
    RatioAtLeast(f64),
    /// median value ≤ x (in the figure's unit)
    AtMost(f64),
    /// median of (value − baseline) per run ≤ x (in the figure's unit)
    OverBaselineAtMost(f64),
}

/// Whether a goal was met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Met,
    Missed,
    /// No data to judge (the variant or the baseline failed in every run).
    Unknown,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Met => "met",
            Status::Missed => "missed",
            Status::Unknown => "no data",
        }
    }
}

/// One variant's values of a figure, one slot per run.
#[derive(Clone, Debug)]
pub struct Series {
    pub variant: String,
    pub values: Vec<Option<f64>>,
    /// Why runs failed (first few).
    pub failures: Vec<String>,
}

/// One measured quantity; see the module docs.
#[derive(Clone, Debug)]
pub struct Figure {
    pub id: String,
    pub section: String,
    pub name: String,
    pub unit: String,
    pub better: Better,
    /// The variant the others are compared with (its ratio is 1).
    pub baseline: Option<String>,
    pub series: Vec<Series>,
    /// (variant, goal)
    pub goals: Vec<(String, Goal)>,
    /// What exactly is measured, shown under the section's table.
    pub note: String,
}

/// Summary of a list of values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

/// Median (mean of the two middle values for an even count), min and max; `None` if empty.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: v[0],
        max: v[n - 1],
        n,
    })
}

impl Figure {
    pub fn new(id: &str, section: &str, name: &str, unit: &str, better: Better) -> Figure {
        Figure {
            id: id.into(),
            section: section.into(),
            name: name.into(),
            unit: unit.into(),
            better,
            baseline: None,
            series: Vec::new(),
            goals: Vec::new(),
            note: String::new(),
        }
    }

    pub fn baseline(mut self, variant: &str) -> Figure {
        self.baseline = Some(variant.into());
        self
    }

    pub fn goal(mut self, variant: &str, goal: Goal) -> Figure {
        self.goals.push((variant.into(), goal));
        self
    }

    pub fn note(mut self, note: &str) -> Figure {
        self.note = note.into();
        self
    }

    fn series_mut(&mut self, variant: &str, runs: usize) -> &mut Series {
        let at = match self.series.iter().position(|s| s.variant == variant) {
            Some(i) => i,
            None => {
                self.series.push(Series {
                    variant: variant.into(),
                    values: Vec::new(),
                    failures: Vec::new(),
                });
                self.series.len() - 1
            }
        };
        let s = &mut self.series[at];
        if s.values.len() < runs {
            s.values.resize(runs, None);
        }
        s
    }

    /// Records `value` for `variant` in run `run`.
    pub fn put(&mut self, variant: &str, run: usize, value: f64) {
        self.series_mut(variant, run + 1).values[run] = Some(value);
    }

    /// Records a failed run of `variant` (keeps the first five reasons).
    pub fn fail(&mut self, variant: &str, run: usize, why: &str) {
        let s = self.series_mut(variant, run + 1);
        if s.failures.len() < 5 {
            s.failures.push(format!("run {}: {why}", run + 1));
        }
    }

    fn series(&self, variant: &str) -> Option<&Series> {
        self.series.iter().find(|s| s.variant == variant)
    }

    /// Summary of a variant's values.
    pub fn summary(&self, variant: &str) -> Option<Summary> {
        let s = self.series(variant)?;
        summarize(&s.values.iter().flatten().copied().collect::<Vec<_>>())
    }

    /// Per-run `f(value, baseline)` of a variant, for the runs where both exist.
    fn paired(&self, variant: &str, f: impl Fn(f64, f64) -> f64) -> Option<Summary> {
        let base = self.series(self.baseline.as_deref()?)?;
        let s = self.series(variant)?;
        let v: Vec<f64> = s
            .values
            .iter()
            .zip(&base.values)
            .filter_map(|(v, b)| Some(f((*v)?, (*b)?)))
            .collect();
        summarize(&v)
    }

    /// Median (min–max) over runs of value / baseline.
    pub fn ratio(&self, variant: &str) -> Option<Summary> {
        self.paired(variant, |v, b| v / b)
    }

    /// Median (min–max) over runs of value − baseline.
    pub fn difference(&self, variant: &str) -> Option<Summary> {
        self.paired(variant, |v, b| v - b)
    }

    /// The goal of a variant and whether it was met.
    pub fn judge(&self, variant: &str) -> Option<(Goal, Status)> {
        let goal = self.goals.iter().find(|(v, _)| v == variant)?.1;
        let status = |ok: Option<bool>| match ok {
            Some(true) => Status::Met,
            Some(false) => Status::Missed,
            None => Status::Unknown,
        };
        let st = match goal {
            Goal::RatioAtMost(x) => status(self.ratio(variant).map(|r| r.median <= x)),
            Goal::RatioAtLeast(x) => status(self.ratio(variant).map(|r| r.median >= x)),
            Goal::AtMost(x) => status(self.summary(variant).map(|s| s.median <= x)),
            Goal::OverBaselineAtMost(x) => status(self.difference(variant).map(|d| d.median <= x)),
        };
        Some((goal, st))
    }

    fn goal_text(&self, goal: Goal) -> String {
        let base = self.baseline.as_deref().unwrap_or("baseline");
        match goal {
            Goal::RatioAtMost(x) => format!("≤ {x}× {base}"),
            Goal::RatioAtLeast(x) => format!("≥ {x}× {base}"),
            Goal::AtMost(x) => format!("≤ {} {}", fmt_num(x), self.unit),
            Goal::OverBaselineAtMost(x) => format!("≤ {base} + {} {}", fmt_num(x), self.unit),
        }
    }

    /// The JSON form of the figure (values, summaries, ratios, goals).
    pub fn to_json(&self) -> Value {
        let series: Vec<Value> = self
            .series
            .iter()
            .map(|s| {
                let sum = self.summary(&s.variant);
                let ratio = self.ratio(&s.variant);
                let diff = self.difference(&s.variant);
                let judged = self.judge(&s.variant);
                json!({
                    "variant": s.variant,
                    "values": s.values,
                    "median": sum.map(|x| x.median),
                    "min": sum.map(|x| x.min),
                    "max": sum.map(|x| x.max),
                    "runs_ok": sum.map_or(0, |x| x.n),
                    "ratio_to_baseline": ratio.map(|r| json!({"median": r.median, "min": r.min, "max": r.max})),
                    "minus_baseline": diff.map(|r| json!({"median": r.median, "min": r.min, "max": r.max})),
                    "goal": judged.map(|(g, _)| self.goal_text(g)),
                    "status": judged.map(|(_, st)| st.as_str()),
                    "failures": s.failures,
                })
            })
            .collect();
        json!({
            "id": self.id,
            "section": self.section,
            "name": self.name,
            "unit": self.unit,
            "better": match self.better { Better::Lower => "lower", Better::Higher => "higher" },
            "baseline": self.baseline,
            "note": self.note,
            "series": series,
        })
    }
}

/// A number with a sensible number of digits.
pub fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let a = x.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn fmt_ratio(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// The Markdown tables of `figures`, one per section, in the order the sections first appear;
/// each table is followed by the notes of its figures.
pub fn markdown_tables(figures: &[Figure]) -> String {
    let mut sections: Vec<&str> = Vec::new();
    for f in figures {
        if !sections.contains(&f.section.as_str()) {
            sections.push(&f.section);
        }
    }
    let mut out = String::new();
    for section in sections {
        out += &format!("### {section}\n\n");
        out += "| figure | variant | median | min–max | ratio to baseline (min–max) | goal | |\n";
        out += "|---|---|---:|---:|---:|---|---|\n";
        let mut notes = Vec::new();
        for f in figures.iter().filter(|f| f.section == section) {
            if !f.note.is_empty() {
                notes.push(format!("- **{}**: {}", f.name, f.note));
            }
            // The baseline first, the others in the order they were first measured.
            let mut series: Vec<&Series> = f.series.iter().collect();
            series.sort_by_key(|s| f.baseline.as_deref() != Some(s.variant.as_str()));
            for (i, s) in series.into_iter().enumerate() {
                let name = if i == 0 { f.name.as_str() } else { "" };
                let runs = s.values.len();
                let (median, range) = match f.summary(&s.variant) {
                    Some(x) => {
                        let ok = if x.n < runs {
                            format!(" ({}/{} runs)", x.n, runs)
                        } else {
                            String::new()
                        };
                        (
                            format!("{} {}{ok}", fmt_num(x.median), f.unit),
                            format!("{}–{}", fmt_num(x.min), fmt_num(x.max)),
                        )
                    }
                    None => ("failed".into(), "–".into()),
                };
                let ratio = match (&f.baseline, f.ratio(&s.variant)) {
                    (Some(b), _) if *b == s.variant => "1 (baseline)".into(),
                    (Some(_), Some(r)) => format!(
                        "{}× ({}–{})",
                        fmt_ratio(r.median),
                        fmt_ratio(r.min),
                        fmt_ratio(r.max)
                    ),
                    _ => "–".into(),
                };
                let (goal, status) = match f.judge(&s.variant) {
                    Some((g, st)) => {
                        let mut goal = f.goal_text(g);
                        if let (Goal::OverBaselineAtMost(_), Some(d)) =
                            (g, f.difference(&s.variant))
                        {
                            goal += &format!(" (here + {} {})", fmt_num(d.median), f.unit);
                        }
                        let st = match st {
                            Status::Missed => "**missed**".to_string(),
                            other => other.as_str().to_string(),
                        };
                        (goal, st)
                    }
                    None => (String::new(), String::new()),
                };
                out += &format!(
                    "| {name} | {} | {median} | {range} | {ratio} | {goal} | {status} |\n",
                    s.variant
                );
                for why in &s.failures {
                    notes.push(format!(
                        "- {} / {} failed in {}",
                        f.name,
                        s.variant,
                        why.replace('|', "/")
                    ));
                }
            }
        }
        out += "\n";
        for n in notes {
            out += &n;
            out += "\n";
        }
        out += "\n";
    }
    out
}

/// (variant figure, goal text, status) of every goal, for the summary.
pub fn goals(figures: &[Figure]) -> Vec<(String, String, Status)> {
    let mut v = Vec::new();
    for f in figures {
        for (variant, _) in &f.goals {
            if let Some((g, st)) = f.judge(variant) {
                v.push((format!("{} ({variant})", f.name), f.goal_text(g), st));
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_odd_and_even_counts() {
        let s = summarize(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        let s = summarize(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(summarize(&[]).is_none());
        assert!(summarize(&[f64::NAN]).is_none());
    }

    #[test]
    fn ratios_are_paired_per_run_and_goals_judged() {
        let mut f = Figure::new("x", "s", "latency", "µs", Better::Lower)
            .baseline("direct")
            .goal("mirrord", Goal::RatioAtMost(1.5))
            .goal("other", Goal::OverBaselineAtMost(5.0));
        for (run, (d, m, o)) in [
            (100.0, 120.0, 104.0),
            (200.0, 260.0, 210.0),
            (100.0, 300.0, 103.0),
        ]
        .into_iter()
        .enumerate()
        {
            f.put("direct", run, d);
            f.put("mirrord", run, m);
            f.put("other", run, o);
        }
        // Per-run ratios 1.2, 1.3, 3.0 → median 1.3 (not 680/400).
        let r = f.ratio("mirrord").unwrap();
        assert!((r.median - 1.3).abs() < 1e-9, "{r:?}");
        assert_eq!(f.judge("mirrord").unwrap().1, Status::Met);
        // Differences 4, 10, 3 → median 4.
        assert_eq!(f.difference("other").unwrap().median, 4.0);
        assert_eq!(f.judge("other").unwrap().1, Status::Met);
        assert!(f.judge("direct").is_none());
        let md = markdown_tables(&[f.clone()]);
        assert!(
            md.contains("| latency | direct | 100 µs | 100–200 | 1 (baseline) |"),
            "{md}"
        );
        assert!(md.contains("1.30× (1.20–3.00)"), "{md}");
    }

    #[test]
    fn failed_runs_are_shown_and_leave_no_data() {
        let mut f = Figure::new("x", "s", "bulk", "MiB/s", Better::Higher)
            .baseline("direct")
            .goal("mirrord", Goal::RatioAtLeast(0.6));
        f.fail("mirrord", 0, "timed out");
        f.put("direct", 0, 100.0);
        assert_eq!(f.judge("mirrord").unwrap().1, Status::Unknown);
        let md = markdown_tables(&[f]);
        assert!(md.contains("| mirrord | failed |"), "{md}");
        // The baseline comes first whatever was measured first.
        assert!(md.find("| direct |") < md.find("| mirrord |"), "{md}");
        assert!(md.contains("failed in run 1: timed out"), "{md}");
    }
}
