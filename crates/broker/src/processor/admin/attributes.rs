//! Topic attributes as UPDATE_AND_CREATE_TOPIC carries them: parsing the
//! `+k=v,+k2=v2,-k3` modification string and applying it to a topic's
//! current attributes with Java's rules (known keys only, enum/range values
//! checked, no deletion on create, unchangeable keys fixed after create).

use std::collections::BTreeMap;

/// A known topic attribute (Java `TopicAttributes.ALL`).
struct Attribute {
    name: &'static str,
    /// May be changed after the topic was created.
    changeable: bool,
    kind: Kind,
}

enum Kind {
    Enum(&'static [&'static str]),
    LongRange(i64, i64),
}

const ALL: &[Attribute] = &[
    Attribute {
        name: "queue.type",
        changeable: false,
        kind: Kind::Enum(&["BatchCQ", "SimpleCQ"]),
    },
    Attribute {
        name: "cleanup.policy",
        changeable: false,
        kind: Kind::Enum(&["DELETE", "COMPACTION"]),
    },
    Attribute {
        name: "message.type",
        changeable: true,
        kind: Kind::Enum(&[
            "UNSPECIFIED",
            "NORMAL",
            "FIFO",
            "DELAY",
            "TRANSACTION",
            "MIXED",
        ]),
    },
    Attribute {
        name: "reserve.time",
        changeable: true,
        kind: Kind::LongRange(-1, i64::MAX),
    },
];

fn find(name: &str) -> Option<&'static Attribute> {
    ALL.iter().find(|a| a.name == name)
}

/// One requested change: `Some(value)` adds/updates, `None` deletes.
pub type Modification = BTreeMap<String, Option<String>>;

/// Parses `+k=v,+k2=v2,-k3` (Java `AttributeParser.parseToMap`). Blank
/// input is no modification. The error text says which entry was wrong.
pub fn parse(text: Option<&str>) -> Result<Modification, String> {
    let mut out = Modification::new();
    let Some(text) = text.filter(|t| !t.trim().is_empty()) else {
        return Ok(out);
    };
    for kv in text.split(',') {
        let kv = kv.trim();
        if let Some(rest) = kv.strip_prefix('+') {
            let (k, v) = rest
                .split_once('=')
                .ok_or_else(|| format!("add/alter attribute format is wrong: {kv}"))?;
            if k.is_empty() || v.contains('=') {
                return Err(format!("add/alter attribute format is wrong: {kv}"));
            }
            insert_once(&mut out, k, Some(v.to_owned()))?;
        } else if let Some(k) = kv.strip_prefix('-') {
            if k.is_empty() || k.contains('=') {
                return Err(format!("delete attribute format is wrong: {kv}"));
            }
            insert_once(&mut out, k, None)?;
        } else {
            return Err(format!(
                "attribute format is wrong: {kv:?} (expected +key=value or -key)"
            ));
        }
    }
    Ok(out)
}

fn insert_once(m: &mut Modification, k: &str, v: Option<String>) -> Result<(), String> {
    if m.insert(k.to_owned(), v).is_some() {
        return Err(format!("alter duplication key. key: {k}"));
    }
    Ok(())
}

/// Applies `modification` to `current` (Java `AttributeUtil.alterCurrentAttributes`).
/// `create` is true when the topic does not exist yet.
pub fn alter(
    create: bool,
    current: &BTreeMap<String, String>,
    modification: &Modification,
) -> Result<BTreeMap<String, String>, String> {
    let mut out = current.clone();
    for (key, value) in modification {
        let attr = find(key).ok_or_else(|| {
            let known: Vec<&str> = ALL.iter().map(|a| a.name).collect();
            format!("unsupported key: {key} (known: {})", known.join(", "))
        })?;
        match value {
            None if create => {
                return Err(format!(
                    "only add attribute is supported while creating topic. key: {key}"
                ))
            }
            None => {
                if !current.contains_key(key) {
                    return Err(format!("attempt to delete a nonexistent key: {key}"));
                }
                if !attr.changeable {
                    return Err(format!(
                        "attempt to update an unchangeable attribute. key: {key}"
                    ));
                }
                out.remove(key);
            }
            Some(v) => {
                if !create && !attr.changeable {
                    return Err(format!(
                        "attempt to update an unchangeable attribute. key: {key}"
                    ));
                }
                verify(attr, v)?;
                out.insert(key.clone(), v.clone());
            }
        }
    }
    Ok(out)
}

fn verify(attr: &Attribute, value: &str) -> Result<(), String> {
    match attr.kind {
        Kind::Enum(values) => {
            if values.contains(&value) {
                Ok(())
            } else {
                Err(format!(
                    "value is not in set: {value} (key {}, allowed: {})",
                    attr.name,
                    values.join(", ")
                ))
            }
        }
        Kind::LongRange(min, max) => match value.trim().parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(()),
            Ok(n) => Err(format!(
                "value is not in range({min}, {max}): {n} (key {})",
                attr.name
            )),
            Err(_) => Err(format!(
                "value is not a number: {value} (key {})",
                attr.name
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_adds_and_deletes() {
        let m = parse(Some("+message.type=FIFO,-reserve.time")).unwrap();
        assert_eq!(m.get("message.type"), Some(&Some("FIFO".to_owned())));
        assert_eq!(m.get("reserve.time"), Some(&None));
        assert!(parse(None).unwrap().is_empty());
        assert!(parse(Some("  ")).unwrap().is_empty());
    }

    #[test]
    fn rejects_malformed_entries() {
        assert!(parse(Some("message.type=FIFO"))
            .unwrap_err()
            .contains("format"));
        assert!(parse(Some("+message.type")).unwrap_err().contains("format"));
        assert!(parse(Some("-a=b")).unwrap_err().contains("delete"));
        assert!(parse(Some("+a=1,+a=2"))
            .unwrap_err()
            .contains("duplication"));
    }

    #[test]
    fn create_accepts_known_values_only() {
        let empty = BTreeMap::new();
        let m = parse(Some("+message.type=FIFO,+queue.type=SimpleCQ")).unwrap();
        let out = alter(true, &empty, &m).unwrap();
        assert_eq!(out.get("message.type").map(String::as_str), Some("FIFO"));
        assert_eq!(out.len(), 2);

        let bad = parse(Some("+message.type=WEIRD")).unwrap();
        assert!(alter(true, &empty, &bad)
            .unwrap_err()
            .contains("not in set"));
        let unknown = parse(Some("+colour=red")).unwrap();
        assert!(alter(true, &empty, &unknown)
            .unwrap_err()
            .contains("unsupported key"));
        let del = parse(Some("-message.type")).unwrap();
        assert!(alter(true, &empty, &del).unwrap_err().contains("only add"));
    }

    #[test]
    fn update_respects_changeability() {
        let current: BTreeMap<String, String> =
            [("queue.type".to_owned(), "SimpleCQ".to_owned())].into();
        let m = parse(Some("+queue.type=BatchCQ")).unwrap();
        assert!(alter(false, &current, &m)
            .unwrap_err()
            .contains("unchangeable"));
        let m = parse(Some("+reserve.time=100")).unwrap();
        let out = alter(false, &current, &m).unwrap();
        assert_eq!(out.get("reserve.time").map(String::as_str), Some("100"));
        let m = parse(Some("-reserve.time")).unwrap();
        assert!(alter(false, &current, &m)
            .unwrap_err()
            .contains("nonexistent"));
        let m = parse(Some("+reserve.time=-5")).unwrap();
        assert!(alter(false, &current, &m).unwrap_err().contains("range"));
    }
}
