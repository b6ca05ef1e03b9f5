//! How `apogee admin` prints: aligned tables and key/value lists for people,
//! JSON for scripts, times in local time, and the time formats mqadmin accepts.

use anyhow::{anyhow, bail};
use apogee_client::MessageExt;
use chrono::{Local, LocalResult, NaiveDateTime, TimeZone};
use serde_json::{json, Value};

/// Rows printed under a header, each column as wide as its widest cell.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, no trailing spaces.
    pub fn render(&self) -> String {
        let cols = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(cols) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let mut line = |cells: &mut dyn Iterator<Item = &str>| {
            let mut s = String::new();
            for (i, cell) in cells.enumerate().take(cols) {
                if i > 0 {
                    s.push_str("  ");
                }
                s.push_str(cell);
                if i + 1 < cols {
                    let pad = widths[i].saturating_sub(cell.chars().count());
                    s.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(s.trim_end());
            out.push('\n');
        };
        line(&mut self.headers.iter().copied());
        for row in &self.rows {
            line(&mut row.iter().map(String::as_str));
        }
        out
    }

    pub fn print(&self) {
        out!("{}", self.render());
    }
}

/// `key  value` lines with the keys aligned.
pub fn print_kv<'a>(pairs: impl IntoIterator<Item = (&'a str, String)>) {
    let pairs: Vec<(&str, String)> = pairs.into_iter().collect();
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    for (k, v) in pairs {
        outln!("{k:<width$}  {v}");
    }
}

/// Pretty JSON on stdout.
pub fn print_json(v: &Value) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => outln!("{s}"),
        Err(_) => outln!("{v}"),
    }
}

/// Milliseconds since the epoch as local time, `-` for 0 or negative.
pub fn fmt_ms(ms: i64) -> String {
    if ms <= 0 {
        return "-".to_string();
    }
    match Local.timestamp_millis_opt(ms) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => {
            t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
        }
        LocalResult::None => ms.to_string(),
    }
}

pub fn now_ms() -> i64 {
    Local::now().timestamp_millis()
}

/// A point in time as mqadmin takes it: `now`, milliseconds since the epoch,
/// or local time as `yyyy-MM-dd#HH:mm:ss:SSS` (also without the
/// milliseconds, and with a space or `T` instead of `#`).
pub fn parse_time(s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("now") {
        return Ok(now_ms());
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<i64>()
            .map_err(|_| anyhow!("timestamp {s} is out of range"));
    }
    let normalized = s.replacen(['#', 'T', ' '], "#", 1);
    const FORMATS: [&str; 3] = [
        "%Y-%m-%d#%H:%M:%S:%3f",
        "%Y-%m-%d#%H:%M:%S%.3f",
        "%Y-%m-%d#%H:%M:%S",
    ];
    for f in FORMATS {
        if let Ok(naive) = NaiveDateTime::parse_from_str(&normalized, f) {
            return match Local.from_local_datetime(&naive) {
                LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Ok(t.timestamp_millis()),
                LocalResult::None => bail!("{s} does not exist in the local time zone"),
            };
        }
    }
    bail!(
        "cannot read time {s:?}: use now, milliseconds since the epoch, or yyyy-MM-dd#HH:mm:ss:SSS"
    )
}

/// The body as text when it is UTF-8, else as hex.
pub fn body_text(body: &[u8]) -> String {
    match std::str::from_utf8(body) {
        Ok(s) => s.to_string(),
        Err(_) => body.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

/// A message's fields as JSON.
pub fn message_json(m: &MessageExt) -> Value {
    json!({
        "topic": m.topic,
        "msg_id": m.msg_id,
        "offset_msg_id": m.offset_msg_id,
        "tags": m.tags(),
        "keys": m.keys(),
        "broker_name": m.broker_name,
        "queue_id": m.queue_id,
        "queue_offset": m.queue_offset,
        "commit_log_offset": m.commit_log_offset,
        "reconsume_times": m.reconsume_times,
        "born_timestamp": m.born_timestamp,
        "store_timestamp": m.store_timestamp,
        "born_host": m.born_host.to_string(),
        "store_host": m.store_host.to_string(),
        "sys_flag": m.sys_flag,
        "body_crc": m.body_crc,
        "store_size": m.store_size,
        "properties": m.properties,
        "body": body_text(&m.body),
    })
}

/// A message the way mqadmin prints one, aligned key/value lines.
pub fn print_message(m: &MessageExt) {
    let mut props: Vec<(&String, &String)> = m.properties.iter().collect();
    props.sort();
    let props = props
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ");
    print_kv([
        ("Topic:", m.topic.clone()),
        ("Msg ID:", m.msg_id.clone()),
        ("Offset Msg ID:", m.offset_msg_id.clone()),
        ("Tags:", m.tags().unwrap_or("").to_string()),
        ("Keys:", m.keys().join(" ")),
        ("Broker Name:", m.broker_name.clone()),
        ("Queue ID:", m.queue_id.to_string()),
        ("Queue Offset:", m.queue_offset.to_string()),
        ("CommitLog Offset:", m.commit_log_offset.to_string()),
        ("Reconsume Times:", m.reconsume_times.to_string()),
        ("Born Timestamp:", fmt_ms(m.born_timestamp)),
        ("Store Timestamp:", fmt_ms(m.store_timestamp)),
        ("Born Host:", m.born_host.to_string()),
        ("Store Host:", m.store_host.to_string()),
        ("System Flag:", m.sys_flag.to_string()),
        ("Properties:", format!("{{{props}}}")),
        ("Body Size:", m.body.len().to_string()),
        ("Body:", body_text(&m.body)),
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_trims_the_last() {
        let mut t = Table::new(&["A", "LONG_HEADER", "C"]);
        t.row(vec!["xxxx".into(), "y".into(), "z".into()]);
        t.row(vec!["1".into(), "2".into(), "".into()]);
        assert_eq!(
            t.render(),
            "A     LONG_HEADER  C\nxxxx  y            z\n1     2\n"
        );
    }

    #[test]
    fn parses_every_time_form() {
        assert_eq!(parse_time("1700000000123").unwrap_or(0), 1_700_000_000_123);
        let a = parse_time("2024-03-05#10:20:30:456").unwrap_or(0);
        let b = parse_time("2024-03-05 10:20:30.456").unwrap_or(1);
        let c = parse_time("2024-03-05T10:20:30").unwrap_or(2);
        assert_eq!(a, b);
        assert_eq!(a - 456, c);
        assert_eq!(fmt_ms(a), "2024-03-05 10:20:30.456");
        let now = now_ms();
        assert!((parse_time("now").unwrap_or(0) - now).abs() < 60_000);
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2024-13-05#10:20:30:456").is_err());
        assert!(parse_time("99999999999999999999999").is_err());
    }
}
