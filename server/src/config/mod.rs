//! etcd's command-line flags and `ETCD_*` variables, turned into a checked configuration.

mod file;
pub mod flags;
mod go_duration;
pub mod urls;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use flags::{FlagError, FlagValue, Kind, ParseOutcome};
pub use go_duration::parse as parse_go_duration;
pub use urls::{ListenUrl, Scheme};

use crate::auth::tokens::{unknown_jwt_options, TokenOptions};
use crate::member::auto_compaction::AutoCompaction;
use crate::transport::tls::TlsSettings;

/// How keelson treats an etcd flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Implemented.
    Supported,
    /// Accepted and ignored; the text says why that is harmless.
    Ignored(&'static str),
    /// Refused when set; the text says why.
    Refused(&'static str),
}

pub struct FlagSpec {
    pub name: &'static str,
    pub kind: Kind,
    pub default: &'static str,
    pub help: &'static str,
    pub support: Support,
}

const fn flag(
    name: &'static str,
    kind: Kind,
    default: &'static str,
    help: &'static str,
    support: Support,
) -> FlagSpec {
    FlagSpec {
        name,
        kind,
        default,
        help,
        support,
    }
}

use Kind::{Bool, Value};
use Support::{Ignored, Refused, Supported};

const FORCE_NEW_CLUSTER: &str =
    "recovering a lost quorum by rewriting the membership is not supported yet; restore from a snapshot instead";

/// Every flag keelson knows, with etcd's defaults.
pub const FLAGS: &[FlagSpec] = &[
    flag("name", Value, "default", "Human-readable name for this member.", Supported),
    flag("data-dir", Value, "${name}.etcd", "Path to the data directory.", Supported),
    flag("wal-dir", Value, "", "Path to a dedicated WAL directory.", Supported),
    flag("snapshot-count", Value, "10000", "Number of committed entries that trigger a snapshot and a log purge.", Supported),
    flag("max-snapshots", Value, "5", "Maximum snapshot files to retain.", Ignored("keelson keeps exactly one snapshot")),
    flag("max-wals", Value, "5", "Maximum WAL files to retain.", Ignored("the log is purged after each snapshot")),
    flag("heartbeat-interval", Value, "100", "Time (in milliseconds) of a heartbeat interval.", Supported),
    flag("election-timeout", Value, "1000", "Time (in milliseconds) for an election to timeout.", Supported),
    flag("initial-election-tick-advance", Bool, "true", "Whether to fast-forward initial election ticks on boot.", Ignored("a lone voter elects itself at once; members of a cluster wait one election timeout")),
    flag("pre-vote", Bool, "true", "Enable the raft pre-vote algorithm.", Ignored("pre-vote and check-quorum are always on")),
    flag("quota-backend-bytes", Value, "0", "Raise alarms when the backend size exceeds the given quota (0 defaults to 2 GiB).", Supported),
    flag("max-txn-ops", Value, "128", "Maximum number of operations permitted in a transaction.", Supported),
    flag("max-request-bytes", Value, "1572864", "Maximum client request size in bytes the server will accept.", Supported),
    flag("backend-batch-interval", Value, "0", "Maximum time before committing the backend transaction.", Ignored("every applied entry is its own RocksDB batch")),
    flag("backend-batch-limit", Value, "0", "Maximum operations before committing the backend transaction.", Ignored("every applied entry is its own RocksDB batch")),
    flag("grpc-keepalive-min-time", Value, "5s", "Minimum interval a client should wait before pinging the server.", Ignored("pings are never refused")),
    flag("grpc-keepalive-interval", Value, "2h", "Frequency duration of server-to-client ping to check if a connection is alive.", Ignored("the server does not ping idle clients")),
    flag("grpc-keepalive-timeout", Value, "20s", "Additional duration of wait before closing a non-responsive connection.", Ignored("the server does not ping idle clients")),
    flag("max-concurrent-streams", Value, "4294967295", "Maximum concurrent streams that each client can open at a time.", Ignored("streams are not limited")),
    flag("listen-peer-urls", Value, "http://localhost:2380", "List of URLs to listen on for peer traffic.", Supported),
    flag("listen-client-urls", Value, "http://localhost:2379", "List of URLs to listen on for client traffic.", Supported),
    flag("listen-client-http-urls", Value, "", "List of URLs to listen on for http only client traffic.", Refused("the HTTP gateway is not supported yet")),
    flag("listen-metrics-urls", Value, "", "List of URLs to listen on for the metrics and health endpoints.", Supported),
    flag("initial-advertise-peer-urls", Value, "http://localhost:2380", "List of this member's peer URLs to advertise to the rest of the cluster.", Supported),
    flag("initial-cluster", Value, "default=http://localhost:2380", "Initial cluster configuration for bootstrapping.", Supported),
    flag("initial-cluster-state", Value, "new", "Initial cluster state ('new' or 'existing').", Supported),
    flag("initial-cluster-token", Value, "etcd-cluster", "Initial cluster token for the etcd cluster during bootstrap.", Supported),
    flag("join-seeds", Value, "", "keelson only: peer URLs of members to ask when the data dir is empty; joins a running cluster as a learner (member add, then promote), replaces a member whose disk was lost, sets aside the data of a removed member (docs/clustering.md).", Supported),
    flag("join-timeout", Value, "5m", "keelson only: how long --join-seeds may try before the member exits.", Supported),
    flag("advertise-client-urls", Value, "http://localhost:2379", "List of this member's client URLs to advertise to the public.", Supported),
    flag("discovery", Value, "", "Discovery URL used to bootstrap the cluster.", Refused("discovery is not supported")),
    flag("discovery-srv", Value, "", "DNS srv domain used to bootstrap the cluster.", Refused("discovery is not supported")),
    flag("strict-reconfig-check", Bool, "true", "Reject reconfiguration requests that would cause quorum loss.", Supported),
    flag("cert-file", Value, "", "Path to the client server TLS cert file.", Supported),
    flag("key-file", Value, "", "Path to the client server TLS key file.", Supported),
    flag("client-cert-auth", Bool, "false", "Enable client cert authentication.", Supported),
    flag("client-crl-file", Value, "", "Path to the client certificate revocation list file.", Supported),
    flag("trusted-ca-file", Value, "", "Path to the client server TLS trusted CA cert file.", Supported),
    flag("auto-tls", Bool, "false", "Client TLS using generated certificates.", Supported),
    flag("cipher-suites", Value, "", "Comma-separated list of supported TLS cipher suites.", Supported),
    flag("tls-min-version", Value, "TLS1.2", "Minimum TLS version supported by etcd.", Supported),
    flag("tls-max-version", Value, "", "Maximum TLS version supported by etcd.", Supported),
    flag("peer-cert-file", Value, "", "Path to the peer server TLS cert file.", Supported),
    flag("peer-key-file", Value, "", "Path to the peer server TLS key file.", Supported),
    flag("peer-client-cert-auth", Bool, "false", "Enable peer client cert authentication.", Supported),
    flag("peer-trusted-ca-file", Value, "", "Path to the peer server TLS trusted CA file.", Supported),
    flag("peer-auto-tls", Bool, "false", "Peer TLS using self-generated certificates.", Supported),
    flag("peer-crl-file", Value, "", "Path to the peer certificate revocation list file.", Supported),
    flag("peer-cert-allowed-cn", Value, "", "Allowed CN for inter peer authentication.", Supported),
    flag("peer-cert-allowed-hostname", Value, "", "Allowed TLS hostname for inter peer authentication.", Supported),
    flag("logger", Value, "", "'zap' for JSON lines as etcd writes them; unset, readable text.", Supported),
    flag("log-outputs", Value, "default", "Specify 'stdout' or 'stderr' to skip journald logging even when running under systemd.", Supported),
    flag("log-level", Value, "info", "Configures log level. Only supports debug, info, warn, error, panic, or fatal.", Supported),
    flag("debug", Bool, "false", "Enable debug-level logging.", Supported),
    flag("version", Bool, "false", "Print the version and exit.", Supported),
    flag("auth-token", Value, "simple", "Specify auth token specific options ('simple', or 'jwt,pub-key=...,priv-key=...,sign-method=...,ttl=...').", Supported),
    flag("auth-token-ttl", Value, "300", "The lifetime in seconds of the auth token.", Supported),
    flag("bcrypt-cost", Value, "10", "Specify bcrypt algorithm cost factor for auth password hashing.", Supported),
    flag("auto-compaction-retention", Value, "0", "Auto compaction retention for mvcc key value store.", Supported),
    flag("auto-compaction-mode", Value, "periodic", "Interpret 'auto-compaction-retention' one of: periodic|revision.", Supported),
    flag("enable-pprof", Bool, "false", "Enable runtime profiling data via HTTP server.", Ignored("keelson has no Go runtime to profile")),
    flag("metrics", Value, "basic", "Set level of detail for exported metrics, specify 'extensive' to include server side grpc histogram metrics.", Supported),
    flag("enable-grpc-gateway", Bool, "true", "Enable GRPC gateway.", Ignored("the JSON gateway is not served yet")),
    flag("experimental-initial-corrupt-check", Bool, "false", "Enable to check data corruption before serving any client/peer traffic.", Ignored("a single member has no peer to compare with")),
    flag("experimental-corrupt-check-time", Value, "0s", "Duration of time between cluster corruption check passes.", Ignored("a single member has no peer to compare with")),
    flag("experimental-watch-progress-notify-interval", Value, "10m", "Duration of periodic watch progress notifications.", Supported),
    flag("watch-progress-notify-interval", Value, "10m", "Duration of periodic watch progress notifications.", Supported),
    flag("experimental-enable-lease-checkpoint", Bool, "false", "Enable leader to send regular checkpoints to other members to prevent reset of remaining TTL on leader change.", Ignored("leases are not supported yet")),
    flag("experimental-compaction-batch-limit", Value, "1000", "Sets the maximum revisions deleted in each compaction batch.", Ignored("compaction batches hold 1000 changes")),
    flag("feature-gates", Value, "", "A set of key=value pairs that describe server level feature gates.", Ignored("no etcd feature gate changes keelson's behaviour")),
    flag("unsafe-no-fsync", Bool, "false", "Disables fsync, unsafe, will cause data loss.", Refused("keelson never acknowledges a write before it is on disk")),
    flag("force-new-cluster", Bool, "false", "Force to create a new one member cluster.", Refused(FORCE_NEW_CLUSTER)),
    flag("config-file", Value, "", "Path to the server configuration file; other flags and ETCD_* variables are then ignored.", Supported),
];

pub fn spec(name: &str) -> Option<&'static FlagSpec> {
    FLAGS.iter().find(|f| f.name == name)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    /// `--wal-dir`: RocksDB's write-ahead log in a directory of its own; `None` = inside the
    /// store under `--data-dir`.
    pub wal_dir: Option<PathBuf>,
    pub listen_client_urls: Vec<ListenUrl>,
    pub advertise_client_urls: Vec<String>,
    pub listen_peer_urls: Vec<ListenUrl>,
    pub initial_advertise_peer_urls: Vec<String>,
    /// name -> peer URLs of every member of a new cluster.
    pub initial_cluster: BTreeMap<String, Vec<String>>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    /// keelson's join step: peer URLs to ask when the data dir is empty.
    pub join_seeds: Vec<String>,
    pub join_timeout: Duration,
    pub strict_reconfig_check: bool,
    pub snapshot_count: u64,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub quota_backend_bytes: i64,
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
    pub log_level: String,
    pub logger: String,
    pub watch_progress_notify_interval: Duration,
    pub auto_compaction: AutoCompaction,
    pub listen_metrics_urls: Vec<ListenUrl>,
    /// `--metrics extensive` adds gRPC latency histograms.
    pub extensive_metrics: bool,
    pub client_tls: TlsSettings,
    pub peer_tls: TlsSettings,
    /// `--auth-token`: how tokens are made (keys are read when the member starts).
    pub auth_token: TokenOptions,
    /// `--auth-token-ttl`: how long an unused simple token lives.
    pub auth_token_ttl: Duration,
    /// `--bcrypt-cost` (a cost outside bcrypt's range falls back to 10, as in etcd).
    pub bcrypt_cost: u32,
    /// Messages for the log once logging is up (environment warnings, ignored flags).
    pub notices: Vec<String>,
}

/// The default quota when --quota-backend-bytes is 0, as etcd's.
pub const DEFAULT_QUOTA_BYTES: i64 = 2 * 1024 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Flag(#[from] FlagError),
    #[error("{0}")]
    Invalid(String),
}

/// What the command line asks for.
pub enum Parsed {
    Run(Box<Config>),
    Version,
    Help,
}

pub fn parse(args: &[String], env: &[(String, String)]) -> Result<Parsed, ConfigError> {
    let kinds = |name: &str| spec(name).map(|s| s.kind);
    let (outcome, mut notices) = flags::parse(args, &kinds, env)?;
    let mut values = match outcome {
        ParseOutcome::Help => return Ok(Parsed::Help),
        ParseOutcome::Values(v) => v,
    };
    if (Values { values: &values }).bool("version")? {
        return Ok(Parsed::Version);
    }
    // As etcd: a configuration file replaces every flag and variable.
    let config_file = values.get("config-file").map(|v| v.value.clone());
    if let Some(path) = config_file.filter(|p| !p.is_empty()) {
        let (from_file, file_notices) =
            file::read(std::path::Path::new(&path), &|k| spec(k).is_some())?;
        notices = file_notices;
        notices.push(format!(
            "loaded server configuration from {path}; other command line flags and environment variables are ignored"
        ));
        values = from_file;
    }
    let mut config = build(&Values { values: &values })?;
    config.notices.extend(notices);
    Ok(Parsed::Run(Box::new(config)))
}

struct Values<'a> {
    values: &'a BTreeMap<String, FlagValue>,
}

impl Values<'_> {
    fn is_set(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    fn string(&self, name: &str) -> String {
        match self.values.get(name) {
            Some(v) => v.value.clone(),
            None => spec(name)
                .map(|s| s.default.to_string())
                .unwrap_or_default(),
        }
    }

    fn bool(&self, name: &str) -> Result<bool, ConfigError> {
        let raw = self.string(name);
        flags::parse_bool(&raw).ok_or_else(|| invalid(name, &raw, "not a boolean"))
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<T, ConfigError> {
        let raw = self.string(name);
        raw.parse()
            .map_err(|_| invalid(name, &raw, "not a valid number"))
    }

    fn list(&self, name: &str) -> Vec<String> {
        self.string(name)
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }
}

fn invalid(name: &str, value: &str, why: &str) -> ConfigError {
    ConfigError::Invalid(format!("invalid value {value:?} for flag -{name}: {why}"))
}

fn build(v: &Values<'_>) -> Result<Config, ConfigError> {
    let mut notices = Vec::new();
    for spec in FLAGS {
        if !v.is_set(spec.name) {
            continue;
        }
        match spec.support {
            Support::Supported => {}
            Support::Ignored(why) => notices.push(format!(
                "flag --{} is accepted and ignored: {why}",
                spec.name
            )),
            Support::Refused(why) => {
                return Err(ConfigError::Invalid(format!(
                    "flag --{} is not supported by keelson: {why}",
                    spec.name
                )))
            }
        }
    }
    let name = v.string("name");
    let data_dir = match v.values.get("data-dir") {
        Some(d) if !d.value.is_empty() => PathBuf::from(&d.value),
        _ => PathBuf::from(format!("{name}.etcd")),
    };
    let listen_client_urls =
        urls::parse_listen_urls("listen-client-urls", &v.list("listen-client-urls"))?;
    let listen_peer_urls =
        urls::parse_listen_urls("listen-peer-urls", &v.list("listen-peer-urls"))?;
    let listen_metrics_urls =
        urls::parse_listen_urls("listen-metrics-urls", &v.list("listen-metrics-urls"))?;
    let client_tls = tls_settings(v, "")?;
    let peer_tls = tls_settings(v, "peer-")?;
    for url in listen_client_urls.iter().chain(&listen_metrics_urls) {
        if url.scheme == Scheme::Https && !client_tls.is_configured() {
            return Err(ConfigError::Invalid(format!(
                "TLS key/cert (--cert-file, --key-file) must be provided for client url {} with HTTPS scheme",
                url.original
            )));
        }
    }
    for url in &listen_peer_urls {
        if url.scheme == Scheme::Https && !peer_tls.is_configured() {
            return Err(ConfigError::Invalid(format!(
                "TLS key/cert (--peer-cert-file, --peer-key-file) must be provided for peer url {} with HTTPS scheme",
                url.original
            )));
        }
    }
    let metrics_level = v.string("metrics");
    if !["basic", "extensive"].contains(&metrics_level.as_str()) {
        return Err(invalid(
            "metrics",
            &metrics_level,
            "expected basic or extensive",
        ));
    }
    let initial_advertise_peer_urls = v.list("initial-advertise-peer-urls");
    urls::check_urls("initial-advertise-peer-urls", &initial_advertise_peer_urls)?;
    let advertise_client_urls = v.list("advertise-client-urls");
    urls::check_urls("advertise-client-urls", &advertise_client_urls)?;
    let initial_cluster_raw = if !v.is_set("initial-cluster") && name != "default" {
        // etcd names the one-member cluster after the member when only --name is given.
        initial_advertise_peer_urls
            .iter()
            .map(|u| format!("{name}={u}"))
            .collect::<Vec<_>>()
            .join(",")
    } else {
        v.string("initial-cluster")
    };
    let initial_cluster = urls::parse_initial_cluster(&initial_cluster_raw)?;
    check_local_member(
        &name,
        &initial_cluster,
        &initial_advertise_peer_urls,
        &initial_cluster_raw,
    )?;
    let initial_cluster_state = match v.string("initial-cluster-state").as_str() {
        "new" => ClusterState::New,
        "existing" => ClusterState::Existing,
        other => {
            return Err(invalid(
                "initial-cluster-state",
                other,
                "valid values include new,existing",
            ))
        }
    };
    let quota: i64 = v.number("quota-backend-bytes")?;
    let heartbeat_ms: u64 = v.number("heartbeat-interval")?;
    let election_ms: u64 = v.number("election-timeout")?;
    check_timing(heartbeat_ms, election_ms)?;
    let log_level = if v.bool("debug")? {
        "debug".to_string()
    } else {
        v.string("log-level")
    };
    if !["debug", "info", "warn", "error", "panic", "fatal"].contains(&log_level.as_str()) {
        return Err(invalid(
            "log-level",
            &log_level,
            "expected debug, info, warn, error, panic or fatal",
        ));
    }
    let logger = v.string("logger");
    if !["", "zap", "capnslog"].contains(&logger.as_str()) {
        return Err(invalid("logger", &logger, "expected zap or capnslog"));
    }
    let max_request_bytes: usize = v.number("max-request-bytes")?;
    let max_txn_ops: usize = v.number("max-txn-ops")?;
    if max_txn_ops == 0 {
        return Err(invalid("max-txn-ops", "0", "must be positive"));
    }
    let auth_token_spec = v.string("auth-token");
    let auth_token = TokenOptions::parse(&auth_token_spec)
        .map_err(|e| ConfigError::Invalid(format!("failed to create token provider: {e}")))?;
    let unknown = unknown_jwt_options(&auth_token_spec);
    if !unknown.is_empty() {
        notices.push(format!("unknown JWT options: {unknown:?}"));
    }
    let auth_token_ttl: u64 = v.number("auth-token-ttl")?;
    let bcrypt_cost: u32 = v.number("bcrypt-cost")?;
    let wal_dir = Some(v.string("wal-dir"))
        .filter(|w| !w.is_empty())
        .map(PathBuf::from);
    Ok(Config {
        name,
        data_dir,
        wal_dir,
        listen_client_urls,
        advertise_client_urls,
        listen_peer_urls,
        initial_advertise_peer_urls,
        initial_cluster,
        initial_cluster_state,
        initial_cluster_token: v.string("initial-cluster-token"),
        join_seeds: {
            let seeds = v.list("join-seeds");
            urls::check_urls("join-seeds", &seeds)?;
            seeds
        },
        join_timeout: {
            let raw = v.string("join-timeout");
            go_duration::parse(&raw)
                .ok_or_else(|| invalid("join-timeout", &raw, "not a duration"))?
        },
        strict_reconfig_check: v.bool("strict-reconfig-check")?,
        snapshot_count: v.number("snapshot-count")?,
        max_request_bytes,
        max_txn_ops,
        quota_backend_bytes: if quota <= 0 {
            DEFAULT_QUOTA_BYTES
        } else {
            quota
        },
        heartbeat_interval: Duration::from_millis(heartbeat_ms),
        election_timeout: Duration::from_millis(election_ms),
        log_level,
        logger,
        watch_progress_notify_interval: progress_interval(v)?,
        auto_compaction: auto_compaction(v)?,
        listen_metrics_urls,
        extensive_metrics: metrics_level == "extensive",
        client_tls,
        peer_tls,
        auth_token,
        auth_token_ttl: Duration::from_secs(auth_token_ttl),
        bcrypt_cost,
        notices,
    })
}

/// etcd's auto compaction flags. A periodic retention is a Go duration, or a bare number of
/// hours; a revision retention is a number of revisions; "0" turns it off.
fn auto_compaction(v: &Values<'_>) -> Result<AutoCompaction, ConfigError> {
    let mode = v.string("auto-compaction-mode");
    let raw = v.string("auto-compaction-retention");
    let name = "auto-compaction-retention";
    match mode.as_str() {
        "periodic" => {
            let retention = match raw.parse::<u64>() {
                Ok(hours) => Duration::from_secs(hours * 3600),
                Err(_) => go_duration::parse(&raw)
                    .ok_or_else(|| invalid(name, &raw, "not a duration or a number of hours"))?,
            };
            Ok(if retention.is_zero() {
                AutoCompaction::Off
            } else {
                AutoCompaction::Periodic(retention)
            })
        }
        "revision" => {
            let keep: i64 = raw
                .parse()
                .map_err(|_| invalid(name, &raw, "not a number of revisions"))?;
            Ok(if keep <= 0 {
                AutoCompaction::Off
            } else {
                AutoCompaction::Revision(keep)
            })
        }
        other => Err(invalid(
            "auto-compaction-mode",
            other,
            "valid values are periodic and revision",
        )),
    }
}

/// The TLS flags of one listener kind (`""` for clients, `"peer-"` for peers).
fn tls_settings(v: &Values<'_>, prefix: &str) -> Result<TlsSettings, ConfigError> {
    let path_of = |flag: &str| {
        let value = v.string(flag);
        (!value.is_empty()).then(|| std::path::PathBuf::from(value))
    };
    let shared = |flag: &str| {
        let value = v.string(flag);
        (!value.is_empty()).then_some(value)
    };
    let crl_flag = if prefix.is_empty() {
        "client-crl-file"
    } else {
        "peer-crl-file"
    };
    let settings = TlsSettings {
        cert_file: path_of(&format!("{prefix}cert-file")),
        key_file: path_of(&format!("{prefix}key-file")),
        trusted_ca_file: path_of(&format!("{prefix}trusted-ca-file")),
        client_cert_auth: v.bool(&format!("{prefix}client-cert-auth"))?,
        crl_file: path_of(crl_flag),
        auto_tls: v.bool(&format!("{prefix}auto-tls"))?,
        cipher_suites: v.list("cipher-suites"),
        min_version: shared("tls-min-version"),
        max_version: shared("tls-max-version"),
        allowed_cn: if prefix.is_empty() {
            None
        } else {
            shared("peer-cert-allowed-cn")
        },
        allowed_hostname: if prefix.is_empty() {
            None
        } else {
            shared("peer-cert-allowed-hostname")
        },
    };
    if settings.cert_file.is_some() != settings.key_file.is_some() {
        return Err(ConfigError::Invalid(format!(
            "--{prefix}cert-file and --{prefix}key-file must be given together"
        )));
    }
    if settings.client_cert_auth && settings.trusted_ca_file.is_none() {
        return Err(ConfigError::Invalid(format!(
            "--{prefix}client-cert-auth needs --{prefix}trusted-ca-file"
        )));
    }
    Ok(settings)
}

/// Either spelling of the progress interval flag (etcd renamed it in 3.6); the newer wins.
fn progress_interval(v: &Values<'_>) -> Result<Duration, ConfigError> {
    let name = if v.is_set("watch-progress-notify-interval") {
        "watch-progress-notify-interval"
    } else {
        "experimental-watch-progress-notify-interval"
    };
    let raw = v.string(name);
    let interval = go_duration::parse(&raw).ok_or_else(|| invalid(name, &raw, "not a duration"))?;
    if interval.is_zero() {
        return Err(invalid(name, &raw, "must be positive"));
    }
    Ok(interval)
}

fn check_local_member(
    name: &str,
    cluster: &BTreeMap<String, Vec<String>>,
    advertised: &[String],
    raw: &str,
) -> Result<(), ConfigError> {
    let Some(listed) = cluster.get(name) else {
        return Err(ConfigError::Invalid(format!(
            "couldn't find local name {name:?} in the initial cluster configuration"
        )));
    };
    let mut listed_sorted = listed.clone();
    listed_sorted.sort();
    let mut advertised_sorted = advertised.to_vec();
    advertised_sorted.sort();
    if listed_sorted != advertised_sorted {
        return Err(ConfigError::Invalid(format!(
            "--initial-cluster has {name}={} but missing from --initial-advertise-peer-urls={} (--initial-cluster={raw})",
            listed.join(","),
            advertised.join(",")
        )));
    }
    Ok(())
}

fn check_timing(heartbeat_ms: u64, election_ms: u64) -> Result<(), ConfigError> {
    if heartbeat_ms == 0 {
        return Err(invalid("heartbeat-interval", "0", "must be positive"));
    }
    if election_ms < 5 * heartbeat_ms {
        return Err(ConfigError::Invalid(format!(
            "--election-timeout[{election_ms}ms] should be at least as 5 times as --heartbeat-interval[{heartbeat_ms}ms]"
        )));
    }
    if election_ms > 50_000 {
        return Err(ConfigError::Invalid(format!(
            "--election-timeout[{election_ms}ms] is too long, and should be set less than 50000ms"
        )));
    }
    Ok(())
}

/// A Go duration (`30s`, `1m30s`), as etcd's flags take them.
pub fn parse_duration(text: &str) -> Option<Duration> {
    go_duration::parse(text)
}

/// The usage text `--help` prints.
pub fn usage() -> String {
    let mut out = String::from(
        "Usage:\n\n  keelson [flags]\n    Start a keelson member (an etcd v3 server).\n\n  keelson leave [--if-scaled-down=statefulset/NAME] [--kube-service-account-dir=DIR] [--timeout=30s] [flags]\n    Remove this member (named by the same flags) from its cluster; with --if-scaled-down only\n    when the StatefulSet no longer counts its pod (a preStop hook).\n\n  keelson snapshot restore FILE --data-dir DIR [--name ...] [--initial-cluster ...] [--initial-cluster-token ...] [--initial-advertise-peer-urls ...] [--skip-hash-check]\n    Build a data dir from an etcd snapshot (etcdctl snapshot save, from etcd or keelson).\n\n  keelson snapshot status FILE [-w simple|table|json]\n    Print what etcdctl snapshot status prints.\n\n  keelson --version\n    Show the version.\n\n  keelson -h | --help\n    Show this help.\n\nEvery flag can also be set as ETCD_<FLAG> (upper case, dashes as underscores).\n\nFlags:\n",
    );
    for spec in FLAGS {
        let note = match spec.support {
            Support::Supported => String::new(),
            Support::Ignored(why) => format!(" [accepted, ignored: {why}]"),
            Support::Refused(why) => format!(" [not supported: {why}]"),
        };
        let default = if spec.default.is_empty() {
            String::new()
        } else {
            format!(" (default {:?})", spec.default)
        };
        out.push_str(&format!(
            "  --{}{default}\n      {}{note}\n",
            spec.name, spec.help
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, ConfigError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        match parse(&args, &[])? {
            Parsed::Run(c) => Ok(*c),
            _ => panic!("expected a run configuration"),
        }
    }

    #[test]
    fn defaults_are_etcds() {
        let c = run(&[]).expect("defaults parse");
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir, PathBuf::from("default.etcd"));
        assert_eq!(c.listen_client_urls[0].original, "http://localhost:2379");
        assert_eq!(c.max_request_bytes, 1_572_864);
        assert_eq!(c.max_txn_ops, 128);
        assert_eq!(c.quota_backend_bytes, DEFAULT_QUOTA_BYTES);
    }

    #[test]
    fn auto_compaction_flags() {
        let c = run(&["--auto-compaction-retention", "1"]).expect("hours");
        assert_eq!(
            c.auto_compaction,
            AutoCompaction::Periodic(Duration::from_secs(3600))
        );
        let c = run(&["--auto-compaction-retention", "30m"]).expect("duration");
        assert_eq!(
            c.auto_compaction,
            AutoCompaction::Periodic(Duration::from_secs(1800))
        );
        let c = run(&[
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "1000",
        ])
        .expect("revisions");
        assert_eq!(c.auto_compaction, AutoCompaction::Revision(1000));
        assert_eq!(
            run(&[]).expect("default").auto_compaction,
            AutoCompaction::Off
        );
        assert!(run(&["--auto-compaction-mode", "weekly"]).is_err());
    }

    /// docs/operations.md must name every flag keelson knows.
    #[test]
    fn every_flag_is_documented() {
        let doc = include_str!("../../../docs/operations.md");
        let missing: Vec<&str> = FLAGS
            .iter()
            .map(|f| f.name)
            .filter(|name| !doc.contains(&format!("`--{name}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "flags missing from docs/operations.md: {missing:?}"
        );
    }

    #[test]
    fn auth_flags() {
        let c = run(&[]).expect("defaults");
        assert_eq!(c.auth_token, TokenOptions::Simple);
        assert_eq!(c.auth_token_ttl, Duration::from_secs(300));
        assert_eq!(c.bcrypt_cost, 10);
        let c = run(&[
            "--auth-token",
            "jwt,pub-key=k.pub,priv-key=k.key,sign-method=RS256,ttl=1m",
            "--auth-token-ttl",
            "2",
            "--bcrypt-cost",
            "4",
        ])
        .expect("parses");
        assert!(matches!(c.auth_token, TokenOptions::Jwt { .. }));
        assert_eq!(c.auth_token_ttl, Duration::from_secs(2));
        assert_eq!(c.bcrypt_cost, 4);
        assert!(run(&["--auth-token", "magic"]).is_err());
        assert!(run(&["--auth-token-ttl", "-1"]).is_err());
    }

    #[test]
    fn name_alone_names_the_cluster_member() {
        let c = run(&["--name", "infra0"]).expect("parses");
        assert_eq!(c.data_dir, PathBuf::from("infra0.etcd"));
        assert!(c.initial_cluster.contains_key("infra0"));
    }

    #[test]
    fn refused_and_mismatched_configurations() {
        assert!(
            run(&["--cert-file", "x"]).is_err(),
            "a cert without its key"
        );
        assert!(
            run(&["--listen-client-urls", "https://127.0.0.1:2379"]).is_err(),
            "https without TLS material"
        );
        assert!(run(&["--unsafe-no-fsync"]).is_err());
        let err =
            run(&["--initial-advertise-peer-urls", "http://127.0.0.1:2390"]).expect_err("mismatch");
        assert!(err
            .to_string()
            .contains("missing from --initial-advertise-peer-urls"));
        assert!(run(&["--election-timeout", "200"]).is_err());
    }
}
