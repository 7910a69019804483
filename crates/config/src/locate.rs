//! Finds the line of a key path (`zones[1].upstreams[0]`) in block-style YAML text, so
//! validation errors can name it. A heuristic over indentation: good for the block YAML config
//! files are written in; when it cannot go deeper it returns the deepest line it found.

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        for idx in rest.split('[') {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                out.push(Segment::Index(i));
            }
        }
    }
    out
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_content(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#') && t != "---"
}

/// 1-based line of `path`, or of its deepest locatable parent.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    // Search window: lines [start, end) whose indentation is at least `min_indent`.
    let mut start = 0;
    let mut min_indent = 0;
    let mut found: Option<usize> = None;
    for seg in segments(path) {
        let mut hit = None;
        match &seg {
            Segment::Key(k) => {
                for (i, line) in lines.iter().enumerate().skip(start) {
                    if !is_content(line) {
                        continue;
                    }
                    let ind = indent(line);
                    // (A list item's line itself is less indented than its keys.)
                    if ind < min_indent && found.is_some() && i != start {
                        break;
                    }
                    let body = line.trim_start().trim_start_matches("- ");
                    let body_indent = line.len() - body.len();
                    let matches = [format!("{k}:"), format!("\"{k}\":"), format!("'{k}':")]
                        .iter()
                        .any(|p| body.starts_with(p.as_str()));
                    if matches {
                        hit = Some((i, body_indent + 1));
                        break;
                    }
                }
            }
            Segment::Index(n) => {
                let mut seen = 0;
                let mut item_indent = None;
                for (i, line) in lines.iter().enumerate().skip(start) {
                    if !is_content(line) {
                        continue;
                    }
                    let ind = indent(line);
                    if ind < min_indent {
                        break;
                    }
                    let t = line.trim_start();
                    if t.starts_with("- ") || t == "-" {
                        let ii = *item_indent.get_or_insert(ind);
                        if ind == ii {
                            if seen == *n {
                                hit = Some((i, ind + 1));
                                break;
                            }
                            seen += 1;
                        }
                    }
                }
            }
        }
        let is_key = matches!(seg, Segment::Key(_));
        match hit {
            Some((line, child_indent)) => {
                found = Some(line);
                // Children of a key come on the lines after it, indented deeper; a list item's
                // first key sits on the same line as its dash.
                start = if is_key { line + 1 } else { line };
                min_indent = child_indent;
            }
            None => break,
        }
    }
    found.map(|l| l + 1)
}

#[cfg(test)]
mod tests {
    use super::line_of;

    const TEXT: &str = "listen: [\"127.0.0.1:5353\"]
cache:
  max_bytes: 5
  min_ttl_secs: 5
zones:
  - name: cluster.local
    upstreams: [\"10.96.0.11:53\"]
  # a comment
  - name: \".\"
    upstreams:
      - 1.1.1.1
      - bogus
    transport: udp
admin:
  listen: x
";

    #[test]
    fn finds_nested_keys_and_items() {
        assert_eq!(line_of(TEXT, "listen"), Some(1));
        assert_eq!(line_of(TEXT, "cache.max_bytes"), Some(3));
        assert_eq!(line_of(TEXT, "cache.min_ttl_secs"), Some(4));
        assert_eq!(line_of(TEXT, "zones[0].name"), Some(6));
        assert_eq!(line_of(TEXT, "zones[0].upstreams"), Some(7));
        assert_eq!(line_of(TEXT, "zones[1].name"), Some(9));
        assert_eq!(line_of(TEXT, "zones[1].upstreams[1]"), Some(12));
        assert_eq!(line_of(TEXT, "zones[1].transport"), Some(13));
        assert_eq!(line_of(TEXT, "admin.listen"), Some(15));
        // Flow lists: the key's line.
        assert_eq!(line_of(TEXT, "zones[0].upstreams[0]"), Some(7));
        assert_eq!(line_of(TEXT, "nope"), None);
    }
}
