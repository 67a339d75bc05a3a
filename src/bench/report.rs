//! `bench report`: reads the result files of several runs (`<results>/run-*/<name>.json`),
//! takes the median of each figure over the runs, checks the targets, draws latency against
//! rate (SVG, plotters) and writes all of it between the markers of BENCHMARKS.md, keeping
//! the hand-written text around them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use plotters::prelude::*;
use serde_json::Value;

const BEGIN: &str = "<!-- bench:begin (written by `talkamie bench report`) -->";
const END: &str = "<!-- bench:end -->";

#[derive(Args, Clone, Debug)]
pub struct ReportArgs {
    /// Directory of the runs (`run-1/`, `run-2/`, ... each holding `<name>.json`), plus an
    /// optional `meta.json` describing the machine.
    #[arg(long, default_value = "bench-results")]
    pub results: PathBuf,
    /// The Markdown file to update.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub out: PathBuf,
    /// Where the charts go (linked relative to the Markdown file).
    #[arg(long, default_value = "docs/bench")]
    pub charts: PathBuf,
}

/// Medians over runs of one result name.
#[derive(Debug, Default, Clone)]
struct Figures {
    label: String,
    runs: usize,
    throughput: f64,
    unit: String,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    errors: f64,
    kib_per_socket: Option<f64>,
    opened: Option<f64>,
    rate: Option<f64>,
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let results = load(&args.results)?;
    let meta: Value = std::fs::read_to_string(args.results.join("meta.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    std::fs::create_dir_all(&args.charts)?;
    let chart = args.charts.join("chat-latency.svg");
    let drew = latency_chart(&results, &chart)?;
    let relative_chart = relative_to(&chart, &args.out);
    let section = render(&results, &meta, drew.then_some(relative_chart.as_str()));
    let old = std::fs::read_to_string(&args.out).unwrap_or_else(|_| "# Benchmarks\n".into());
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{section}{}", &old[..b], &old[e + END.len()..])
        }
        _ => format!("{}\n{section}\n", old.trim_end()),
    };
    std::fs::write(&args.out, new).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote {} ({} results)", args.out.display(), results.len());
    Ok(())
}

fn relative_to(chart: &Path, markdown: &Path) -> String {
    let base = markdown.parent().unwrap_or(Path::new(""));
    chart
        .strip_prefix(base)
        .unwrap_or(chart)
        .display()
        .to_string()
}

/// name -> medians over every run that has it.
fn load(dir: &Path) -> anyhow::Result<BTreeMap<String, Figures>> {
    let mut by_name: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let runs = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for run in runs.flatten().filter(|e| e.path().is_dir()) {
        for file in std::fs::read_dir(run.path())?.flatten() {
            let path = file.path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&path)?;
                let value: Value = serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?;
                let name = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                by_name.entry(name).or_default().push(value);
            }
        }
    }
    Ok(by_name
        .into_iter()
        .map(|(name, values)| (name, medians(&values)))
        .collect())
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn medians(values: &[Value]) -> Figures {
    let field = |pick: &dyn Fn(&Value) -> Option<f64>| -> Option<f64> {
        let found: Vec<f64> = values.iter().filter_map(pick).collect();
        (!found.is_empty()).then(|| median(found))
    };
    let number = |path: &'static [&'static str]| {
        field(&move |v: &Value| {
            path.iter()
                .try_fold(v, |v, key| v.get(*key))
                .and_then(Value::as_f64)
        })
    };
    let first = values.first().cloned().unwrap_or(Value::Null);
    Figures {
        label: first["label"].as_str().unwrap_or("").to_string(),
        runs: values.len(),
        throughput: number(&["throughput"]).unwrap_or(0.0),
        unit: first["unit"].as_str().unwrap_or("").to_string(),
        p50: number(&["latencyMs", "p50"]).unwrap_or(0.0),
        p90: number(&["latencyMs", "p90"]).unwrap_or(0.0),
        p99: number(&["latencyMs", "p99"]).unwrap_or(0.0),
        max: number(&["latencyMs", "max"]).unwrap_or(0.0),
        errors: number(&["errors"]).unwrap_or(0.0),
        kib_per_socket: number(&["extra", "serverKibPerSocket"]),
        opened: number(&["extra", "opened"]),
        rate: number(&["params", "rate"]),
    }
}

fn render(results: &BTreeMap<String, Figures>, meta: &Value, chart: Option<&str>) -> String {
    let mut out = String::new();
    out.push_str(BEGIN);
    out.push_str("\n\n## Latest figures\n\n");
    if let Some(object) = meta.as_object() {
        for (key, value) in object {
            let text = value
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            out.push_str(&format!("- {key}: {text}\n"));
        }
        out.push('\n');
    }
    out.push_str("Medians over the runs; latency in milliseconds.\n\n");
    out.push_str("| Result | Runs | Throughput | p50 | p90 | p99 | max | Errors |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (name, f) in results {
        out.push_str(&format!(
            "| `{name}` ({}) | {} | {:.0} {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} |\n",
            f.label, f.runs, f.throughput, f.unit, f.p50, f.p90, f.p99, f.max, f.errors
        ));
    }
    out.push_str("\n### Targets\n\n| Target | Measured | Met |\n|---|---|---|\n");
    for (target, measured, met) in targets(results) {
        let met = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not measured",
        };
        out.push_str(&format!("| {target} | {measured} | {met} |\n"));
    }
    if let Some(chart) = chart {
        out.push_str(&format!(
            "\n### Chat: send-to-push latency against rate\n\nRates at which pushes were lost are left out of the chart.\n\n![chat latency against rate]({chart})\n"
        ));
    }
    out.push('\n');
    out.push_str(END);
    out
}

type Target = (String, String, Option<bool>);
/// (offered rate, p50, p99)
type Point = (f64, f64, f64);

fn targets(r: &BTreeMap<String, Figures>) -> Vec<Target> {
    let mut out = Vec::new();
    let pg = r.get("pgbench");
    match (r.get("commands-postgres"), pg) {
        (Some(c), Some(pg)) if pg.throughput > 0.0 => {
            let ratio = c.throughput / pg.throughput;
            out.push((
                "`commands` ≥ 0.5 × pgbench one-row-insert TPS (same clients)".into(),
                format!("{:.0} / {:.0} = {ratio:.2}×", c.throughput, pg.throughput),
                Some(ratio >= 0.5),
            ));
        }
        _ => out.push(("`commands` ≥ 0.5 × pgbench".into(), "-".into(), None)),
    }
    if let (Some(c), Some(pg)) = (r.get("commands-sqlite"), pg) {
        out.push((
            "SQLite `commands`, reported beside PostgreSQL".into(),
            format!(
                "{:.0} commands/s ({:.2}× pgbench)",
                c.throughput,
                c.throughput / pg.throughput.max(1e-9)
            ),
            Some(true),
        ));
    }
    let latency = |name: &str, limit: f64, what: &str| -> Target {
        match r.get(name) {
            Some(f) => (
                what.to_string(),
                format!(
                    "p99 {:.2} ms, {:.0} msg/s delivered, {:.0} lost or refused",
                    f.p99, f.throughput, f.errors
                ),
                Some(f.p99 <= limit && f.errors == 0.0),
            ),
            None => (what.to_string(), "-".into(), None),
        }
    };
    out.push(latency(
        "chat-rate-1000",
        20.0,
        "`chat` p99 ≤ 20 ms at 1,000 msg/s, one instance",
    ));
    out.push(latency(
        "chat2-rate-1000",
        50.0,
        "`chat` p99 ≤ 50 ms at 1,000 msg/s, two instances",
    ));
    // Two rows: the memory per socket is the server's doing; how many open can also be capped
    // by the machine (open files per process, for the server and the load tool alike).
    match r.get("sockets") {
        Some(f) => {
            let kib = f.kib_per_socket.unwrap_or(f64::NAN);
            let opened = f.opened.unwrap_or(0.0);
            out.push((
                "`sockets`: ≤ 12 KiB of server memory per idle authenticated socket".into(),
                format!(
                    "{kib:.1} KiB each over {opened:.0} sockets, ping p99 {:.2} ms",
                    f.p99
                ),
                Some(kib <= 12.0),
            ));
            out.push((
                "`sockets`: 20,000 of them open on one instance".into(),
                format!("{opened:.0} open"),
                Some(opened >= 20_000.0),
            ));
        }
        None => out.push(("`sockets` ≤ 12 KiB each".into(), "-".into(), None)),
    }
    let rate = |name: &str, floor: f64, what: &str| -> Target {
        match r.get(name) {
            Some(f) => (
                what.to_string(),
                format!("{:.0} {}", f.throughput, f.unit),
                Some(f.throughput >= floor),
            ),
            None => (what.to_string(), "-".into(), None),
        }
    };
    out.push(rate(
        "rpc",
        35_000.0,
        "`rpc`: `user.me` ≥ 35,000 round-trips/s over 32 sockets",
    ));
    out.push(rate(
        "rebuild",
        50_000.0,
        "`rebuild` ≥ 50,000 events/s (the events the scenario generates: chat messages)",
    ));
    if r.contains_key("rebuild-bench-log") {
        out.push(rate(
            "rebuild-bench-log",
            50_000.0,
            "`rebuild` ≥ 50,000 events/s, the whole benchmark log (every scenario's events)",
        ));
    }
    out
}

/// p50 and p99 against the offered rate, for one instance (`chat-rate-*`) and two
/// (`chat2-rate-*`). Returns false when there is nothing to draw.
fn latency_chart(results: &BTreeMap<String, Figures>, path: &Path) -> anyhow::Result<bool> {
    let series = |prefix: &str| -> Vec<Point> {
        let mut points: Vec<Point> = results
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            // A rate whose pushes were lost has no meaningful latency: it is left out (the
            // table lists it with its losses).
            .filter(|(_, f)| f.errors == 0.0)
            .filter_map(|(_, f)| f.rate.map(|rate| (rate, f.p50, f.p99)))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        points
    };
    let one = series("chat-rate-");
    let two = series("chat2-rate-");
    if one.is_empty() && two.is_empty() {
        return Ok(false);
    }
    let max_rate = one.iter().chain(&two).map(|p| p.0).fold(1.0, f64::max);
    let max_ms = one.iter().chain(&two).map(|p| p.2).fold(1.0, f64::max) * 1.1;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("chat: send-to-push latency", ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..max_rate * 1.05, 0.0..max_ms)?;
        chart
            .configure_mesh()
            .x_desc("offered rate (messages/s)")
            .y_desc("latency (ms)")
            .draw()?;
        let lines: [(&str, &[Point], bool, RGBColor); 4] = [
            ("one instance p50", &one, false, BLUE),
            ("one instance p99", &one, true, BLUE),
            ("two instances p50", &two, false, RED),
            ("two instances p99", &two, true, RED),
        ];
        for (name, points, p99, color) in lines {
            if points.is_empty() {
                continue;
            }
            let data: Vec<(f64, f64)> = points
                .iter()
                .map(|&(rate, p50, p99_ms)| (rate, if p99 { p99_ms } else { p50 }))
                .collect();
            let style = if p99 {
                ShapeStyle::from(color).stroke_width(2)
            } else {
                ShapeStyle::from(color.mix(0.5)).stroke_width(1)
            };
            chart
                .draw_series(LineSeries::new(data.clone(), style))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            chart.draw_series(data.iter().map(|&p| Circle::new(p, 3, style.filled())))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }

    #[test]
    fn a_report_replaces_only_its_own_section() {
        let dir = tempfile::tempdir().expect("temp dir");
        for (run, tps) in [("run-1", 100.0), ("run-2", 300.0), ("run-3", 200.0)] {
            let run_dir = dir.path().join("results").join(run);
            std::fs::create_dir_all(&run_dir).expect("dir");
            let result = serde_json::json!({"label": "commands", "unit": "commands/s",
                "throughput": tps, "errors": 0, "latencyMs": {"p50": 1.0, "p90": 2.0,
                "p99": tps / 100.0, "max": 5.0}});
            std::fs::write(run_dir.join("commands-postgres.json"), result.to_string())
                .expect("write");
            let pgbench = serde_json::json!({"label": "pgbench", "throughput": 400.0});
            std::fs::write(run_dir.join("pgbench.json"), pgbench.to_string()).expect("write");
        }
        let out = dir.path().join("BENCHMARKS.md");
        std::fs::write(
            &out,
            format!("# Benchmarks\n\nby hand\n\n{BEGIN}\nold\n{END}\n\nafter\n"),
        )
        .expect("write");
        run(ReportArgs {
            results: dir.path().join("results"),
            out: out.clone(),
            charts: dir.path().join("charts"),
        })
        .expect("report");
        let text = std::fs::read_to_string(&out).expect("read");
        assert!(text.starts_with("# Benchmarks\n\nby hand\n\n"), "{text}");
        assert!(text.trim_end().ends_with("after"), "{text}");
        assert!(!text.contains("\nold\n"), "{text}");
        // The median of 100, 300, 200 is 200: 0.5 × pgbench's 400.
        assert!(text.contains("200 / 400 = 0.50×"), "{text}");
        assert!(text.contains("| 3 | 200 commands/s |"), "{text}");
    }
}
