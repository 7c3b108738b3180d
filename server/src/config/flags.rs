//! Go's `flag` package syntax, as etcd uses it, plus etcd's `ETCD_*` environment rules.
//!
//! Written by hand rather than with clap: Go takes single-dash long flags (`-name x`), treats
//! `--flag` the same, only lets booleans stand alone, stops at the first non-flag argument, and
//! etcd then fills unset flags from `ETCD_<FLAG>` and refuses variables that repeat a flag.
//! None of that maps cleanly onto clap's model.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Value,
}

/// Where a flag's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    CommandLine,
    Environment,
    ConfigFile,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagValue {
    pub value: String,
    pub origin: Origin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseOutcome {
    Values(BTreeMap<String, FlagValue>),
    Help,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    #[error("flag provided but not defined: -{0}")]
    Undefined(String),
    #[error("flag needs an argument: -{0}")]
    MissingValue(String),
    #[error("invalid boolean value {value:?} for -{name}: parse error")]
    BadBool { name: String, value: String },
    #[error("bad flag syntax: {0}")]
    BadSyntax(String),
    #[error("'{0}' is not a valid flag")]
    Positional(String),
    #[error("conflicting environment variable {0:?} is shadowed by corresponding command-line flag (either unset environment variable or disable flag)")]
    ShadowedEnv(String),
    #[error("invalid value {value:?} for {key}: {reason}")]
    BadEnv {
        key: String,
        value: String,
        reason: String,
    },
}

/// `some-flag` -> `ETCD_SOME_FLAG`.
pub fn env_key(flag: &str) -> String {
    format!("ETCD_{}", flag.to_uppercase().replace('-', "_"))
}

pub fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Parses `args` (without the program name) against `kinds`, then fills unset flags from
/// `env`. Returns the values and the warnings etcd would log about the environment.
pub fn parse(
    args: &[String],
    kinds: &dyn Fn(&str) -> Option<Kind>,
    env: &[(String, String)],
) -> Result<(ParseOutcome, Vec<String>), FlagError> {
    let mut values = BTreeMap::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            break;
        }
        let Some(body) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            return Err(FlagError::Positional(arg.clone()));
        };
        if body.is_empty() {
            return Err(FlagError::Positional(arg.clone()));
        }
        if body.starts_with('-') || body.starts_with('=') {
            return Err(FlagError::BadSyntax(arg.clone()));
        }
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        if name == "h" || name == "help" {
            return Ok((ParseOutcome::Help, Vec::new()));
        }
        let kind = kinds(name).ok_or_else(|| FlagError::Undefined(name.to_string()))?;
        let value = match (kind, inline) {
            (Kind::Bool, Some(v)) => {
                parse_bool(&v).ok_or_else(|| FlagError::BadBool {
                    name: name.to_string(),
                    value: v.clone(),
                })?;
                v
            }
            (Kind::Bool, None) => "true".to_string(),
            (Kind::Value, Some(v)) => v,
            (Kind::Value, None) => {
                let v = args
                    .get(i)
                    .ok_or_else(|| FlagError::MissingValue(name.to_string()))?;
                i += 1;
                v.clone()
            }
        };
        values.insert(
            name.to_string(),
            FlagValue {
                value,
                origin: Origin::CommandLine,
            },
        );
    }
    if let Some(extra) = args.get(i) {
        return Err(FlagError::Positional(extra.clone()));
    }
    let warnings = apply_env(&mut values, kinds, env)?;
    Ok((ParseOutcome::Values(values), warnings))
}

fn apply_env(
    values: &mut BTreeMap<String, FlagValue>,
    kinds: &dyn Fn(&str) -> Option<Kind>,
    env: &[(String, String)],
) -> Result<Vec<String>, FlagError> {
    let mut warnings = Vec::new();
    for (key, value) in env {
        let Some(rest) = key.strip_prefix("ETCD_") else {
            continue;
        };
        let flag = rest.to_lowercase().replace('_', "-");
        if values.contains_key(&flag) {
            return Err(FlagError::ShadowedEnv(key.clone()));
        }
        let Some(kind) = kinds(&flag) else {
            warnings.push(format!("unrecognized environment variable {key}={value}"));
            continue;
        };
        if value.is_empty() {
            continue;
        }
        if kind == Kind::Bool && parse_bool(value).is_none() {
            return Err(FlagError::BadEnv {
                key: key.clone(),
                value: value.clone(),
                reason: "parse error".into(),
            });
        }
        values.insert(
            flag,
            FlagValue {
                value: value.clone(),
                origin: Origin::Environment,
            },
        );
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(name: &str) -> Option<Kind> {
        match name {
            "name" | "data-dir" => Some(Kind::Value),
            "auto-tls" => Some(Kind::Bool),
            _ => None,
        }
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn values(outcome: ParseOutcome) -> BTreeMap<String, FlagValue> {
        match outcome {
            ParseOutcome::Values(v) => v,
            ParseOutcome::Help => panic!("unexpected help"),
        }
    }

    #[test]
    fn go_syntax_forms() {
        let (out, _) = parse(
            &args(&["-name", "a", "--data-dir=/x", "--auto-tls"]),
            &kinds,
            &[],
        )
        .expect("parses");
        let v = values(out);
        assert_eq!(v["name"].value, "a");
        assert_eq!(v["data-dir"].value, "/x");
        assert_eq!(v["auto-tls"].value, "true");
    }

    #[test]
    fn errors_as_go_reports_them() {
        let err = parse(&args(&["--nope"]), &kinds, &[]).expect_err("undefined");
        assert_eq!(err.to_string(), "flag provided but not defined: -nope");
        let err = parse(&args(&["--name"]), &kinds, &[]).expect_err("missing");
        assert_eq!(err.to_string(), "flag needs an argument: -name");
        let err = parse(&args(&["stray"]), &kinds, &[]).expect_err("positional");
        assert_eq!(err.to_string(), "'stray' is not a valid flag");
        let err = parse(&args(&["--auto-tls=maybe"]), &kinds, &[]).expect_err("bool");
        assert!(err.to_string().contains("invalid boolean value"));
    }

    #[test]
    fn environment_rules() {
        let env = vec![
            ("ETCD_DATA_DIR".to_string(), "/env".to_string()),
            ("ETCD_UNKNOWN_THING".to_string(), "1".to_string()),
        ];
        let (out, warnings) = parse(&args(&["--name", "n"]), &kinds, &env).expect("parses");
        let v = values(out);
        assert_eq!(v["data-dir"].value, "/env");
        assert_eq!(v["data-dir"].origin, Origin::Environment);
        assert_eq!(warnings.len(), 1);
        let shadow = vec![("ETCD_NAME".to_string(), "x".to_string())];
        let err = parse(&args(&["--name", "n"]), &kinds, &shadow).expect_err("shadowed");
        assert!(matches!(err, FlagError::ShadowedEnv(_)));
    }
}
