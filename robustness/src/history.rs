//! What the clients did: every request with its invocation and return times (nanoseconds of a
//! monotonic clock since the run started) and its outcome. A failed request whose effect is
//! unknown (a timeout, a broken connection, a leader change) is *indeterminate*: it may or may
//! not have taken effect, at any time after its invocation.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A key-value pair as the store answers it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl fmt::Display for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={} (c{} m{} v{}",
            self.key, self.value, self.create_revision, self.mod_revision, self.version
        )?;
        if self.lease != 0 {
            write!(f, " lease {:x}", self.lease)?;
        }
        write!(f, ")")
    }
}

/// A Range: one key (`end` = None), `[key, end)`, or every key from `key` on (`end` = "\0").
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RangeRequest {
    pub key: String,
    pub end: Option<String>,
    /// 0: the current revision.
    pub revision: i64,
    pub limit: i64,
    pub count_only: bool,
    pub keys_only: bool,
    pub serializable: bool,
}

impl RangeRequest {
    pub fn key(key: impl Into<String>) -> RangeRequest {
        RangeRequest {
            key: key.into(),
            end: None,
            revision: 0,
            limit: 0,
            count_only: false,
            keys_only: false,
            serializable: false,
        }
    }

    pub fn range(key: impl Into<String>, end: impl Into<String>) -> RangeRequest {
        RangeRequest {
            end: Some(end.into()),
            ..RangeRequest::key(key)
        }
    }

    pub fn contains(&self, key: &str) -> bool {
        match &self.end {
            None => key == self.key,
            Some(end) if end == "\0" => key >= self.key.as_str(),
            Some(end) => key >= self.key.as_str() && key < end.as_str(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CompareTarget {
    Version(i64),
    Create(i64),
    Mod(i64),
    Lease(i64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Compare {
    /// A numeric field of the key (0 for a missing key, as etcd compares).
    Field {
        key: String,
        target: CompareTarget,
        op: CompareOp,
    },
    /// The key's value; false whatever `op` when the key does not exist (etcd's rule).
    Value {
        key: String,
        value: String,
        op: CompareOp,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TxnOp {
    Range(RangeRequest),
    Put {
        key: String,
        value: String,
        lease: i64,
    },
    Delete {
        key: String,
        end: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TxnRequest {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Request {
    Range(RangeRequest),
    Put {
        key: String,
        value: String,
        lease: i64,
    },
    Delete {
        key: String,
        end: Option<String>,
    },
    Txn(TxnRequest),
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    LeaseRevoke {
        id: i64,
    },
    LeaseKeepAlive {
        id: i64,
    },
    Compact {
        revision: i64,
    },
    Defragment,
    /// Not a client request: a lease that expired on the server, deleting its keys in one
    /// revision. Synthesized from the watch history (it has no invocation by a client).
    LeaseExpiry {
        id: i64,
        keys: Vec<String>,
    },
}

impl Request {
    /// Every value this request may write (each value the traffic writes is unique).
    pub fn written_values(&self) -> Vec<(&str, &str)> {
        match self {
            Request::Put { key, value, .. } => vec![(key, value)],
            Request::Txn(txn) => txn
                .success
                .iter()
                .chain(&txn.failure)
                .filter_map(|op| match op {
                    TxnOp::Put { key, value, .. } => Some((key.as_str(), value.as_str())),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Whether it can change the key-value state or the set of live leases.
    pub fn may_write(&self) -> bool {
        match self {
            Request::Range(_)
            | Request::LeaseGrant { .. }
            | Request::LeaseKeepAlive { .. }
            | Request::Compact { .. }
            | Request::Defragment => false,
            Request::Put { .. }
            | Request::Delete { .. }
            | Request::LeaseRevoke { .. }
            | Request::LeaseExpiry { .. } => true,
            Request::Txn(txn) => txn
                .success
                .iter()
                .chain(&txn.failure)
                .any(|op| !matches!(op, TxnOp::Range(_))),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    pub count: i64,
    pub more: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TxnResult {
    Range(RangeResult),
    Put,
    Delete { deleted: i64 },
}

/// A successful answer; `revision` is the header's.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Response {
    Range {
        revision: i64,
        result: RangeResult,
    },
    Put {
        revision: i64,
    },
    Delete {
        revision: i64,
        deleted: i64,
    },
    Txn {
        revision: i64,
        succeeded: bool,
        results: Vec<TxnResult>,
    },
    LeaseGrant {
        revision: i64,
        id: i64,
    },
    LeaseRevoke {
        revision: i64,
    },
    /// `ttl` 0: the lease does not exist (etcd answers so rather than with an error).
    LeaseKeepAlive {
        ttl: i64,
    },
    Compact {
        revision: i64,
    },
    Defragment,
}

impl Response {
    pub fn revision(&self) -> Option<i64> {
        match self {
            Response::Range { revision, .. }
            | Response::Put { revision }
            | Response::Delete { revision, .. }
            | Response::Txn { revision, .. }
            | Response::LeaseGrant { revision, .. }
            | Response::LeaseRevoke { revision }
            | Response::Compact { revision } => Some(*revision),
            Response::LeaseKeepAlive { .. } | Response::Defragment => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    Ok(Response),
    /// A refusal that guarantees the request had no effect (a gRPC status that etcd returns
    /// before proposing: invalid argument, lease not found, compacted, future revision...).
    Failed(String),
    /// The request may or may not have taken effect.
    Unknown(String),
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok(_))
    }
}

/// One request of one client.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Operation {
    pub id: usize,
    pub client: usize,
    /// The member the client talked to (its endpoint), for reports.
    pub member: usize,
    pub call: u64,
    pub ret: u64,
    pub request: Request,
    pub outcome: Outcome,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{} client {} member {} [{:.3}s..{:.3}s] {} -> {}",
            self.id,
            self.client,
            self.member,
            self.call as f64 / 1e9,
            self.ret as f64 / 1e9,
            describe_request(&self.request),
            describe_outcome(&self.outcome)
        )
    }
}

fn describe_range(r: &RangeRequest) -> String {
    let mut s = match &r.end {
        None => format!("get {}", r.key),
        Some(end) if end == "\0" => format!("range {}..", r.key),
        Some(end) => format!("range {}..{}", r.key, end),
    };
    if r.revision != 0 {
        s += &format!(" @{}", r.revision);
    }
    if r.limit != 0 {
        s += &format!(" limit {}", r.limit);
    }
    if r.count_only {
        s += " count-only";
    }
    if r.keys_only {
        s += " keys-only";
    }
    if r.serializable {
        s += " serializable";
    }
    s
}

fn describe_txn_op(op: &TxnOp) -> String {
    match op {
        TxnOp::Range(r) => describe_range(r),
        TxnOp::Put { key, value, lease } if *lease != 0 => {
            format!("put {key}={value} lease {lease:x}")
        }
        TxnOp::Put { key, value, .. } => format!("put {key}={value}"),
        TxnOp::Delete { key, end: None } => format!("delete {key}"),
        TxnOp::Delete {
            key,
            end: Some(end),
        } => format!("delete {key}..{end}"),
    }
}

pub fn describe_request(request: &Request) -> String {
    match request {
        Request::Range(r) => describe_range(r),
        Request::Put { key, value, lease } => describe_txn_op(&TxnOp::Put {
            key: key.clone(),
            value: value.clone(),
            lease: *lease,
        }),
        Request::Delete { key, end } => describe_txn_op(&TxnOp::Delete {
            key: key.clone(),
            end: end.clone(),
        }),
        Request::Txn(txn) => {
            let compares: Vec<String> = txn
                .compares
                .iter()
                .map(|c| match c {
                    Compare::Field { key, target, op } => format!("{target:?}({key}) {op:?}"),
                    Compare::Value { key, value, op } => format!("value({key}) {op:?} {value}"),
                })
                .collect();
            let ops = |ops: &[TxnOp]| {
                ops.iter()
                    .map(describe_txn_op)
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            format!(
                "txn if [{}] then [{}] else [{}]",
                compares.join(", "),
                ops(&txn.success),
                ops(&txn.failure)
            )
        }
        Request::LeaseGrant { id, ttl } => format!("lease grant {id:x} ttl {ttl}"),
        Request::LeaseRevoke { id } => format!("lease revoke {id:x}"),
        Request::LeaseKeepAlive { id } => format!("lease keep-alive {id:x}"),
        Request::Compact { revision } => format!("compact {revision}"),
        Request::Defragment => "defragment".into(),
        Request::LeaseExpiry { id, keys } => {
            format!("(server) lease {id:x} expired, deleting {keys:?}")
        }
    }
}

fn describe_range_result(r: &RangeResult) -> String {
    let kvs: Vec<String> = r.kvs.iter().map(ToString::to_string).collect();
    format!(
        "[{}] count {}{}",
        kvs.join(", "),
        r.count,
        if r.more { " more" } else { "" }
    )
}

pub fn describe_outcome(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Failed(e) => format!("failed: {e}"),
        Outcome::Unknown(e) => format!("unknown: {e}"),
        Outcome::Ok(response) => match response {
            Response::Range { revision, result } => {
                format!("rev {revision} {}", describe_range_result(result))
            }
            Response::Put { revision } => format!("rev {revision}"),
            Response::Delete { revision, deleted } => format!("rev {revision} deleted {deleted}"),
            Response::Txn {
                revision,
                succeeded,
                results,
            } => {
                let results: Vec<String> = results
                    .iter()
                    .map(|r| match r {
                        TxnResult::Range(r) => describe_range_result(r),
                        TxnResult::Put => "ok".into(),
                        TxnResult::Delete { deleted } => format!("deleted {deleted}"),
                    })
                    .collect();
                format!(
                    "rev {revision} {} [{}]",
                    if *succeeded { "succeeded" } else { "failed" },
                    results.join("; ")
                )
            }
            Response::LeaseGrant { revision, id } => format!("rev {revision} lease {id:x}"),
            Response::LeaseRevoke { revision } => format!("rev {revision}"),
            Response::LeaseKeepAlive { ttl } => format!("ttl {ttl}"),
            Response::Compact { revision } => format!("rev {revision}"),
            Response::Defragment => "ok".into(),
        },
    }
}
