//! The benchmark's report: each figure as a [`Row`], printed as it is measured, then as a
//! table and as JSON; and the helpers that word a figure's note.

use serde::Serialize;

use super::cost;

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What was measured.
    pub name: String,
    /// The figure.
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// For throughput rows: the figure as a ratio to the plain redis-rs consumer's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_to_plain: Option<f64>,
    /// Context: ratio to the ceiling, target, notes.
    pub note: String,
}

/// The figures measured so far.
#[derive(Default)]
pub(super) struct Report {
    pub(super) rows: Vec<Row>,
}

impl Report {
    pub(super) fn add(&mut self, name: impl Into<String>, value: f64, unit: &str, note: impl Into<String>) {
        self.push(Row { name: name.into(), value, unit: unit.into(), ratio_to_plain: None, note: note.into() });
    }

    /// A throughput row, with its ratio to the plain consumer's `plain` events/s.
    pub(super) fn throughput(
        &mut self,
        name: impl Into<String>,
        value: f64,
        unit: &str,
        plain: f64,
        note: impl Into<String>,
    ) {
        let ratio = (plain > 0.0).then(|| value / plain);
        self.push(Row { name: name.into(), value, unit: unit.into(), ratio_to_plain: ratio, note: note.into() });
    }

    /// The cost rows of one measured run: host and Redis CPU per event, then each Redis
    /// command's share.
    pub(super) fn cost(&mut self, label: &str, cost: &cost::Cost) {
        self.add(format!("cost: {label}: host CPU"), cost.host_us, "us/event", "this process, every thread");
        self.add(format!("cost: {label}: Redis CPU"), cost.redis_us, "us/event", "redis-server user+sys");
        for (command, calls, us, per_call) in &cost.commands {
            self.add(
                format!("cost: {label}: redis {command}"),
                *us,
                "us/event",
                format!("{calls:.3} calls/event, {per_call:.1} us/call"),
            );
        }
    }

    fn push(&mut self, row: Row) {
        let ratio = row.ratio_to_plain.map_or(String::new(), |r| format!("{r:.2}x plain"));
        eprintln!("  {:<52} {:>12.1} {:<12} {:<12} {}", row.name, row.value, row.unit, ratio, row.note);
        self.rows.push(row);
    }
}

/// The report as a table, for the terminal.
pub(super) fn table(rows: &[Row]) -> String {
    let mut out = vec![crate::cli::table::header(&["MEASURE", "VALUE", "UNIT", "VS PLAIN", "NOTE"])];
    for r in rows {
        let ratio = r.ratio_to_plain.map_or(String::new(), |x| format!("{x:.2}x"));
        out.push(vec![r.name.clone(), format!("{:.1}", r.value), r.unit.clone(), ratio, r.note.clone()]);
    }
    crate::cli::table::table(&out)
}

/// `"0.85x native; "`, or nothing when the native row was not run (`--only rust`).
pub(super) fn vs_native(events_per_sec: f64, native: f64) -> String {
    if native.is_finite() && native > 0.0 { format!("{:.2}x native; ", events_per_sec / native) } else { String::new() }
}

/// The `p` quantile (0..=1) of sorted µs `samples`, in ms; 0 when there are none.
pub(super) fn percentile_ms(samples: &[u64], p: f64) -> f64 {
    let i = ((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1));
    samples.get(i).copied().unwrap_or(0) as f64 / 1000.0
}

/// `bytes` for people: `100 B`, `10 KB`, `1 MB`.
pub(super) fn human_bytes(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{} MB", b >> 20),
        b if b >= 1 << 10 => format!("{} KB", b >> 10),
        b => format!("{b} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::vs_native;

    #[test]
    fn without_a_native_row_there_is_no_ratio_to_it() {
        assert_eq!(vs_native(100.0, f64::NAN), "");
        assert_eq!(vs_native(85.0, 100.0), "0.85x native; ");
    }
}
