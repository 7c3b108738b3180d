//! Options shared by every load mode, and the per-mode ones.

use std::time::Duration;

use clap::{Args, Parser, ValueEnum};

/// Options every load mode takes. Each run stops at `--total` operations or after
/// `--duration`, whichever comes first, and each request has its own deadline.
#[derive(Args, Clone, Debug)]
pub struct LoadOpts {
    /// Client endpoints (host:port), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    /// gRPC connections (one HTTP/2 connection each); clients are spread over them.
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// Concurrent clients, each with at most one request in flight.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Operations to issue at most (for `watch`: puts).
    #[arg(long, default_value_t = 10_000)]
    pub total: u64,
    /// Key size in bytes (keys are the prefix and a zero-padded number).
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub val_size: usize,
    /// Number of distinct keys operations pick from.
    #[arg(long, default_value_t = 100_000)]
    pub key_space_size: u64,
    /// Pick keys 0, 1, 2, ... in order (modulo the key space) instead of at random.
    #[arg(long)]
    pub sequential_keys: bool,
    /// Prefix of every key.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Operations per second at most, over all clients (0 = no limit).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Stop issuing operations after this long (e.g. 30s, 500ms, 2m).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Deadline of each request.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Log in as this user (servers with auth enabled): every connection authenticates once
    /// and sends its token with each request.
    #[arg(long)]
    pub user: Option<String>,
    /// The password of `--user`.
    #[arg(long, default_value = "")]
    pub password: String,
}

#[derive(Parser)]
struct DefaultsOnly {
    #[command(flatten)]
    load: LoadOpts,
}

impl LoadOpts {
    /// The command line defaults, aimed at `endpoints`.
    pub fn defaults(endpoints: Vec<String>) -> LoadOpts {
        let mut opts = DefaultsOnly::parse_from(["keelson-bench"]).load;
        opts.endpoints = endpoints;
        opts
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.endpoints.is_empty() {
            return Err("--endpoints is empty".into());
        }
        if self.conns == 0 || self.clients == 0 {
            return Err("--conns and --clients must be at least 1".into());
        }
        if self.key_space_size == 0 {
            return Err("--key-space-size must be at least 1".into());
        }
        if self.rate < 0.0 || !self.rate.is_finite() {
            return Err("--rate must be a non-negative number".into());
        }
        if self.duration.is_zero() {
            return Err("--duration must be positive".into());
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    /// Linearizable (the default of etcd).
    L,
    /// Serializable (served from the local state).
    S,
}

#[derive(Args, Clone, Debug)]
pub struct RangeArgs {
    /// l = linearizable, s = serializable.
    #[arg(long, value_enum, default_value = "l")]
    pub consistency: Consistency,
    /// Each operation LISTs one 1000-key prefix (keys n*1000 .. n*1000+999 of the key space)
    /// instead of reading one key.
    #[arg(long)]
    pub list: bool,
    /// Limit of each LIST (0 = none), as kube-apiserver pages do.
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
}

#[derive(Args, Clone, Debug)]
pub struct TxnPutArgs {
    /// Puts per transaction (distinct keys).
    #[arg(long, default_value_t = 1)]
    pub txn_ops: usize,
}

#[derive(Args, Clone, Debug)]
pub struct CasArgs {
    /// Give up on one update after this many conflicts (counted as an error).
    #[arg(long, default_value_t = 100)]
    pub max_retries: u32,
}

#[derive(Args, Clone, Debug)]
pub struct WatchArgs {
    /// Watchers, all on the key prefix (`--prefix`, or every key when it is empty).
    #[arg(long, default_value_t = 100)]
    pub watchers: usize,
    /// Watch streams the watchers are spread over (spread over `--conns` connections).
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// After the last put, how long to wait for events still on their way.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

#[derive(Args, Clone, Debug)]
pub struct LeaseArgs {
    /// TTL of the lease each client keeps alive, in seconds.
    #[arg(long, default_value_t = 60)]
    pub ttl: i64,
}

#[derive(Args, Clone, Debug)]
pub struct LoadKeysArgs {
    /// Puts per transaction (etcd allows 128 by default).
    #[arg(long, default_value_t = 128)]
    pub txn_ops: usize,
}

/// `1.5s`, `250ms`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {text:?} (try 10s, 500ms, 2m)"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("not a duration: {text:?}"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn defaults_parse() {
        let o = LoadOpts::defaults(vec!["127.0.0.1:1".into()]);
        assert_eq!(o.key_space_size, 100_000);
        assert_eq!(o.val_size, 256);
        assert_eq!(o.endpoints, vec!["127.0.0.1:1".to_string()]);
    }
}
