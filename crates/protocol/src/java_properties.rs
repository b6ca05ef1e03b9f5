//! Java `.properties` text: the format of `broker.conf` / `namesrv.conf`
//! and of the GET_BROKER_CONFIG / UPDATE_BROKER_CONFIG bodies.

use std::collections::BTreeMap;

/// Parses properties text the way `java.util.Properties.load` reads it:
/// `key=value`, `key: value` or `key value`; `#`/`!` comment lines;
/// a trailing backslash continues a line; `\t \n \r \f \uXXXX` escapes.
/// Later keys override earlier ones. Never fails: a line without a
/// separator is a key with an empty value, as in Java.
pub fn parse(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut logical = String::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if logical.is_empty() && (trimmed.is_empty() || trimmed.starts_with(['#', '!'])) {
            continue;
        }
        logical.push_str(trimmed);
        if ends_with_odd_backslashes(&logical) {
            logical.pop();
            if lines.clone().next().is_some() {
                continue;
            }
        }
        let (k, v) = split_key_value(&logical);
        out.insert(unescape(k), unescape(v));
        logical.clear();
    }
    out
}

/// Writes `key=value` lines, escaping what Java's `Properties.store` escapes
/// so that [`parse`] (and Java) read the same map back.
pub fn to_string<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut s = String::new();
    for (k, v) in entries {
        escape_into(&mut s, k, true);
        s.push('=');
        escape_into(&mut s, v, false);
        s.push('\n');
    }
    s
}

fn ends_with_odd_backslashes(s: &str) -> bool {
    s.chars().rev().take_while(|&c| c == '\\').count() % 2 == 1
}

fn split_key_value(line: &str) -> (&str, &str) {
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '=' | ':' | ' ' | '\t' | '\x0c' => {
                let key = &line[..i];
                let mut rest = line[i..].trim_start_matches([' ', '\t', '\x0c']);
                if c.is_whitespace() || c == '\x0c' {
                    if let Some(r) = rest.strip_prefix(['=', ':']) {
                        rest = r;
                    }
                } else {
                    rest = &rest[1..];
                }
                return (key, rest.trim_start_matches([' ', '\t', '\x0c']));
            }
            _ => {}
        }
    }
    (line, "")
}

fn unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    // UTF-16 units from \u escapes, joined so surrogate pairs decode.
    let mut pending: Vec<u16> = Vec::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        let is_u_escape = c == '\\' && chars.clone().next() == Some('u');
        if !is_u_escape && !pending.is_empty() {
            out.extend(char::decode_utf16(pending.drain(..)).map(|r| r.unwrap_or('\u{FFFD}')));
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\x0c'),
            Some('u') => {
                let hex: String = chars.clone().take(4).collect();
                match u16::from_str_radix(&hex, 16) {
                    Ok(unit) if hex.len() == 4 => {
                        for _ in 0..4 {
                            chars.next();
                        }
                        pending.push(unit);
                    }
                    // Java throws on a malformed \u; a config reader should rather keep the text.
                    _ => {
                        out.extend(
                            char::decode_utf16(pending.drain(..)).map(|r| r.unwrap_or('\u{FFFD}')),
                        );
                        out.push('u');
                    }
                }
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out.extend(char::decode_utf16(pending.drain(..)).map(|r| r.unwrap_or('\u{FFFD}')));
    out
}

fn escape_into(out: &mut String, s: &str, is_key: bool) {
    for (i, c) in s.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\x0c' => out.push_str("\\f"),
            '=' | ':' | '#' | '!' => {
                out.push('\\');
                out.push(c);
            }
            ' ' if is_key || i == 0 => out.push_str("\\ "),
            // Java reads properties bytes as ISO-8859-1, so anything else
            // travels as UTF-16 \u escapes.
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{:04X}", u));
                }
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_a_broker_conf() {
        let text = "# comment\n! also\nbrokerClusterName = DefaultCluster\nbrokerName=broker-a\nbrokerId:0\n\
                    deleteWhen 04\nnamesrvAddr=a:9876;\\\n   b:9876\nempty\n";
        let m = parse(text);
        assert_eq!(m["brokerClusterName"], "DefaultCluster");
        assert_eq!(m["brokerName"], "broker-a");
        assert_eq!(m["brokerId"], "0");
        assert_eq!(m["deleteWhen"], "04");
        assert_eq!(m["namesrvAddr"], "a:9876;b:9876");
        assert_eq!(m["empty"], "");
        assert_eq!(m.len(), 6);
    }

    #[test]
    fn escapes_and_unicode() {
        let m = parse("a\\=b=c\\td\nx=\\u0041\\u00e9\nbad=\\u0041\\uZZ\n");
        assert_eq!(m["a=b"], "c\td");
        assert_eq!(m["x"], "Aé");
        assert_eq!(m["bad"], "AuZZ");
    }

    proptest! {
        #[test]
        fn round_trips(map in proptest::collection::btree_map("[ -~\\PC]{1,12}", "[ -~\\PC]{0,20}", 0..8)) {
            let text = to_string(map.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            prop_assert_eq!(parse(&text), map);
        }
    }
}
