//! Plain text tables for the terminal: columns padded to their widest cell, two spaces apart.

/// Renders `rows` under `headers`; a cell longer than `cell_chars_max` characters is cut with
/// an ellipsis.
pub fn render(headers: &[&str], rows: &[Vec<String>], cell_chars_max: usize) -> String {
    let cut = |text: &str| -> String {
        if text.chars().count() > cell_chars_max {
            let mut short: String = text
                .chars()
                .take(cell_chars_max.saturating_sub(1))
                .collect();
            short.push('…');
            short
        } else {
            text.to_owned()
        }
    };
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| cut(cell)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(i) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count());
                out.push_str(cell);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = line(headers.to_vec());
    for row in &rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// `key  value` lines for one JSON object, in its order; nested values as compact JSON.
pub fn fields(value: &serde_json::Value) -> String {
    let Some(object) = value.as_object() else {
        return value.to_string();
    };
    let rows: Vec<Vec<String>> = object
        .iter()
        .map(|(key, value)| {
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "-".to_owned(),
                serde_json::Value::Array(items)
                    if items.iter().all(|i| !i.is_array() && !i.is_object()) =>
                {
                    items
                        .iter()
                        .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
                other => other.to_string(),
            };
            vec![key.clone(), text]
        })
        .collect();
    let width = rows.iter().map(|r| r[0].chars().count()).max().unwrap_or(0);
    rows.iter()
        .map(|r| format!("{:width$}  {}", r[0], r[1]))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_long_cells_are_cut() {
        let rows = vec![
            vec!["1".to_owned(), "startup".to_owned()],
            vec!["10".to_owned(), "a-very-long-type".to_owned()],
        ];
        let text = render(&["SEQ", "TYPE"], &rows, 8);
        assert_eq!(text, "SEQ  TYPE\n1    startup\n10   a-very-…");
    }

    #[test]
    fn objects_render_as_field_lines() {
        let value = serde_json::json!({"id": "k1", "permissions": ["write", "read"], "voters": [1, 3],
            "revoked": false, "deactivated_at": null});
        assert_eq!(
            fields(&value),
            "id              k1\npermissions     write, read\nvoters          1, 3\nrevoked         false\ndeactivated_at  -"
        );
    }
}
