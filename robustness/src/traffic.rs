//! The traffic: clients spread over every member, each doing one request at a time and
//! recording it (invocation and return times on the run's monotonic clock, the request, the
//! answer or the error).
//!
//! Shapes, after kube-apiserver and etcd's robustness traffic:
//! - kube objects under `/registry/pods/`: create as a txn on mod_revision 0, update and
//!   delete as compare-and-swap on the last mod_revision seen (the else branch reads the key,
//!   as the apiserver does), gets, paginated lists (the first page at the current revision,
//!   the next ones at that revision), count-only ranges;
//! - events under `/registry/events/` attached to short-lived leases;
//! - plain puts, deletes, range deletes, multi-key txns under `/k/`; serializable reads and
//!   reads at an old revision;
//! - a lease client: grants (client-chosen IDs, TTLs of 2-4 s), keep-alives and revokes;
//! - a compactor as kube-apiserver's: a CAS on `compact_rev_key`, then a compaction to the
//!   revision it saw in its previous round;
//! - a defragmenter that defragments a random member now and then.
//!
//! Every value written is unique in the run (client and sequence number), which is what lets
//! the checker find out from the watches which indeterminate requests took effect.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp as EtcdCompareOp, ConnectOptions, DeleteOptions,
    GetOptions, LeaseGrantOptions, PutOptions, Txn, TxnOp as EtcdTxnOp, TxnOpResponse,
};
use tonic::Code;

use crate::history::{
    Compare, CompareOp, CompareTarget, KeyValue, Operation, Outcome, RangeRequest, RangeResult,
    Request, Response, TxnOp, TxnRequest, TxnResult,
};
use crate::rng::Rng;

pub const PODS: &str = "/registry/pods/default/";
pub const EVENTS: &str = "/registry/events/default/";
pub const PLAIN: &str = "/k/";
pub const COMPACT_REV_KEY: &str = "compact_rev_key";
const KEYS_PER_PREFIX: u64 = 8;
const PAGE_SIZE: i64 = 3;
const MAX_PAGES: usize = 10;
/// Each client request's deadline (above etcd's 7 s request timeout, so that the server's own
/// timeout answers first when it can).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// The run's clock: nanoseconds since it started, monotonic.
#[derive(Clone, Copy)]
pub struct Clock(pub Instant);

impl Clock {
    pub fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

pub fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    if let Some(last) = bytes.last_mut() {
        *last += 1;
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

pub fn connect_options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
}

/// A client of one endpoint; connecting never blocks on an unreachable member (the channel
/// connects lazily) but is bounded anyway.
pub async fn connect(endpoint: &str) -> Result<Client, String> {
    match tokio::time::timeout(
        Duration::from_secs(5),
        Client::connect([endpoint], Some(connect_options())),
    )
    .await
    {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(format!("connect to {endpoint}: {e}")),
        Err(_) => Err(format!("connect to {endpoint}: timed out")),
    }
}

/// Whether an error guarantees that nothing happened: statuses etcd answers before it
/// proposes anything. Anything else (unavailable, deadline, leader changed, a transport error)
/// leaves the outcome unknown.
fn classify(error: etcd_client::Error) -> Outcome {
    match &error {
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message().to_string();
            match status.code() {
                Code::InvalidArgument
                | Code::FailedPrecondition
                | Code::NotFound
                | Code::OutOfRange
                | Code::AlreadyExists
                | Code::PermissionDenied
                | Code::Unauthenticated => Outcome::Failed(message),
                _ => Outcome::Unknown(format!("{:?}: {message}", status.code())),
            }
        }
        _ => Outcome::Unknown(error.to_string()),
    }
}

fn kv_of(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: String::from_utf8_lossy(kv.value()).into_owned(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map_or(0, |h| h.revision())
}

fn get_options(range: &RangeRequest) -> GetOptions {
    let mut options = GetOptions::new();
    if let Some(end) = &range.end {
        options = if end == "\0" {
            options.with_from_key()
        } else {
            options.with_range(end.clone())
        };
    }
    if range.revision != 0 {
        options = options.with_revision(range.revision);
    }
    if range.limit != 0 {
        options = options.with_limit(range.limit);
    }
    if range.count_only {
        options = options.with_count_only();
    }
    if range.keys_only {
        options = options.with_keys_only();
    }
    if range.serializable {
        options = options.with_serializable();
    }
    options
}

fn range_result(response: &etcd_client::GetResponse) -> RangeResult {
    RangeResult {
        kvs: response.kvs().iter().map(kv_of).collect(),
        count: response.count(),
        more: response.more(),
    }
}

fn etcd_compare(compare: &Compare) -> EtcdCompare {
    let op = |op: CompareOp| match op {
        CompareOp::Equal => EtcdCompareOp::Equal,
        CompareOp::NotEqual => EtcdCompareOp::NotEqual,
        CompareOp::Greater => EtcdCompareOp::Greater,
        CompareOp::Less => EtcdCompareOp::Less,
    };
    match compare {
        Compare::Field {
            key,
            target,
            op: cmp,
        } => match target {
            CompareTarget::Version(v) => EtcdCompare::version(key.clone(), op(*cmp), *v),
            CompareTarget::Create(v) => EtcdCompare::create_revision(key.clone(), op(*cmp), *v),
            CompareTarget::Mod(v) => EtcdCompare::mod_revision(key.clone(), op(*cmp), *v),
            CompareTarget::Lease(v) => EtcdCompare::lease(key.clone(), op(*cmp), *v),
        },
        Compare::Value {
            key,
            value,
            op: cmp,
        } => EtcdCompare::value(key.clone(), op(*cmp), value.clone()),
    }
}

fn etcd_txn_op(op: &TxnOp) -> EtcdTxnOp {
    match op {
        TxnOp::Range(range) => EtcdTxnOp::get(range.key.clone(), Some(get_options(range))),
        TxnOp::Put { key, value, lease } => EtcdTxnOp::put(
            key.clone(),
            value.clone(),
            (*lease != 0).then(|| PutOptions::new().with_lease(*lease)),
        ),
        TxnOp::Delete { key, end } => EtcdTxnOp::delete(
            key.clone(),
            end.as_ref()
                .map(|end| DeleteOptions::new().with_range(end.clone())),
        ),
    }
}

/// Sends `request` and turns the answer into a recorded outcome.
pub async fn execute(client: &mut Client, request: &Request) -> Outcome {
    let call = async {
        Ok::<Response, etcd_client::Error>(match request {
            Request::Range(range) => {
                let r = client
                    .get(range.key.clone(), Some(get_options(range)))
                    .await?;
                Response::Range {
                    revision: header_revision(r.header()),
                    result: range_result(&r),
                }
            }
            Request::Put { key, value, lease } => {
                let options = (*lease != 0).then(|| PutOptions::new().with_lease(*lease));
                let r = client.put(key.clone(), value.clone(), options).await?;
                Response::Put {
                    revision: header_revision(r.header()),
                }
            }
            Request::Delete { key, end } => {
                let options = end
                    .as_ref()
                    .map(|end| DeleteOptions::new().with_range(end.clone()));
                let r = client.delete(key.clone(), options).await?;
                Response::Delete {
                    revision: header_revision(r.header()),
                    deleted: r.deleted(),
                }
            }
            Request::Txn(txn) => {
                let t = Txn::new()
                    .when(txn.compares.iter().map(etcd_compare).collect::<Vec<_>>())
                    .and_then(txn.success.iter().map(etcd_txn_op).collect::<Vec<_>>())
                    .or_else(txn.failure.iter().map(etcd_txn_op).collect::<Vec<_>>());
                let r = client.txn(t).await?;
                let results = r
                    .op_responses()
                    .iter()
                    .map(|o| match o {
                        TxnOpResponse::Get(g) => TxnResult::Range(range_result(g)),
                        TxnOpResponse::Put(_) => TxnResult::Put,
                        TxnOpResponse::Delete(d) => TxnResult::Delete {
                            deleted: d.deleted(),
                        },
                        TxnOpResponse::Txn(_) => TxnResult::Put,
                    })
                    .collect();
                Response::Txn {
                    revision: header_revision(r.header()),
                    succeeded: r.succeeded(),
                    results,
                }
            }
            Request::LeaseGrant { id, ttl } => {
                let r = client
                    .lease_grant(*ttl, Some(LeaseGrantOptions::new().with_id(*id)))
                    .await?;
                Response::LeaseGrant {
                    revision: header_revision(r.header()),
                    id: r.id(),
                }
            }
            Request::LeaseRevoke { id } => {
                let r = client.lease_revoke(*id).await?;
                Response::LeaseRevoke {
                    revision: header_revision(r.header()),
                }
            }
            Request::LeaseKeepAlive { id } => match client.lease_keep_alive(*id).await {
                Ok(_) => Response::LeaseKeepAlive { ttl: 1 },
                Err(etcd_client::Error::LeaseKeepAliveError(m)) if m.contains("not found") => {
                    Response::LeaseKeepAlive { ttl: 0 }
                }
                Err(e) => return Err(e),
            },
            Request::Compact { revision } => {
                let r = client.compact(*revision, None).await?;
                Response::Compact {
                    revision: header_revision(r.header()),
                }
            }
            Request::Defragment => {
                client.defragment().await?;
                Response::Defragment
            }
            Request::LeaseExpiry { .. } => {
                return Err(etcd_client::Error::InvalidArgs(
                    "a lease expiry is not a request".into(),
                ))
            }
        })
    };
    match tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(2), call).await {
        Ok(Ok(response)) => Outcome::Ok(response),
        Ok(Err(error)) => classify(error),
        Err(_) => Outcome::Unknown("no answer within the client's deadline".into()),
    }
}

/// What every traffic task shares.
#[derive(Clone)]
pub struct Shared {
    pub clock: Clock,
    pub stop: Arc<AtomicBool>,
    /// Leases the lease client believes alive, for the event writers.
    pub leases: Arc<std::sync::Mutex<Vec<i64>>>,
    /// Leases ever granted (or maybe granted), to revoke at the end.
    pub all_leases: Arc<std::sync::Mutex<Vec<i64>>>,
}

impl Shared {
    pub fn new(clock: Clock) -> Shared {
        Shared {
            clock,
            stop: Arc::new(AtomicBool::new(false)),
            leases: Arc::default(),
            all_leases: Arc::default(),
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// One client: one endpoint, one request at a time.
pub struct Recorder {
    pub client_id: usize,
    pub member: usize,
    client: Client,
    shared: Shared,
    pub ops: Vec<Operation>,
}

impl Recorder {
    pub fn new(client_id: usize, member: usize, client: Client, shared: Shared) -> Recorder {
        Recorder {
            client_id,
            member,
            client,
            shared,
            ops: Vec::new(),
        }
    }

    pub async fn run(&mut self, request: Request) -> Outcome {
        let call = self.shared.clock.now();
        let outcome = execute(&mut self.client, &request).await;
        let ret = self.shared.clock.now().max(call + 1);
        self.ops.push(Operation {
            id: 0,
            client: self.client_id,
            member: self.member,
            call,
            ret,
            request,
            outcome: outcome.clone(),
        });
        if !outcome.is_ok() {
            tokio::time::sleep(ERROR_BACKOFF).await;
        }
        outcome
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    KubeCreate,
    KubeUpdate,
    KubeDelete,
    KubeGet,
    KubeList,
    CountOnly,
    StaleGet,
    GetAtRevision,
    Put,
    Delete,
    RangeDelete,
    MultiTxn,
    EventPut,
}

const WEIGHTS: &[(Kind, u64)] = &[
    (Kind::KubeCreate, 8),
    (Kind::KubeUpdate, 20),
    (Kind::KubeDelete, 5),
    (Kind::KubeGet, 10),
    (Kind::KubeList, 6),
    (Kind::CountOnly, 3),
    (Kind::StaleGet, 5),
    (Kind::GetAtRevision, 4),
    (Kind::Put, 10),
    (Kind::Delete, 4),
    (Kind::RangeDelete, 2),
    (Kind::MultiTxn, 6),
    (Kind::EventPut, 6),
];

fn range_all(prefix: &str) -> RangeRequest {
    RangeRequest::range(prefix, prefix_end(prefix))
}

fn key_of(rng: &mut Rng, prefix: &str) -> String {
    format!("{prefix}{}", rng.below(KEYS_PER_PREFIX))
}

fn field(key: &str, target: CompareTarget) -> Compare {
    Compare::Field {
        key: key.to_string(),
        target,
        op: CompareOp::Equal,
    }
}

/// The key-value traffic of one client, until `shared.stop`.
pub async fn kv_client(mut recorder: Recorder, mut rng: Rng, max_ops: usize) -> Vec<Operation> {
    let shared = recorder.shared.clone();
    // The last mod_revision this client saw per key, as kube-apiserver's cache.
    let mut known: HashMap<String, i64> = HashMap::new();
    let mut seen_revision: i64 = 1;
    let mut seq: u64 = 0;
    let client = recorder.client_id;
    let mut value = || {
        seq += 1;
        format!("c{client}-{seq}")
    };
    for _ in 0..max_ops {
        if shared.stopped() {
            break;
        }
        let kind = rng.weighted(WEIGHTS);
        let request = match kind {
            Kind::KubeCreate | Kind::KubeUpdate | Kind::KubeDelete => {
                let key = key_of(&mut rng, PODS);
                let expected = match kind {
                    Kind::KubeCreate => 0,
                    _ => *known.get(&key).unwrap_or(&0),
                };
                let write = match kind {
                    Kind::KubeDelete => TxnOp::Delete {
                        key: key.clone(),
                        end: None,
                    },
                    _ => TxnOp::Put {
                        key: key.clone(),
                        value: value(),
                        lease: 0,
                    },
                };
                Request::Txn(TxnRequest {
                    compares: vec![field(&key, CompareTarget::Mod(expected))],
                    success: vec![write],
                    failure: vec![TxnOp::Range(RangeRequest::key(key))],
                })
            }
            Kind::KubeGet => Request::Range(RangeRequest::key(key_of(&mut rng, PODS))),
            Kind::KubeList => {
                list(&mut recorder, &mut known, &mut seen_revision).await;
                continue;
            }
            Kind::CountOnly => {
                let mut r = range_all("/registry/");
                r.count_only = true;
                Request::Range(r)
            }
            Kind::StaleGet => {
                let mut r = range_all(if rng.chance(50) { PODS } else { PLAIN });
                r.serializable = true;
                Request::Range(r)
            }
            Kind::GetAtRevision => {
                let mut r = range_all(PLAIN);
                r.revision = 1 + rng.below(seen_revision.max(1) as u64) as i64;
                Request::Range(r)
            }
            Kind::Put => Request::Put {
                key: key_of(&mut rng, PLAIN),
                value: value(),
                lease: 0,
            },
            Kind::Delete => Request::Delete {
                key: key_of(&mut rng, PLAIN),
                end: None,
            },
            Kind::RangeDelete => {
                let a = rng.below(KEYS_PER_PREFIX);
                let b = (a + 1 + rng.below(3)).min(KEYS_PER_PREFIX);
                Request::Delete {
                    key: format!("{PLAIN}{a}"),
                    end: Some(format!("{PLAIN}{b}")),
                }
            }
            Kind::MultiTxn => {
                let a = key_of(&mut rng, PLAIN);
                let mut b = key_of(&mut rng, PLAIN);
                if b == a {
                    b = format!(
                        "{PLAIN}{}",
                        (rng.below(KEYS_PER_PREFIX) + 1) % KEYS_PER_PREFIX
                    );
                }
                let c = key_of(&mut rng, PODS);
                let compares = if rng.chance(50) {
                    vec![Compare::Field {
                        key: a.clone(),
                        target: CompareTarget::Version(rng.below(4) as i64),
                        op: if rng.chance(50) {
                            CompareOp::Greater
                        } else {
                            CompareOp::Less
                        },
                    }]
                } else {
                    Vec::new()
                };
                let mut success = vec![TxnOp::Put {
                    key: a.clone(),
                    value: value(),
                    lease: 0,
                }];
                if b != a {
                    success.push(TxnOp::Put {
                        key: b.clone(),
                        value: value(),
                        lease: 0,
                    });
                }
                success.push(TxnOp::Range(range_all(PLAIN)));
                Request::Txn(TxnRequest {
                    compares,
                    success,
                    failure: vec![
                        TxnOp::Delete { key: c, end: None },
                        TxnOp::Range(RangeRequest::key(a)),
                    ],
                })
            }
            Kind::EventPut => {
                let lease = {
                    let leases = shared.leases.lock().map(|l| l.clone()).unwrap_or_default();
                    if leases.is_empty() {
                        0
                    } else {
                        leases[rng.index(leases.len())]
                    }
                };
                Request::Put {
                    key: key_of(&mut rng, EVENTS),
                    value: value(),
                    lease,
                }
            }
        };
        let outcome = recorder.run(request).await;
        if let Outcome::Ok(response) = &outcome {
            if let Some(revision) = response.revision() {
                seen_revision = seen_revision.max(revision);
            }
            learn(
                &mut known,
                recorder.ops.last().map(|o| &o.request),
                response,
            );
        }
    }
    recorder.ops
}

/// Updates the client's view of mod revisions from an answer.
fn learn(known: &mut HashMap<String, i64>, request: Option<&Request>, response: &Response) {
    match (request, response) {
        (
            Some(Request::Txn(txn)),
            Response::Txn {
                revision,
                succeeded,
                results,
            },
        ) => {
            let branch = if *succeeded {
                &txn.success
            } else {
                &txn.failure
            };
            for (op, result) in branch.iter().zip(results) {
                match (op, result) {
                    (TxnOp::Put { key, .. }, _) => {
                        known.insert(key.clone(), *revision);
                    }
                    (TxnOp::Delete { key, .. }, _) => {
                        known.insert(key.clone(), 0);
                    }
                    (TxnOp::Range(r), TxnResult::Range(result)) if r.end.is_none() => {
                        let rev = result.kvs.first().map_or(0, |kv| kv.mod_revision);
                        known.insert(r.key.clone(), rev);
                    }
                    _ => {}
                }
            }
        }
        (Some(Request::Range(r)), Response::Range { result, .. }) if r.end.is_none() => {
            known.insert(
                r.key.clone(),
                result.kvs.first().map_or(0, |kv| kv.mod_revision),
            );
        }
        (Some(Request::Range(_)), Response::Range { result, .. }) => {
            for kv in &result.kvs {
                known.insert(kv.key.clone(), kv.mod_revision);
            }
        }
        _ => {}
    }
}

/// kube-apiserver's paginated list: the first page at the current revision, the next ones at
/// that revision from after the last key.
async fn list(recorder: &mut Recorder, known: &mut HashMap<String, i64>, seen: &mut i64) {
    let mut range = range_all(PODS);
    range.limit = PAGE_SIZE;
    for _ in 0..MAX_PAGES {
        let request = Request::Range(range.clone());
        let outcome = recorder.run(request.clone()).await;
        let Outcome::Ok(response @ Response::Range { revision, result }) = &outcome else {
            return;
        };
        *seen = (*seen).max(*revision);
        learn(known, Some(&request), response);
        let Some(last) = result.kvs.last() else {
            return;
        };
        if !result.more {
            return;
        }
        if range.revision == 0 {
            range.revision = *revision;
        }
        range.key = format!("{}\0", last.key);
    }
}

/// Grants leases with short TTLs, keeps some alive, revokes some, lets others expire.
pub async fn lease_client(
    mut recorder: Recorder,
    mut rng: Rng,
    id_base: i64,
    max_ops: usize,
) -> Vec<Operation> {
    let shared = recorder.shared.clone();
    let mut next_id = id_base;
    let mut mine: Vec<i64> = Vec::new();
    for _ in 0..max_ops {
        if shared.stopped() {
            break;
        }
        let choice = rng.below(100);
        if mine.len() < 3 || choice < 30 {
            next_id += 1;
            let id = next_id;
            if let Ok(mut all) = shared.all_leases.lock() {
                all.push(id);
            }
            let outcome = recorder
                .run(Request::LeaseGrant {
                    id,
                    ttl: rng.between(2, 4) as i64,
                })
                .await;
            if outcome.is_ok() {
                mine.push(id);
            }
        } else if choice < 75 {
            let id = mine[rng.index(mine.len())];
            let outcome = recorder.run(Request::LeaseKeepAlive { id }).await;
            if matches!(outcome, Outcome::Ok(Response::LeaseKeepAlive { ttl: 0 })) {
                mine.retain(|l| *l != id);
            }
        } else {
            let id = mine.remove(rng.index(mine.len()));
            recorder.run(Request::LeaseRevoke { id }).await;
        }
        if let Ok(mut leases) = shared.leases.lock() {
            leases.clone_from(&mine);
        }
        tokio::time::sleep(Duration::from_millis(rng.between(20, 120))).await;
    }
    recorder.ops
}

/// kube-apiserver's compactor: every interval, a CAS on compact_rev_key's version, then (if
/// it won) a compaction to the revision it recorded in the previous round.
pub async fn compactor(
    mut recorder: Recorder,
    interval: Duration,
    max_rounds: usize,
) -> Vec<Operation> {
    let shared = recorder.shared.clone();
    let mut version: i64 = 0;
    let mut previous: Option<i64> = None;
    for round in 0..max_rounds {
        let deadline = Instant::now() + interval;
        while Instant::now() < deadline && !shared.stopped() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if shared.stopped() {
            break;
        }
        let get = recorder
            .run(Request::Range(RangeRequest::key(COMPACT_REV_KEY)))
            .await;
        let Outcome::Ok(Response::Range { revision, result }) = get else {
            continue;
        };
        let current = revision;
        version = result.kvs.first().map_or(version, |kv| kv.version);
        let txn = recorder
            .run(Request::Txn(TxnRequest {
                compares: vec![field(COMPACT_REV_KEY, CompareTarget::Version(version))],
                success: vec![TxnOp::Put {
                    key: COMPACT_REV_KEY.into(),
                    // The revision, made unique by the round: the checker identifies writes by
                    // their values.
                    value: format!("{current}/{round}"),
                    lease: 0,
                }],
                failure: vec![TxnOp::Range(RangeRequest::key(COMPACT_REV_KEY))],
            }))
            .await;
        let Outcome::Ok(Response::Txn { succeeded, .. }) = txn else {
            continue;
        };
        if !succeeded {
            continue;
        }
        version += 1;
        if let Some(target) = previous {
            recorder.run(Request::Compact { revision: target }).await;
        }
        previous = Some(current);
    }
    recorder.ops
}

/// Defragments a random member every `interval`.
pub async fn defragmenter(
    mut recorders: Vec<Recorder>,
    mut rng: Rng,
    interval: Duration,
    max_rounds: usize,
) -> Vec<Operation> {
    let Some(shared) = recorders.first().map(|r| r.shared.clone()) else {
        return Vec::new();
    };
    for _ in 0..max_rounds {
        let deadline = Instant::now() + interval;
        while Instant::now() < deadline && !shared.stopped() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if shared.stopped() {
            break;
        }
        let index = rng.index(recorders.len());
        recorders[index].run(Request::Defragment).await;
    }
    recorders.into_iter().flat_map(|r| r.ops).collect()
}
