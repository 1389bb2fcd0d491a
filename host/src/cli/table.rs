//! Aligned text tables: the one way every command (status, dlq, plugins, bench) prints a
//! listing, so their columns look alike.

/// Render rows as an aligned text table (first row is the header).
pub fn table(rows: &[Vec<String>]) -> String {
    // Cells hold strings from plugins and producers (event types, reasons, errors): control
    // characters are escaped so none forges a row or reaches the terminal as an escape code.
    let rows: Vec<Vec<String>> =
        rows.iter().map(|r| r.iter().map(|c| ferry::redact::printable(c).into_owned()).collect()).collect();
    let rows = rows.as_slice();
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().enumerate().map(|(i, cell)| format!("{cell:<w$}", w = widths[i])).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A header row from column names.
pub fn header(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_in_cells_are_escaped() {
        let out = super::table(&[vec!["a\nFORGED\x1b[2J".into(), "b".into()]]);
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(!out.trim_end().chars().any(char::is_control), "{out:?}");
    }

    use super::*;

    #[test]
    fn columns_are_aligned_to_the_widest_cell_and_lines_not_padded() {
        let rows = vec![header(&["A", "B"]), vec!["long cell".into(), "x".into()], vec!["y".into(), String::new()]];
        assert_eq!(table(&rows), "A          B\nlong cell  x\ny\n");
    }
}
