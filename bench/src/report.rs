//! The report: one row per figure, with the baseline it is compared to, printed as a table and
//! written as JSON.

use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "kind", content = "limit", rename_all = "snake_case")]
pub enum Target {
    /// Informative: no target.
    None,
    AtMost(f64),
    /// A correctness figure (duplicates, losses): must be exactly this, in any run.
    Exactly(f64),
    /// A correctness bound (duplicates within the crash window): at most this, in any run.
    Within(f64),
    RatioAtMost(f64),
    RatioAtLeast(f64),
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub figure: String,
    pub unit: &'static str,
    pub value: f64,
    pub baseline_name: Option<String>,
    pub baseline: Option<f64>,
    pub ratio: Option<f64>,
    pub target: Target,
    pub pass: Option<bool>,
}

impl Row {
    pub fn new(figure: impl Into<String>, unit: &'static str, value: f64) -> Self {
        Self {
            figure: figure.into(),
            unit,
            value,
            baseline_name: None,
            baseline: None,
            ratio: None,
            target: Target::None,
            pass: None,
        }
    }

    pub fn against(mut self, name: impl Into<String>, baseline: f64) -> Self {
        self.baseline_name = Some(name.into());
        self.baseline = Some(baseline);
        self.ratio = (baseline != 0.0).then(|| self.value / baseline);
        self.judge()
    }

    pub fn target(mut self, target: Target) -> Self {
        self.target = target;
        self.judge()
    }

    fn judge(mut self) -> Self {
        self.pass = match self.target {
            Target::None => None,
            Target::AtMost(limit) => Some(self.value <= limit),
            Target::Exactly(expected) => Some(self.value == expected),
            Target::Within(limit) => Some(self.value <= limit),
            Target::RatioAtMost(limit) => self.ratio.map(|ratio| ratio <= limit),
            Target::RatioAtLeast(limit) => self.ratio.map(|ratio| ratio >= limit),
        };
        self
    }

    pub fn is_correctness_failure(&self) -> bool {
        matches!(self.target, Target::Exactly(_) | Target::Within(_)) && self.pass == Some(false)
    }
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub build_profile: String,
}

impl Machine {
    pub fn detect(build_profile: &str) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_else(|| "unknown".into());
        Self {
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|release| release.trim().to_owned())
                .unwrap_or_default(),
            build_profile: build_profile.to_owned(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    /// Seconds since the Unix epoch.
    pub taken_at: u64,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn print(&self) {
        let m = &self.machine;
        println!(
            "\nMachine: {} × {} (Linux {}), {} build\n",
            m.cpus, m.cpu_model, m.kernel, m.build_profile
        );
        let header = ["figure", "value", "baseline", "ratio", "target", "pass"];
        let cells: Vec<[String; 6]> = self.rows.iter().map(cells).collect();
        let mut widths = header.map(str::len);
        for row in &cells {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |row: &[String; 6]| {
            let padded: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            println!("{}", padded.join("  ").trim_end());
        };
        line(&header.map(String::from));
        line(&widths.map(|width| "-".repeat(width)));
        cells.iter().for_each(line);
        for note in &self.notes {
            println!("\nnote: {note}");
        }
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(self)?)?;
        Ok(())
    }
}

fn number(value: f64) -> String {
    match value.abs() {
        v if v == 0.0 || v >= 100.0 => format!("{value:.0}"),
        v if v >= 1.0 => format!("{value:.2}"),
        _ => format!("{value:.3}"),
    }
}

fn cells(row: &Row) -> [String; 6] {
    let baseline = match (&row.baseline_name, row.baseline) {
        (Some(name), Some(value)) => format!("{} {} ({name})", number(value), row.unit),
        _ => "-".into(),
    };
    let target = match row.target {
        Target::None => "-".into(),
        Target::AtMost(limit) => format!("≤ {} {}", number(limit), row.unit),
        Target::Exactly(expected) => format!("= {}", number(expected)),
        Target::Within(limit) => format!("≤ {} (bound)", number(limit)),
        Target::RatioAtMost(limit) => format!("ratio ≤ {}", number(limit)),
        Target::RatioAtLeast(limit) => format!("ratio ≥ {}", number(limit)),
    };
    [
        row.figure.clone(),
        format!("{} {}", number(row.value), row.unit),
        baseline,
        row.ratio.map_or("-".into(), |ratio| format!("{ratio:.2}×")),
        target,
        match row.pass {
            None => "-".into(),
            Some(true) => "pass".into(),
            Some(false) => "FAIL".into(),
        },
    ]
}
