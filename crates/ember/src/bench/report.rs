//! The results of `ember bench`: one row per model and metric with both sides, their ratio
//! (Ember / the anchor) and the goal, printed as a table and written as JSON; and the statistics
//! (median, percentiles) the rows are made of.

use serde::Serialize;

#[derive(Serialize)]
pub struct Row {
    pub model: String,
    pub metric: String,
    pub unit: &'static str,
    pub ember: Option<f64>,
    /// The same measure of the runtime Ember is compared with (llama.cpp, faster-whisper).
    pub anchor: Option<f64>,
    pub ratio: Option<f64>,
    /// The target for the ratio, e.g. `>= 0.95`; empty where there is none.
    pub goal: &'static str,
}

impl Row {
    pub fn new(
        model: &str,
        metric: String,
        unit: &'static str,
        ember: Option<f64>,
        anchor: Option<f64>,
        goal: &'static str,
    ) -> Row {
        let ratio = ember.zip(anchor).map(|(e, l)| e / l);
        Row {
            model: model.to_string(),
            metric,
            unit,
            ember,
            anchor,
            ratio,
            goal,
        }
    }
}

/// Prints the rows under a header naming the anchor.
pub fn print_table(rows: &[Row], anchor: &str) {
    let number = |v: Option<f64>, unit: &str| match v {
        Some(v) if v >= 100.0 || unit == "count" => format!("{v:.0}"),
        Some(v) if v < 10.0 && unit == "req/s" => format!("{v:.2}"),
        Some(v) if v < 1.0 => format!("{v:.3}"),
        Some(v) => format!("{v:.1}"),
        None => "-".into(),
    };
    let model_width = rows.iter().map(|r| r.model.len()).max().unwrap_or(5).max(5);
    let metric_width = rows.iter().map(|r| r.metric.len() + r.unit.len() + 3).max();
    let metric_width = metric_width.unwrap_or(6).max(6);
    let anchor_width = anchor.len().max(9);
    println!(
        "{:<model_width$}  {:<metric_width$}  {:>9}  {:>anchor_width$}  {:>6}  goal",
        "model", "metric", "Ember", anchor, "ratio"
    );
    for row in rows {
        println!(
            "{:<model_width$}  {:<metric_width$}  {:>9}  {:>anchor_width$}  {:>6}  {}",
            row.model,
            format!("{} ({})", row.metric, row.unit),
            number(row.ember, row.unit),
            number(row.anchor, row.unit),
            row.ratio.map_or("-".into(), |r| format!("{r:.2}")),
            row.goal
        );
    }
}

/// Writes a bench's results to `path` as pretty JSON and says where.
pub fn write_json(path: &std::path::Path, json: &serde_json::Value) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::write(path, serde_json::to_string_pretty(json)?)
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("results written to {}", path.display());
    Ok(())
}

pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// The nearest-rank percentile (`p` in 0..=100).
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.saturating_sub(1)).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&hundred, 50.0), Some(50.0));
        assert_eq!(percentile(&hundred, 99.0), Some(99.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
