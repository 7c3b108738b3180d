//! Starting, timing and stopping one server process (keelson or etcd) for the suite.
//!
//! Every server runs in its own process group and is killed (the whole group, SIGKILL) when
//! its [`ServerProc`] is dropped: at the end of a run, on an error, on a panic, and when the
//! suite is interrupted (the signal handler drops the running suite). As a last resort, if
//! this process dies without running any of that, the kernel sends the server SIGKILL
//! (`PR_SET_PDEATHSIG`).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions};

/// The log line etcd and keelson print once clients may connect.
pub const READY_LINE: &str = "ready to serve client requests";
const POLL: Duration = Duration::from_millis(5);
const PORT_ATTEMPTS: usize = 3;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Keelson,
    Etcd,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Keelson => "keelson",
            Kind::Etcd => "etcd",
        }
    }
}

/// Which binary to start for a kind, and the flags every start gets.
#[derive(Clone, Debug)]
pub struct ServerSpec {
    pub kind: Kind,
    pub bin: PathBuf,
    pub extra_args: Vec<String>,
}

/// A member's place in a cluster of several: its name and the flags every member shares.
#[derive(Clone, Debug)]
struct Membership {
    name: String,
    initial_cluster: String,
    token: String,
}

pub struct ServerProc {
    spec: ServerSpec,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    /// `None` for a single member (named `bench`, flags as in the single-member suite).
    membership: Option<Membership>,
    child: Option<Child>,
    launches: u32,
}

impl ServerProc {
    /// Starts a member on a fresh data directory `<parent>/<label>` and waits until it is
    /// ready (log line and an answered Range), at most `timeout`.
    pub async fn start(
        spec: ServerSpec,
        parent: &Path,
        label: &str,
        timeout: Duration,
    ) -> Result<ServerProc, String> {
        let mut last = String::new();
        for attempt in 0..PORT_ATTEMPTS {
            let dir = parent.join(format!("{label}-{attempt}"));
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .map_err(|e| format!("clean {}: {e}", dir.display()))?;
            }
            std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
            let (client_port, peer_port) = match free_ports(2)?[..] {
                [client, peer] => (client, peer),
                _ => return Err("free_ports returned the wrong count".into()),
            };
            let mut server = ServerProc {
                spec: spec.clone(),
                dir,
                client_port,
                peer_port,
                membership: None,
                child: None,
                launches: 0,
            };
            server.spawn()?;
            match server.wait_ready(timeout).await {
                Ok(_) => return Ok(server),
                Err(e) => {
                    let in_use = server
                        .log_tail(40)
                        .to_lowercase()
                        .contains("address already in use");
                    server.kill();
                    let _ = std::fs::remove_dir_all(&server.dir);
                    if !in_use {
                        return Err(e);
                    }
                    last = e;
                }
            }
        }
        Err(format!(
            "no free ports after {PORT_ATTEMPTS} attempts: {last}"
        ))
    }

    /// Starts `size` members of one new cluster (`--initial-cluster` naming all of them,
    /// `--initial-cluster-state new`, a token of their own), each on a fresh data directory
    /// `<parent>/<label>-m<i>-<attempt>`, and waits until every one is ready, at most `timeout`
    /// in all. Everything else is as for one member: default heartbeat and election timeouts,
    /// fsync on.
    pub async fn start_cluster(
        spec: ServerSpec,
        parent: &Path,
        label: &str,
        size: usize,
        timeout: Duration,
    ) -> Result<Vec<ServerProc>, String> {
        let mut last = String::new();
        for attempt in 0..PORT_ATTEMPTS {
            let ports = free_ports(2 * size)?;
            let names: Vec<String> = (0..size).map(|i| format!("m{i}")).collect();
            let initial_cluster = names
                .iter()
                .enumerate()
                .map(|(i, name)| format!("{name}=http://127.0.0.1:{}", ports[2 * i + 1]))
                .collect::<Vec<_>>()
                .join(",");
            // A token of its own per attempt, so that a member left over from a failed attempt
            // can never be taken for a member of the next one.
            let token = format!("keelson-bench-{}-{label}-{attempt}", std::process::id());
            let mut members = Vec::with_capacity(size);
            for (i, name) in names.iter().enumerate() {
                let dir = parent.join(format!("{label}-{name}-{attempt}"));
                if dir.exists() {
                    std::fs::remove_dir_all(&dir)
                        .map_err(|e| format!("clean {}: {e}", dir.display()))?;
                }
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("create {}: {e}", dir.display()))?;
                members.push(ServerProc {
                    spec: spec.clone(),
                    dir,
                    client_port: ports[2 * i],
                    peer_port: ports[2 * i + 1],
                    membership: Some(Membership {
                        name: name.clone(),
                        initial_cluster: initial_cluster.clone(),
                        token: token.clone(),
                    }),
                    child: None,
                    launches: 0,
                });
            }
            // Every member is spawned before any is waited for: none becomes ready before a
            // quorum runs and has elected a leader.
            let mut outcome = Ok(());
            for member in &mut members {
                if let Err(e) = member.spawn() {
                    outcome = Err(e);
                    break;
                }
            }
            if outcome.is_ok() {
                let deadline = Instant::now() + timeout;
                for member in &mut members {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if let Err(e) = member.wait_ready(left).await {
                        outcome = Err(format!("member {}: {e}", member.name()));
                        break;
                    }
                }
            }
            match outcome {
                Ok(()) => return Ok(members),
                Err(e) => {
                    let in_use = members.iter().any(|m| {
                        m.log_tail(40)
                            .to_lowercase()
                            .contains("address already in use")
                    });
                    for member in &mut members {
                        member.kill();
                        member.remove_files();
                    }
                    if !in_use {
                        return Err(e);
                    }
                    last = e;
                }
            }
        }
        Err(format!(
            "no free ports for a cluster after {PORT_ATTEMPTS} attempts: {last}"
        ))
    }

    /// The member's name (`bench` for a single member).
    pub fn name(&self) -> &str {
        self.membership
            .as_ref()
            .map_or("bench", |m| m.name.as_str())
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The Prometheus text of `/metrics` on the client port (etcd and keelson both serve it),
    /// or `None` if it cannot be read within a second or two.
    pub fn metrics_text(&self) -> Option<String> {
        let timeout = Duration::from_secs(2);
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], self.client_port));
        let mut stream = TcpStream::connect_timeout(&address, timeout).ok()?;
        stream.set_read_timeout(Some(timeout)).ok()?;
        stream.set_write_timeout(Some(timeout)).ok()?;
        // HTTP/1.0: the server closes the connection after the body, so reading to the end
        // needs no parsing of lengths or chunks.
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        (head.split(' ').nth(1) == Some("200")).then(|| body.to_string())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("server-{}.log", self.launches))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn args(&self) -> Vec<String> {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let name = self.name();
        let mut args = vec![
            "--name".into(),
            name.into(),
            "--data-dir".into(),
            self.data_dir().display().to_string(),
            "--listen-client-urls".into(),
            client.clone(),
            "--advertise-client-urls".into(),
            client,
            "--listen-peer-urls".into(),
            peer.clone(),
            "--initial-advertise-peer-urls".into(),
            peer.clone(),
        ];
        match &self.membership {
            None => args.extend(["--initial-cluster".into(), format!("{name}={peer}")]),
            Some(m) => args.extend([
                "--initial-cluster".into(),
                m.initial_cluster.clone(),
                "--initial-cluster-state".into(),
                "new".into(),
                "--initial-cluster-token".into(),
                m.token.clone(),
            ]),
        }
        args.extend(self.spec.extra_args.iter().cloned());
        args
    }

    /// Spawns the process (on the existing data directory) and returns the spawn instant.
    /// Call from the task that owns the suite (see the module comment about PDEATHSIG).
    pub fn spawn(&mut self) -> Result<Instant, String> {
        if self.child.is_some() {
            return Err("server already running".into());
        }
        self.launches += 1;
        let log = File::create(self.log_path()).map_err(|e| format!("create log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("dup log: {e}"))?;
        let mut cmd = Command::new(&self.spec.bin);
        cmd.args(self.args())
            .stdin(Stdio::null())
            .stdout(log2)
            .stderr(log)
            .process_group(0);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(name);
            }
        }
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let t = Instant::now();
        let child = cmd.spawn().map_err(|e| {
            format!(
                "start {} ({}): {e}",
                self.spec.kind.name(),
                self.spec.bin.display()
            )
        })?;
        self.child = Some(child);
        Ok(t)
    }

    /// Waits for the ready line and an answered linearizable Range.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            self.check_alive()?;
            if self.log_contains(READY_LINE)
                && first_read(&self.endpoint(), Duration::from_secs(2))
                    .await
                    .is_ok()
            {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= timeout {
                return Err(format!(
                    "{} not ready after {timeout:?}; last log lines:\n{}",
                    self.spec.kind.name(),
                    self.log_tail(30)
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Spawns the process again on its data directory (after [`ServerProc::kill`]) and waits
    /// until it is ready, at most `timeout`.
    pub async fn restart(&mut self, timeout: Duration) -> Result<Duration, String> {
        self.spawn()?;
        self.wait_ready(timeout).await
    }

    /// Polls with a fresh connection each time until a linearizable Range succeeds; returns
    /// the time since `since` (the spawn instant).
    pub async fn wait_first_read(
        &mut self,
        since: Instant,
        timeout: Duration,
    ) -> Result<Duration, String> {
        loop {
            self.check_alive()?;
            let last_error = match first_read(&self.endpoint(), Duration::from_secs(2)).await {
                Ok(()) => return Ok(since.elapsed()),
                Err(e) => e,
            };
            if since.elapsed() >= timeout {
                return Err(format!(
                    "{} answered no linearizable read within {timeout:?} (last error: {last_error}); last log lines:\n{}",
                    self.spec.kind.name(),
                    self.log_tail(30)
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn check_alive(&mut self) -> Result<(), String> {
        let Some(child) = self.child.as_mut() else {
            return Err("server is not running".into());
        };
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Err(format!(
                    "{} exited with {status}; last log lines:\n{}",
                    self.spec.kind.name(),
                    self.log_tail(30)
                ))
            }
            Ok(None) => Ok(()),
            Err(e) => Err(format!("wait: {e}")),
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.check_alive().is_ok()
    }

    fn log_contains(&self, needle: &str) -> bool {
        let mut text = String::new();
        File::open(self.log_path())
            .and_then(|mut f| f.read_to_string(&mut text))
            .map(|_| text.contains(needle))
            .unwrap_or(false)
    }

    /// SIGKILL to the whole process group, then reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain kill(2) on the group we created.
            unsafe {
                libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM to the process group, without waiting: lets the members of a cluster shut
    /// down together rather than one after another.
    pub fn terminate(&self) {
        if let Some(child) = self.child.as_ref() {
            // SAFETY: plain kill(2) on the group we created.
            unsafe {
                libc::kill(-(child.id() as libc::pid_t), libc::SIGTERM);
            }
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL.
    pub async fn stop(&mut self, grace: Duration) {
        if let Some(child) = self.child.as_mut() {
            // SAFETY: plain kill(2) on the group we created.
            unsafe {
                libc::kill(-(child.id() as libc::pid_t), libc::SIGTERM);
            }
            let start = Instant::now();
            while start.elapsed() < grace {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.kill();
    }

    /// Peak resident set size (VmHWM) in bytes, while the process runs.
    pub fn peak_rss(&self) -> Option<u64> {
        proc_status_kib(self.pid()?, "VmHWM:").map(|k| k * 1024)
    }

    /// Current resident set size (VmRSS) in bytes.
    pub fn rss(&self) -> Option<u64> {
        proc_status_kib(self.pid()?, "VmRSS:").map(|k| k * 1024)
    }

    /// Bytes the data directory occupies on disk (allocated blocks, as `du` counts).
    pub fn disk_usage(&self) -> u64 {
        disk_usage(&self.data_dir())
    }

    /// Removes the member's directory (call after it stopped).
    pub fn remove_files(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One linearizable Range over a fresh connection.
pub async fn first_read(endpoint: &str, limit: Duration) -> Result<(), String> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(500))
        .with_timeout(limit);
    let probe = async {
        let mut client = Client::connect([endpoint], Some(options)).await?;
        client
            .get("keelson-bench-first-read", Some(GetOptions::new()))
            .await
    };
    match tokio::time::timeout(limit, probe).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(crate::report::error_text(&e)),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// Maintenance.Status of one member over a fresh connection: its own member ID and the ID of
/// the leader it knows (0 when it knows none).
pub async fn member_status(endpoint: &str, limit: Duration) -> Result<(u64, u64), String> {
    let options = ConnectOptions::new()
        .with_connect_timeout(limit)
        .with_timeout(limit);
    let probe = async {
        let mut client = Client::connect([endpoint], Some(options)).await?;
        client.status().await
    };
    match tokio::time::timeout(limit, probe).await {
        Ok(Ok(status)) => match status.header() {
            Some(header) => Ok((header.member_id(), status.leader())),
            None => Err("Status answered without a header".into()),
        },
        Ok(Err(e)) => Err(crate::report::error_text(&e)),
        Err(_) => Err(format!("no Status answer within {limit:?}")),
    }
}

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        total += meta.blocks() * 512;
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

/// `n` distinct free loopback ports. The listeners are all held until every port is known, so
/// no port is handed out twice; another process may still take one before the server binds
/// it, which the callers retry.
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()).map_err(|e| e.to_string()))
        .collect()
}
