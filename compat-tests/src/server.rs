//! One member process (keelson or etcd) on free loopback ports with its own data directory.

use std::ffi::OsString;
use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use tempfile::TempDir;

/// The log line both etcd and keelson print once clients may connect.
pub const READY_LINE: &str = "ready to serve client requests";
/// How long a member may take to become ready after it is started.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Member name passed with `--name` unless a test picks another one.
pub const DEFAULT_MEMBER_NAME: &str = "compat";
/// The gRPC deadline of the clients that [`Server::client`] builds.
pub const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

const POLL_INTERVAL: Duration = Duration::from_millis(20);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const LOG_TAIL_LINES: usize = 40;
/// Ports are picked by binding port 0 and releasing it, so another process may take one
/// before the member binds it; such a start is retried on new ports this many times.
const PORT_ATTEMPTS: usize = 3;

/// Which implementation a test talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    Keelson,
    Etcd,
}

impl ServerKind {
    /// `COMPAT_SERVER` = `keelson` (default) or `etcd`.
    pub fn from_env() -> Self {
        match std::env::var("COMPAT_SERVER").as_deref() {
            Err(_) | Ok("") | Ok("keelson") => ServerKind::Keelson,
            Ok("etcd") => ServerKind::Etcd,
            Ok(other) => panic!("COMPAT_SERVER must be `keelson` or `etcd`, not {other:?}"),
        }
    }

    /// The executable started for this kind.
    pub fn binary(self) -> PathBuf {
        match self {
            ServerKind::Keelson => keelson_binary(),
            ServerKind::Etcd => etcd_binary(),
        }
    }

    /// Whether the executable exists, so that a test can fall back to another kind.
    pub fn is_available(self) -> bool {
        self.binary().is_file()
    }

    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Keelson => "keelson",
            ServerKind::Etcd => "etcd",
        }
    }
}

/// `KEELSON_BIN`, or `keelson` in the profile directory of the running test executable
/// (`<target>/<profile>/deps/<test>` → `<target>/<profile>/keelson`).
pub fn keelson_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KEELSON_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the path of the running test executable");
    let exe_dir = exe
        .parent()
        .expect("the test executable lives in a directory");
    let profile_dir = if exe_dir.ends_with("deps") {
        exe_dir.parent().expect("a deps directory has a parent")
    } else {
        exe_dir
    };
    profile_dir.join("keelson")
}

/// `ETCD_BIN`, or Debian's `/usr/bin/etcd`.
pub fn etcd_binary() -> PathBuf {
    std::env::var_os("ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

/// How a client trusts the certificate a member shows on its https client URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerTrust {
    /// Verify it against this CA certificate (PEM).
    CaFile(PathBuf),
    /// Do not verify it (a member started with `--auto-tls`). The readiness probe is then an
    /// HTTPS `GET /health`, and [`Server::client`] is unavailable: use etcdctl with
    /// `--insecure-skip-tls-verify`.
    InsecureSkipVerify,
}

/// The client side of TLS towards a member whose client URL is https.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTls {
    pub trust: ServerTrust,
    /// Client certificate and key (PEM), for members started with `--client-cert-auth`.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl ClientTls {
    /// Trust `ca_file`, present no certificate.
    pub fn ca(ca_file: impl Into<PathBuf>) -> Self {
        ClientTls {
            trust: ServerTrust::CaFile(ca_file.into()),
            identity: None,
        }
    }

    /// Trust anything (`--auto-tls`).
    pub fn insecure() -> Self {
        ClientTls {
            trust: ServerTrust::InsecureSkipVerify,
            identity: None,
        }
    }

    /// Present this client certificate and key.
    pub fn identity(mut self, cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        self.identity = Some((cert_file.into(), key_file.into()));
        self
    }

    /// The etcd-client TLS options (CA and identity); `None` when the server is not verified.
    pub fn connect_options(&self) -> Option<etcd_client::TlsOptions> {
        let ServerTrust::CaFile(ca) = &self.trust else {
            return None;
        };
        let read = |path: &PathBuf| {
            std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        };
        let mut tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(ca)));
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(etcd_client::Identity::from_pem(read(cert), read(key)));
        }
        Some(tls)
    }
}

/// How to start a member.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub kind: ServerKind,
    pub name: String,
    /// Flags appended after the cluster flags, e.g. `["--max-txn-ops", "8"]`.
    pub extra_args: Vec<String>,
    pub start_timeout: Duration,
    /// `Some`: the client URL is `https://` and the harness's own clients (readiness probe,
    /// [`Server::client`]) use this; the TLS flags themselves go in `extra_args`.
    pub client_tls: Option<ClientTls>,
    /// Also listen on a second, plain `http://` client URL ([`Server::http_client_url`]).
    pub extra_http_client_url: bool,
    /// Add `--listen-metrics-urls http://127.0.0.1:<port>` ([`Server::metrics_url`]).
    pub metrics_listener: bool,
    /// The peer URL is `https://` (peer TLS flags go in `extra_args`).
    pub peer_https: bool,
    /// Environment variables of the member process (the harness removes inherited `ETCD_*`).
    pub env: Vec<(String, String)>,
    /// `Some`: instead of the cluster flags, write this YAML to `<dir>/config.yaml` and pass
    /// `--config-file` (then `extra_args`). Placeholders: `{name}`, `{data_dir}`,
    /// `{client_url}`, `{peer_url}`, `{dir}` (the member's temporary directory).
    pub config_file_template: Option<String>,
    /// `Some`: a member of a cluster of several ([`crate::cluster`]): these flags replace the
    /// one-member `--initial-cluster`.
    pub cluster: Option<ClusterFlags>,
    /// `Some`: the member's `--data-dir` (prepared by the test); `None`: `<its dir>/data`.
    pub data_dir: Option<PathBuf>,
    /// Render the flags as kubeadm's etcd static pod does: `--flag=value`, sorted by name.
    pub kubeadm_style: bool,
}

/// The bootstrap flags of a member of a cluster of several.
#[derive(Clone, Debug)]
pub struct ClusterFlags {
    /// `name=peer-url,...` for every member.
    pub initial_cluster: String,
    /// `new` or `existing`.
    pub state: String,
    pub token: String,
}

impl ServerOptions {
    pub fn new(kind: ServerKind) -> Self {
        ServerOptions {
            kind,
            name: DEFAULT_MEMBER_NAME.to_string(),
            extra_args: Vec::new(),
            start_timeout: DEFAULT_START_TIMEOUT,
            client_tls: None,
            extra_http_client_url: false,
            metrics_listener: false,
            peer_https: false,
            env: Vec::new(),
            config_file_template: None,
            cluster: None,
            data_dir: None,
            kubeadm_style: false,
        }
    }

    /// Flags as kubeadm writes them into etcd's static pod (`--flag=value`, sorted).
    pub fn kubeadm_style(mut self) -> Self {
        self.kubeadm_style = true;
        self
    }

    /// Use `dir` as the data dir (a test prepares its content before the start).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Serve the client URL over https, reached by the harness with `tls`.
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.client_tls = Some(tls);
        self
    }

    /// Listen on a plain http client URL too ([`Server::http_client_url`]).
    pub fn with_http_client_url(mut self) -> Self {
        self.extra_http_client_url = true;
        self
    }

    /// Listen on a `--listen-metrics-urls` URL ([`Server::metrics_url`]).
    pub fn with_metrics_url(mut self) -> Self {
        self.metrics_listener = true;
        self
    }

    /// Peer URL with the https scheme.
    pub fn peer_https(mut self) -> Self {
        self.peer_https = true;
        self
    }

    /// An environment variable of the member process.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Start from a configuration file written from `template` (see the field's doc).
    pub fn config_file(mut self, template: impl Into<String>) -> Self {
        self.config_file_template = Some(template.into());
        self
    }

    /// The kind chosen by `COMPAT_SERVER`.
    pub fn from_env() -> Self {
        Self::new(ServerKind::from_env())
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self::from_env()
    }
}

/// Why a launch failed; `port_in_use` makes [`Server::start`] retry on other ports.
#[derive(Debug)]
pub(crate) struct LaunchError {
    pub(crate) message: String,
    pub(crate) port_in_use: bool,
}

/// A running member. Dropping it kills the process and removes its data directory.
pub struct Server {
    options: ServerOptions,
    client_port: u16,
    peer_port: u16,
    /// The second (plain http) client port, with [`ServerOptions::with_http_client_url`].
    http_client_port: Option<u16>,
    /// The `--listen-metrics-urls` port, with [`ServerOptions::with_metrics_url`].
    metrics_port: Option<u16>,
    dir: TempDir,
    child: Option<Child>,
    launches: u32,
}

impl Server {
    /// Starts a member and waits until it prints [`READY_LINE`] and answers a Range.
    /// Panics with the log tail when it exits early or is not ready in time.
    pub async fn start(options: ServerOptions) -> Server {
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let mut server = Server::prepare(options.clone());
            match server.launch().await {
                Ok(()) => return server,
                Err(error) if error.port_in_use => last_error = error.message,
                Err(error) => panic!("{}", error.message),
            }
        }
        panic!("no free ports after {PORT_ATTEMPTS} attempts; last failure: {last_error}");
    }

    /// Starts the member chosen by `COMPAT_SERVER` with default flags.
    pub async fn start_default() -> Server {
        Self::start(ServerOptions::from_env()).await
    }

    /// Whether the process is running (started and not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(POLL_INTERVAL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits (bounded) for the process to exit on its own and returns its status.
    pub async fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Starts the process again on the same data directory and ports without waiting for it
    /// to be ready (a member that needs its cluster's quorum to become ready).
    pub fn respawn(&mut self) {
        self.kill();
        if let Err(error) = self.spawn() {
            panic!("restart failed: {}", error.message);
        }
    }

    /// Like [`Server::respawn`], reporting a failure to start instead of panicking.
    pub fn try_respawn(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn().map_err(|e| e.message)
    }

    /// Like [`Server::wait_ready`], reporting instead of panicking.
    pub async fn try_wait_ready(&mut self) -> Result<(), String> {
        self.wait_until_ready().await.map_err(|e| e.message)
    }

    /// The bootstrap flags of the next start (a member removed and added again under the same
    /// name and URLs joins with `existing`).
    pub fn set_cluster_flags(&mut self, flags: ClusterFlags) {
        self.options.cluster = Some(flags);
    }

    /// Adds a flag to every later start of this member (a member restarted with
    /// `--join-seeds`, as the Helm chart starts them).
    pub fn add_arg(&mut self, arg: impl Into<String>) {
        self.options.extra_args.push(arg.into());
    }

    /// The flags this member runs with, as `keelson leave` expects them (the member's own).
    pub fn member_args(&self) -> Vec<String> {
        self.command_args()
    }

    /// Deletes the data directory of a member that is not running.
    pub fn wipe_data_dir(&self) -> std::io::Result<()> {
        match std::fs::remove_dir_all(self.data_dir()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Waits until a respawned member is ready.
    pub async fn wait_ready(&mut self) {
        if let Err(error) = self.wait_until_ready().await {
            panic!("{}", error.message);
        }
    }

    /// The log of the current launch.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the process again on the same data directory and ports (after a SIGKILL if
    /// it is still running), and waits until it is ready.
    pub async fn restart(&mut self) {
        self.kill();
        if let Err(error) = self.launch().await {
            panic!("restart failed: {}", error.message);
        }
    }

    /// Kills the process with SIGKILL (no chance to flush anything) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // An error here means the process already exited, which is what we want.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn kind(&self) -> ServerKind {
        self.options.kind
    }

    /// Runs the other server on this member's data dir, ports and flags from the next
    /// (re)start on: swapping the binary as a changed container image does.
    pub fn set_kind(&mut self, kind: ServerKind) {
        self.options.kind = kind;
    }

    pub fn name(&self) -> &str {
        &self.options.name
    }

    /// The endpoint the harness gives etcdctl and the etcd-client crate: the client URL with
    /// its scheme (`http://127.0.0.1:<port>` or `https://...`), as runbooks write it. etcdctl
    /// 3.4 sends it whole as the HTTP/2 `:authority` of per-endpoint calls, which a server
    /// must accept (etcdctl_endpoints.rs covers the bare `127.0.0.1:<port>` form).
    pub fn endpoint(&self) -> String {
        self.client_url()
    }

    pub fn client_url(&self) -> String {
        let scheme = if self.options.client_tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        let scheme = if self.options.peer_https {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.peer_port)
    }

    /// The plain http client URL of [`ServerOptions::with_http_client_url`].
    pub fn http_client_url(&self) -> Option<String> {
        self.http_client_port
            .map(|port| format!("http://127.0.0.1:{port}"))
    }

    /// The `--listen-metrics-urls` URL of [`ServerOptions::with_metrics_url`].
    pub fn metrics_url(&self) -> Option<String> {
        self.metrics_port
            .map(|port| format!("http://127.0.0.1:{port}"))
    }

    /// `127.0.0.1:<client port>` without a scheme, for raw TCP and TLS connections.
    pub fn client_address(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// `127.0.0.1:<peer port>`, for raw TCP and TLS connections.
    pub fn peer_address(&self) -> String {
        format!("127.0.0.1:{}", self.peer_port)
    }

    /// The TLS the harness uses towards the client URL, if it is https.
    pub fn client_tls(&self) -> Option<&ClientTls> {
        self.options.client_tls.as_ref()
    }

    /// The member's temporary directory (holds the data dir, logs and any config file).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.options
            .data_dir
            .clone()
            .unwrap_or_else(|| self.dir.path().join("data"))
    }

    /// The process ID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The log of the current (or last) launch.
    pub fn log_path(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("server-{}.log", self.launches))
    }

    /// The last lines of the current log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// A client with a connect timeout and a per-request deadline.
    pub async fn client(&self) -> Client {
        self.client_with(default_connect_options()).await
    }

    pub async fn client_with(&self, options: ConnectOptions) -> Client {
        let options = match &self.options.client_tls {
            None => options,
            Some(tls) => options.with_tls(tls.connect_options().unwrap_or_else(|| {
                panic!(
                    "{} has an unverified https client URL (--auto-tls): the etcd-client \
                     crate cannot skip verification; use etcdctl --insecure-skip-tls-verify",
                    self.endpoint()
                )
            })),
        };
        Client::connect([self.endpoint()], Some(options))
            .await
            .unwrap_or_else(|error| panic!("connect to {}: {error}", self.endpoint()))
    }

    fn prepare(options: ServerOptions) -> Server {
        let (client_port, peer_port) = two_free_ports();
        Self::prepare_with_ports(options, client_port, peer_port)
    }

    /// A member that will listen on the given client and peer ports (for clusters, whose peer
    /// ports must be known before any member starts).
    pub(crate) fn prepare_with_ports(
        options: ServerOptions,
        client_port: u16,
        peer_port: u16,
    ) -> Server {
        let extra =
            usize::from(options.extra_http_client_url) + usize::from(options.metrics_listener);
        let mut extra_ports = if extra == 0 {
            Vec::new()
        } else {
            free_ports_except(extra, &[client_port, peer_port])
        }
        .into_iter();
        let http_client_port = options
            .extra_http_client_url
            .then(|| extra_ports.next().expect("a port was allocated"));
        let metrics_port = options
            .metrics_listener
            .then(|| extra_ports.next().expect("a port was allocated"));
        let dir = tempfile::Builder::new()
            .prefix("keelson-compat-")
            .tempdir()
            .expect("create a temporary directory for the member");
        Server {
            options,
            client_port,
            peer_port,
            http_client_port,
            metrics_port,
            dir,
            child: None,
            launches: 0,
        }
    }

    fn command_args(&self) -> Vec<String> {
        if let Some(template) = &self.options.config_file_template {
            let path = self.dir.path().join("config.yaml");
            let text = template
                .replace("{name}", &self.options.name)
                .replace("{data_dir}", &self.data_dir().display().to_string())
                .replace("{client_url}", &self.client_url())
                .replace("{peer_url}", &self.peer_url())
                .replace("{dir}", &self.dir.path().display().to_string());
            std::fs::write(&path, text).expect("write the member's config file");
            let mut args = vec!["--config-file".to_string(), path.display().to_string()];
            args.extend(self.options.extra_args.iter().cloned());
            return args;
        }
        let name = &self.options.name;
        let client_url = self.client_url();
        let peer_url = self.peer_url();
        let listen_client_urls = match self.http_client_url() {
            Some(http) => format!("{client_url},{http}"),
            None => client_url.clone(),
        };
        let initial_cluster = match &self.options.cluster {
            Some(cluster) => cluster.initial_cluster.clone(),
            None => format!("{name}={peer_url}"),
        };
        let mut args = vec![
            "--name".to_string(),
            name.clone(),
            "--data-dir".to_string(),
            self.data_dir().display().to_string(),
            "--listen-client-urls".to_string(),
            listen_client_urls,
            "--advertise-client-urls".to_string(),
            client_url,
            "--listen-peer-urls".to_string(),
            peer_url.clone(),
            "--initial-advertise-peer-urls".to_string(),
            peer_url.clone(),
            "--initial-cluster".to_string(),
            initial_cluster,
        ];
        if let Some(cluster) = &self.options.cluster {
            args.extend([
                "--initial-cluster-state".to_string(),
                cluster.state.clone(),
                "--initial-cluster-token".to_string(),
                cluster.token.clone(),
            ]);
        }
        if let Some(metrics) = self.metrics_url() {
            args.extend(["--listen-metrics-urls".to_string(), metrics]);
        }
        if self.options.kubeadm_style {
            let mut joined: Vec<String> = args
                .chunks(2)
                .map(|pair| format!("{}={}", pair[0], pair[1]))
                .collect();
            joined.sort();
            args = joined;
        }
        args.extend(self.options.extra_args.iter().cloned());
        args
    }

    async fn launch(&mut self) -> Result<(), LaunchError> {
        self.spawn()?;
        self.wait_until_ready().await
    }

    /// Starts the process without waiting for it to be ready.
    pub(crate) fn spawn(&mut self) -> Result<(), LaunchError> {
        self.launches += 1;
        let binary = self.options.kind.binary();
        let log = File::create(self.log_path()).expect("create the member's log file");
        let log_for_stdout = log.try_clone().expect("duplicate the log file handle");
        let mut command = Command::new(&binary);
        command
            .args(self.command_args())
            .stdin(Stdio::null())
            .stdout(log_for_stdout)
            .stderr(log);
        for name in inherited_env_names("ETCD_") {
            command.env_remove(name);
        }
        command.envs(self.options.env.iter().cloned());
        let child = command.spawn().map_err(|error| LaunchError {
            message: format!(
                "cannot start {} from {}: {error} (set {} to its path)",
                self.options.kind.name(),
                binary.display(),
                match self.options.kind {
                    ServerKind::Keelson => "KEELSON_BIN",
                    ServerKind::Etcd => "ETCD_BIN",
                }
            ),
            port_in_use: false,
        })?;
        self.child = Some(child);
        Ok(())
    }

    pub(crate) async fn wait_until_ready(&mut self) -> Result<(), LaunchError> {
        let timeout = self.options.start_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Err(self.launch_error(format!("exited with {status} before it was ready")));
            }
            if self.log_contains(READY_LINE) && self.answers_range().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let mut error = self.launch_error(format!(
                    "not ready after {timeout:?} (waiting for `{READY_LINE}` in its log and an \
                     answer to a Range)"
                ));
                // Only a member that exited failed to bind; one still running is stuck.
                error.port_in_use = false;
                self.kill();
                return Err(error);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn exit_status(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        child.try_wait().expect("query the member process status")
    }

    fn log_contains(&self, needle: &str) -> bool {
        std::fs::read_to_string(self.log_path())
            .map(|log| log.contains(needle))
            .unwrap_or(false)
    }

    async fn answers_range(&self) -> bool {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(PROBE_TIMEOUT)
            .with_timeout(PROBE_TIMEOUT);
        if let Some(tls) = &self.options.client_tls {
            match tls.connect_options() {
                Some(tls) => options = options.with_tls(tls),
                None => return self.answers_insecure_health().await,
            }
        }
        // Serializable: a learner serves only those, and a member that answers one serves.
        let probe = async {
            let mut client = Client::connect([self.endpoint()], Some(options)).await?;
            client
                .get(
                    "compat-readiness-probe",
                    Some(etcd_client::GetOptions::new().with_serializable()),
                )
                .await
        };
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Ok(_)) => true,
            // With auth enabled an anonymous read is refused, which proves the member serves.
            Ok(Err(error)) => crate::grpc::grpc_status(&error).is_some_and(|status| {
                [
                    "etcdserver: user name is empty",
                    "etcdserver: permission denied",
                ]
                .contains(&status.message())
            }),
            Err(_) => false,
        }
    }

    /// The readiness probe of an unverified https client URL: `GET /health` answers 200.
    async fn answers_insecure_health(&self) -> bool {
        let Ok(client) = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(PROBE_TIMEOUT)
            .build()
        else {
            return false;
        };
        let probe = client.get(format!("{}/health", self.client_url())).send();
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, probe).await,
            Ok(Ok(response)) if response.status() == reqwest::StatusCode::OK
        )
    }

    fn launch_error(&self, what: String) -> LaunchError {
        let tail = self.log_tail();
        LaunchError {
            port_in_use: tail.to_lowercase().contains("address already in use"),
            message: format!(
                "{} {} (client {}, peer {}, data {}) {what}; last lines of {}:\n{tail}",
                self.options.kind.name(),
                self.options.name,
                self.client_url(),
                self.peer_url(),
                self.data_dir().display(),
                self.log_path().display(),
            ),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The options of [`Server::client`]: bounded connects and requests.
pub fn default_connect_options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(CLIENT_REQUEST_TIMEOUT)
}

pub(crate) fn two_free_ports() -> (u16, u16) {
    // Both listeners stay open until both ports are known, so the two differ.
    let first = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    let second = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    (port_of(&first), port_of(&second))
}

/// `count` distinct free loopback ports, none of them in `taken`.
pub(crate) fn free_ports_except(count: usize, taken: &[u16]) -> Vec<u16> {
    let mut listeners = Vec::new();
    while listeners.len() < count {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
        if !taken.contains(&port_of(&listener)) {
            listeners.push(listener);
        }
    }
    listeners.iter().map(port_of).collect()
}

fn port_of(listener: &TcpListener) -> u16 {
    listener
        .local_addr()
        .expect("local address of a bound listener")
        .port()
}

/// Names of this process's environment variables that start with `prefix`: variables such as
/// `ETCD_BIN` or `ETCDCTL_ENDPOINTS` must not reach a child that reads them as its own
/// configuration.
pub fn inherited_env_names(prefix: &str) -> Vec<OsString> {
    std::env::vars_os()
        .map(|(name, _)| name)
        .filter(|name| name.to_string_lossy().starts_with(prefix))
        .collect()
}
