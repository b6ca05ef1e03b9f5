//! Loading RocketMQ-style properties files and `key=value` overrides.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};

/// Reads a properties file (`-c broker.conf`), then applies `--set key=value`
/// overrides on top.
pub fn load(file: Option<&Path>, overrides: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut props = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            apogee_protocol::java_properties::parse(&text)
        }
        None => BTreeMap::new(),
    };
    for kv in overrides {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--set expects key=value, got '{kv}'");
        };
        if k.trim().is_empty() {
            bail!("--set expects key=value, got an empty key in '{kv}'");
        }
        props.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(props)
}

/// Prints the effective configuration in properties format.
pub fn print(props: &BTreeMap<String, String>) {
    print!(
        "{}",
        apogee_protocol::java_properties::to_string(
            props.iter().map(|(k, v)| (k.as_str(), v.as_str()))
        )
    );
}
