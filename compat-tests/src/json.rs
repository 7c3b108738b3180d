//! Responses as JSON, normalisation of what legitimately differs between two members, and
//! a readable first difference for differential tests.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use etcd_client::{
    CompactionResponse, DeleteResponse, GetResponse, KeyValue, PutResponse, ResponseHeader,
    TxnOpResponse, TxnResponse,
};
use serde_json::{json, Map, Value};

use crate::grpc::grpc_status;

/// Bytes as text: printable ASCII as is, anything else (and `\`) as `\xNN`.
pub fn bytes_text(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    for &byte in bytes {
        if (byte.is_ascii_graphic() && byte != b'\\') || byte == b' ' {
            text.push(byte as char);
        } else {
            text.push_str(&format!("\\x{byte:02x}"));
        }
    }
    text
}

/// Base64, as etcdctl's `-w json` prints keys and values.
pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    BASE64.encode(bytes)
}

/// The bytes of a base64 string printed by etcdctl's `-w json`.
#[track_caller]
pub fn b64_decode(text: &str) -> Vec<u8> {
    BASE64
        .decode(text)
        .unwrap_or_else(|error| panic!("{text:?} is not base64: {error}"))
}

pub fn header_json(header: Option<&ResponseHeader>) -> Value {
    match header {
        None => Value::Null,
        Some(header) => json!({
            "cluster_id": header.cluster_id(),
            "member_id": header.member_id(),
            "revision": header.revision(),
            "raft_term": header.raft_term(),
        }),
    }
}

pub fn kv_json(kv: &KeyValue) -> Value {
    json!({
        "key": bytes_text(kv.key()),
        "value": bytes_text(kv.value()),
        "create_revision": kv.create_revision(),
        "mod_revision": kv.mod_revision(),
        "version": kv.version(),
        "lease": kv.lease(),
    })
}

fn kvs_json(kvs: &[KeyValue]) -> Value {
    Value::Array(kvs.iter().map(kv_json).collect())
}

pub fn get_json(response: &GetResponse) -> Value {
    json!({
        "header": header_json(response.header()),
        "kvs": kvs_json(response.kvs()),
        "count": response.count(),
        "more": response.more(),
    })
}

pub fn put_json(response: &PutResponse) -> Value {
    json!({
        "header": header_json(response.header()),
        "prev_kv": response.prev_key().map(kv_json),
    })
}

pub fn delete_json(response: &DeleteResponse) -> Value {
    json!({
        "header": header_json(response.header()),
        "deleted": response.deleted(),
        "prev_kvs": kvs_json(response.prev_kvs()),
    })
}

pub fn txn_json(response: &TxnResponse) -> Value {
    let responses: Vec<Value> = response
        .op_responses()
        .iter()
        .map(|op| match op {
            TxnOpResponse::Put(put) => json!({ "put": put_json(put) }),
            TxnOpResponse::Get(get) => json!({ "range": get_json(get) }),
            TxnOpResponse::Delete(delete) => json!({ "delete_range": delete_json(delete) }),
            TxnOpResponse::Txn(txn) => json!({ "txn": txn_json(txn) }),
        })
        .collect();
    json!({
        "header": header_json(response.header()),
        "succeeded": response.succeeded(),
        "responses": responses,
    })
}

pub fn compact_json(response: &CompactionResponse) -> Value {
    json!({ "header": header_json(response.header()) })
}

/// A client error as JSON: gRPC code and message, or the client-side error text.
pub fn error_json(error: &etcd_client::Error) -> Value {
    match grpc_status(error) {
        Some(status) => json!({
            "error": { "code": format!("{:?}", status.code()), "message": status.message() }
        }),
        None => json!({ "client_error": error.to_string() }),
    }
}

/// `{"ok": <to_json(value)>}` or the [`error_json`] of the error.
pub fn result_json<T>(
    result: &Result<T, etcd_client::Error>,
    to_json: impl Fn(&T) -> Value,
) -> Value {
    match result {
        Ok(value) => json!({ "ok": to_json(value) }),
        Err(error) => error_json(error),
    }
}

/// Fields named like this are revisions, shifted by [`Normalizer::revision_offset`].
const REVISION_FIELDS: [&str; 4] = [
    "revision",
    "create_revision",
    "mod_revision",
    "compact_revision",
];

/// Blanks what legitimately differs between two members, recursively in any JSON document.
///
/// By default it blanks `cluster_id`, `member_id` and `raft_term` (generated IDs and election
/// history) wherever they appear. A blanked field keeps its presence: its value becomes
/// [`BLANKED`], so a field that one server sends and the other omits still differs.
#[derive(Clone, Debug)]
pub struct Normalizer {
    /// Each rule is a path of object keys matched against the end of a field's path.
    blanked: Vec<Vec<String>>,
    /// Rules for fields removed outright (present on one side only is then no difference).
    dropped: Vec<Vec<String>>,
    revision_offset: i64,
}

pub const BLANKED: &str = "<normalized>";

impl Default for Normalizer {
    fn default() -> Self {
        ["cluster_id", "member_id", "raft_term"].into_iter().fold(
            Normalizer {
                blanked: Vec::new(),
                dropped: Vec::new(),
                revision_offset: 0,
            },
            Normalizer::blank,
        )
    }
}

impl Normalizer {
    /// Also blank the fields that `path` names: a field name (`leader`, `ID`) anywhere, or
    /// a dotted path of object keys (`Status.version`) that ends where the field is, so that
    /// a rule for the server version does not blank the `version` of every key.
    pub fn blank(mut self, path: &str) -> Self {
        self.blanked
            .push(path.split('.').map(String::from).collect());
        self
    }

    /// Remove the fields that `path` names (same matching as [`Normalizer::blank`]), for
    /// fields one server sends and the other legitimately omits.
    pub fn drop(mut self, path: &str) -> Self {
        self.dropped
            .push(path.split('.').map(String::from).collect());
        self
    }

    /// keelson fills every header (shared/etcd-compat.md section 2: txn sub-responses, nested
    /// txns, MemberList); etcd fills some only partly. Compare headers by their revisions,
    /// except where etcd leaves the revision out (nested txn headers).
    pub fn tolerate_fuller_headers(self) -> Self {
        [
            "header.cluster_id",
            "header.member_id",
            "header.raft_term",
            "txn.header.revision",
            "ResponseTxn.header.revision",
        ]
        .into_iter()
        .fold(self, Normalizer::drop)
    }

    /// Also blank the revisions (`revision`, `create_revision`, `mod_revision`,
    /// `compact_revision`), for sequences whose revisions are not meant to match.
    pub fn blank_revisions(self) -> Self {
        REVISION_FIELDS.into_iter().fold(self, Normalizer::blank)
    }

    /// Subtract `offset` from every non-zero revision field, for a server whose history
    /// starts `offset` revisions later than the reference's.
    pub fn revision_offset(mut self, offset: i64) -> Self {
        self.revision_offset = offset;
        self
    }

    pub fn apply(&self, value: &Value) -> Value {
        self.apply_at(&mut Vec::new(), value)
    }

    fn apply_at(&self, path: &mut Vec<String>, value: &Value) -> Value {
        match value {
            Value::Object(object) => {
                let mut normalized = Map::new();
                for (name, field) in object {
                    path.push(name.clone());
                    if !self.dropped.iter().any(|rule| path.ends_with(rule)) {
                        normalized.insert(name.clone(), self.field(path, field));
                    }
                    path.pop();
                }
                Value::Object(normalized)
            }
            Value::Array(items) => {
                Value::Array(items.iter().map(|item| self.apply_at(path, item)).collect())
            }
            other => other.clone(),
        }
    }

    fn field(&self, path: &mut Vec<String>, value: &Value) -> Value {
        if self.blanked.iter().any(|rule| path.ends_with(rule)) {
            return Value::String(BLANKED.to_string());
        }
        let name = path.last().map(String::as_str).unwrap_or_default();
        if self.revision_offset != 0 && REVISION_FIELDS.contains(&name) {
            if let Some(revision) = value.as_i64().filter(|revision| *revision != 0) {
                return json!(revision - self.revision_offset);
            }
        }
        self.apply_at(path, value)
    }
}

/// [`Normalizer::default`] applied to `value`.
pub fn normalize(value: &Value) -> Value {
    Normalizer::default().apply(value)
}

/// The path and both values of the first place where `expected` and `actual` differ.
pub fn first_difference(expected: &Value, actual: &Value) -> Option<String> {
    difference_at("$", expected, actual)
}

fn difference_at(path: &str, expected: &Value, actual: &Value) -> Option<String> {
    match (expected, actual) {
        (Value::Object(left), Value::Object(right)) => {
            let mut names: Vec<&String> = left.keys().chain(right.keys()).collect();
            names.sort();
            names.dedup();
            names.into_iter().find_map(|name| {
                let child = format!("{path}.{name}");
                match (left.get(name), right.get(name)) {
                    (Some(l), Some(r)) => difference_at(&child, l, r),
                    (l, r) => Some(format!("{child}: {l:?} != {r:?}")),
                }
            })
        }
        (Value::Array(left), Value::Array(right)) if left.len() == right.len() => left
            .iter()
            .zip(right)
            .enumerate()
            .find_map(|(index, (l, r))| difference_at(&format!("{path}[{index}]"), l, r)),
        _ if expected == actual => None,
        _ => Some(format!("{path}: {expected} != {actual}")),
    }
}

/// Panics with the first difference and both documents unless they are equal.
#[track_caller]
pub fn assert_same_json(what: &str, expected: &Value, actual: &Value) {
    if let Some(difference) = first_difference(expected, actual) {
        panic!(
            "{what}: first difference at {difference}\nexpected: {}\nactual:   {}",
            expected, actual
        );
    }
}
