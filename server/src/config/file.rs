//! etcd's YAML configuration file (`--config-file`): the same names as the flags, with TLS
//! settings nested under `client-transport-security` and `peer-transport-security`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_yaml_ng::Value;

use super::flags::{FlagValue, Origin};
use super::ConfigError;

/// Keys inside a `*-transport-security` block and the flag each one sets, per block.
const TRANSPORT_KEYS: &[(&str, &str, &str)] = &[
    ("cert-file", "cert-file", "peer-cert-file"),
    ("key-file", "key-file", "peer-key-file"),
    (
        "client-cert-auth",
        "client-cert-auth",
        "peer-client-cert-auth",
    ),
    ("trusted-ca-file", "trusted-ca-file", "peer-trusted-ca-file"),
    ("auto-tls", "auto-tls", "peer-auto-tls"),
    ("crl-file", "client-crl-file", "peer-crl-file"),
];

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        Value::Sequence(items) => Some(
            items
                .iter()
                .filter_map(scalar)
                .collect::<Vec<_>>()
                .join(","),
        ),
        Value::Mapping(_) | Value::Tagged(_) => None,
    }
}

/// Reads the file into flag values; returns them and notices about keys it did not know.
pub fn read(
    path: &Path,
    known: &dyn Fn(&str) -> bool,
) -> Result<(BTreeMap<String, FlagValue>, Vec<String>), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::Invalid(format!("cannot read config file {}: {e}", path.display()))
    })?;
    let document: Value = serde_yaml_ng::from_str(&text).map_err(|e| {
        ConfigError::Invalid(format!("cannot parse config file {}: {e}", path.display()))
    })?;
    let Value::Mapping(entries) = document else {
        return Err(ConfigError::Invalid(format!(
            "config file {} is not a YAML mapping",
            path.display()
        )));
    };
    let mut values = BTreeMap::new();
    let mut notices = Vec::new();
    let mut set = |flag: &str, value: String| {
        values.insert(
            flag.to_string(),
            FlagValue {
                value,
                origin: Origin::ConfigFile,
            },
        );
    };
    for (key, value) in &entries {
        let Some(key) = key.as_str() else { continue };
        match (key, value) {
            ("client-transport-security" | "peer-transport-security", Value::Mapping(block)) => {
                let peer = key.starts_with("peer");
                for (inner, inner_value) in block {
                    let Some(inner) = inner.as_str() else {
                        continue;
                    };
                    let Some((_, client_flag, peer_flag)) =
                        TRANSPORT_KEYS.iter().find(|(k, _, _)| *k == inner)
                    else {
                        notices.push(format!("config file: ignoring unknown key {key}.{inner}"));
                        continue;
                    };
                    if let Some(v) = scalar(inner_value) {
                        set(if peer { peer_flag } else { client_flag }, v);
                    }
                }
            }
            (_, v) if known(key) => {
                if let Some(v) = scalar(v) {
                    set(key, v);
                }
            }
            _ => notices.push(format!("config file: ignoring unknown key {key}")),
        }
    }
    Ok((values, notices))
}
