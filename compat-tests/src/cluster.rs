//! A cluster of several members (keelson, or the real etcd for reference) on loopback, built
//! from etcd's flags as a user would start one by hand: every member gets the same
//! `--initial-cluster`, `--initial-cluster-state new` and token, and the members start together
//! (a member is ready only once the cluster elected a leader and it published itself).
//!
//! Partitions use keelson's test-only fault hook (`KEELSON_PEER_FAULTS=1`, then
//! `PUT /keelson/faults/blocked-peers` on a member's peer URL, docs/clustering.md): the members
//! on each side stop talking to the other side, in both directions.

use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, MemberAddOptions, StatusResponse};

use crate::server::{
    default_connect_options, free_ports_except, ClusterFlags, Server, ServerKind, ServerOptions,
};

/// How long a cluster may take to start (all members ready).
pub const CLUSTER_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an election may take in the tests, from the loss of a leader to a new one.
pub const ELECTION_WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
const START_ATTEMPTS: usize = 3;

pub struct Cluster {
    pub members: Vec<Server>,
    base: ServerOptions,
    token: String,
}

impl Cluster {
    /// `size` members of the kind `COMPAT_SERVER` chooses, with default flags.
    pub async fn start(size: usize) -> Cluster {
        Self::start_with(ServerOptions::from_env(), size).await
    }

    /// `size` members started from `base` (its name is a prefix: members are `<name>-<i>`).
    pub async fn start_with(base: ServerOptions, size: usize) -> Cluster {
        Self::start_tweaked(base, size, |_, _| {}).await
    }

    /// Spawns `size` members whose options `tweak` may change one by one (another token, other
    /// flags), without waiting for any to be ready; for tests of failed bootstraps.
    pub fn spawn_tweaked(
        base: ServerOptions,
        size: usize,
        tweak: impl Fn(usize, &mut ServerOptions),
    ) -> Cluster {
        let token = format!("compat-{}-spawned", std::process::id());
        let ports = free_ports_except(2 * size, &[]);
        let names: Vec<String> = (0..size).map(|i| format!("{}-{i}", base.name)).collect();
        let scheme = peer_scheme(&base);
        let initial_cluster = names
            .iter()
            .enumerate()
            .map(|(i, name)| format!("{name}={scheme}://127.0.0.1:{}", ports[2 * i + 1]))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for i in 0..size {
            let mut options = base.clone().name(names[i].clone());
            options.start_timeout = CLUSTER_START_TIMEOUT;
            options.cluster = Some(ClusterFlags {
                initial_cluster: initial_cluster.clone(),
                state: "new".into(),
                token: token.clone(),
            });
            tweak(i, &mut options);
            let mut member = Server::prepare_with_ports(options, ports[2 * i], ports[2 * i + 1]);
            if let Err(e) = member.spawn() {
                panic!("{}", e.message);
            }
            members.push(member);
        }
        Cluster {
            members,
            base,
            token,
        }
    }

    /// Like [`Cluster::start_with`], with per-member options.
    pub async fn start_tweaked(
        base: ServerOptions,
        size: usize,
        tweak: impl Fn(usize, &mut ServerOptions),
    ) -> Cluster {
        let mut last_error = String::new();
        for attempt in 0..START_ATTEMPTS {
            let token = format!("compat-{}-{attempt}", std::process::id());
            let ports = free_ports_except(2 * size, &[]);
            let names: Vec<String> = (0..size).map(|i| format!("{}-{i}", base.name)).collect();
            let scheme = peer_scheme(&base);
            let peer_url = |i: usize| format!("{scheme}://127.0.0.1:{}", ports[2 * i + 1]);
            let initial_cluster = names
                .iter()
                .enumerate()
                .map(|(i, name)| format!("{name}={}", peer_url(i)))
                .collect::<Vec<_>>()
                .join(",");
            let mut members: Vec<Server> = (0..size)
                .map(|i| {
                    let mut options = base.clone().name(names[i].clone());
                    options.start_timeout = CLUSTER_START_TIMEOUT;
                    options.cluster = Some(ClusterFlags {
                        initial_cluster: initial_cluster.clone(),
                        state: "new".into(),
                        token: token.clone(),
                    });
                    tweak(i, &mut options);
                    Server::prepare_with_ports(options, ports[2 * i], ports[2 * i + 1])
                })
                .collect();
            let mut spawn_error = None;
            for member in &mut members {
                if let Err(e) = member.spawn() {
                    spawn_error = Some(e.message);
                }
            }
            if let Some(message) = spawn_error {
                panic!("{message}");
            }
            let outcome = wait_all_ready(&mut members).await;
            match outcome {
                Ok(()) => {
                    return Cluster {
                        members,
                        base,
                        token,
                    }
                }
                Err((message, port_in_use)) => {
                    for member in &mut members {
                        member.kill();
                    }
                    if !port_in_use {
                        panic!("cluster did not start: {message}");
                    }
                    last_error = message;
                }
            }
        }
        panic!("no free ports for a cluster after {START_ATTEMPTS} attempts: {last_error}");
    }

    pub fn kind(&self) -> ServerKind {
        self.base.kind
    }

    /// The `--initial-cluster-token` the members were started with.
    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// Client endpoints of the running members.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.is_running())
            .map(Server::endpoint)
            .collect()
    }

    /// `--endpoints` for etcdctl: every running member, comma-separated.
    pub fn endpoints_flag(&self) -> String {
        self.endpoints().join(",")
    }

    /// A client that knows every running member.
    pub async fn client(&self) -> Client {
        connect(self.endpoints(), default_connect_options()).await
    }

    /// A client of member `i` only.
    pub async fn member_client(&self, i: usize) -> Client {
        connect(vec![self.members[i].endpoint()], default_connect_options()).await
    }

    /// Status of member `i`, or `None` when it does not answer within a short deadline.
    pub async fn status_of(&self, i: usize) -> Option<StatusResponse> {
        let options = ConnectOptions::new()
            .with_connect_timeout(STATUS_TIMEOUT)
            .with_timeout(STATUS_TIMEOUT);
        let probe = async {
            let mut client = Client::connect([self.members[i].endpoint()], Some(options))
                .await
                .ok()?;
            client.status().await.ok()
        };
        tokio::time::timeout(STATUS_TIMEOUT, probe)
            .await
            .ok()
            .flatten()
    }

    /// The member ID of member `i` (from its Status header).
    pub async fn member_id(&self, i: usize) -> u64 {
        let status = self
            .status_of(i)
            .await
            .unwrap_or_else(|| panic!("member {i} does not answer Status"));
        status
            .header()
            .map(|h| h.member_id())
            .unwrap_or_else(|| panic!("member {i}: Status without a header"))
    }

    /// Waits until the running members other than `excluded` agree on one leader that is one
    /// of them, and returns its index.
    pub async fn wait_for_leader_among(&self, excluded: &[usize], timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let mut ids = Vec::new();
            let mut leaders = Vec::new();
            for i in 0..self.members.len() {
                if excluded.contains(&i) || !self.members[i].is_running() {
                    continue;
                }
                match self.status_of(i).await {
                    Some(status) => {
                        ids.push((i, status.header().map(|h| h.member_id()).unwrap_or(0)));
                        leaders.push(status.leader());
                    }
                    None => leaders.push(0),
                }
            }
            let agreed = leaders
                .first()
                .copied()
                .filter(|l| *l != 0 && leaders.iter().all(|x| x == l));
            if let Some(leader) = agreed {
                if let Some((i, _)) = ids.iter().find(|(_, id)| *id == leader) {
                    return *i;
                }
            }
            let last = format!("leaders seen: {leaders:x?}, members: {ids:x?}");
            if Instant::now() >= deadline {
                panic!("no agreed leader among the running members within {timeout:?}: {last}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The index of the current leader, once the running members agree on one.
    pub async fn leader(&self) -> usize {
        self.wait_for_leader_among(&[], ELECTION_WAIT).await
    }

    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Restarts member `i` on its data dir and waits until it is ready.
    pub async fn restart(&mut self, i: usize) {
        self.members[i].restart().await;
    }

    /// The `--initial-cluster` value describing the members (running or not) plus `extra`.
    fn initial_cluster_with(&self, extra: Option<(&str, &str)>) -> String {
        let mut parts: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name(), m.peer_url()))
            .collect();
        if let Some((name, url)) = extra {
            parts.push(format!("{name}={url}"));
        }
        parts.join(",")
    }

    /// Adds a member through the Cluster API (`member add`, as a learner or a voter), starts
    /// it with `--initial-cluster-state existing`, waits until it is ready, and returns its
    /// index and ID.
    pub async fn add_member(&mut self, learner: bool) -> (usize, u64) {
        let index = self.members.len();
        let name = format!("{}-{index}", self.base.name);
        let taken: Vec<u16> = Vec::new();
        let ports = free_ports_except(2, &taken);
        let peer_url = format!("{}://127.0.0.1:{}", peer_scheme(&self.base), ports[1]);
        let mut client = self.client().await;
        // etcd (and keelson) refuse membership changes until every member has been connected
        // for 5 s: `unhealthy cluster`. Retry that, bounded.
        let deadline = Instant::now() + ELECTION_WAIT;
        let added = loop {
            let options = learner.then(|| MemberAddOptions::new().with_is_learner());
            match client.member_add([peer_url.clone()], options).await {
                Ok(added) => break added,
                Err(e)
                    if e.to_string().contains("unhealthy cluster") && Instant::now() < deadline =>
                {
                    tokio::time::sleep(POLL).await;
                }
                Err(e) => panic!("member add {peer_url}: {e}"),
            }
        };
        let id = added
            .member()
            .map(|m| m.id())
            .unwrap_or_else(|| panic!("member add answered without the member"));
        let mut options = self.base.clone().name(name.clone());
        options.start_timeout = CLUSTER_START_TIMEOUT;
        options.cluster = Some(ClusterFlags {
            initial_cluster: self.initial_cluster_with(Some((&name, &peer_url))),
            state: "existing".into(),
            token: self.token.clone(),
        });
        let mut member = Server::prepare_with_ports(options, ports[0], ports[1]);
        if let Err(e) = member.spawn() {
            panic!("{}", e.message);
        }
        if let Err(e) = member.wait_until_ready().await {
            panic!("new member {name} did not start: {}", e.message);
        }
        self.members.push(member);
        (index, id)
    }

    /// Cuts members `isolated` off from the others (keelson's fault hook): every member stops
    /// talking to every member on the other side.
    pub async fn partition(&self, isolated: &[usize]) {
        assert_eq!(
            self.kind(),
            ServerKind::Keelson,
            "partitions use keelson's fault hook"
        );
        let mut ids = Vec::new();
        for i in 0..self.members.len() {
            ids.push(self.member_id(i).await);
        }
        for i in 0..self.members.len() {
            let blocked: Vec<String> = (0..self.members.len())
                .filter(|j| isolated.contains(&i) != isolated.contains(j))
                .map(|j| format!("{:x}", ids[j]))
                .collect();
            set_blocked(&self.members[i], &blocked.join(",")).await;
        }
    }

    /// Cuts the links between member `i` and `others` at `i`'s end only (keelson's fault hook):
    /// `i` refuses their peer messages and sends them none, while they still try.
    pub async fn cut_links_at(&self, i: usize, others: &[usize]) {
        let mut ids = Vec::new();
        for j in others {
            ids.push(format!("{:x}", self.member_id(*j).await));
        }
        set_blocked(&self.members[i], &ids.join(",")).await;
    }

    /// Restores every link cut by [`Cluster::partition`].
    pub async fn heal(&self) {
        for member in &self.members {
            if member.is_running() {
                set_blocked(member, "").await;
            }
        }
    }
}

fn peer_scheme(options: &ServerOptions) -> &'static str {
    if options.peer_https {
        "https"
    } else {
        "http"
    }
}

/// Options that enable keelson's peer fault hook, for partition tests.
pub fn with_fault_hook(options: ServerOptions) -> ServerOptions {
    options.env("KEELSON_PEER_FAULTS", "1")
}

async fn set_blocked(member: &Server, list: &str) {
    let url = format!("{}/keelson/faults/blocked-peers", member.peer_url());
    let client = reqwest::Client::builder()
        .timeout(STATUS_TIMEOUT)
        .build()
        .expect("an HTTP client");
    let response = client
        .put(&url)
        .body(list.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
    assert!(
        response.status().is_success(),
        "PUT {url}: {}",
        response.status()
    );
}

async fn connect(endpoints: Vec<String>, options: ConnectOptions) -> Client {
    Client::connect(endpoints.clone(), Some(options))
        .await
        .unwrap_or_else(|e| panic!("connect to {endpoints:?}: {e}"))
}

/// Waits for every spawned member in turn: they start together, so this takes as long as the
/// slowest one.
async fn wait_all_ready(members: &mut [Server]) -> Result<(), (String, bool)> {
    for member in members.iter_mut() {
        if let Err(e) = member.wait_until_ready().await {
            return Err((e.message, e.port_in_use));
        }
    }
    Ok(())
}
