//! Small KV helpers shared by the test suites.

use etcd_client::{Client, GetResponse, KeyValue, ResponseHeader};

use crate::json::bytes_text;

/// A key nobody writes, read to learn the store's current revision.
const REVISION_PROBE_KEY: &str = "compat/revision-probe";

/// The revision of a response header that must be present.
#[track_caller]
pub fn header_revision(header: Option<&ResponseHeader>) -> i64 {
    header.expect("every response carries a header").revision()
}

/// The keys of a Range response, as [`bytes_text`].
pub fn keys(response: &GetResponse) -> Vec<String> {
    response
        .kvs()
        .iter()
        .map(|kv| bytes_text(kv.key()))
        .collect()
}

/// The values of a Range response, as [`bytes_text`].
pub fn values(response: &GetResponse) -> Vec<String> {
    response
        .kvs()
        .iter()
        .map(|kv| bytes_text(kv.value()))
        .collect()
}

/// `(create_revision, mod_revision, version, lease)` of a pair.
pub fn revisions(kv: &KeyValue) -> (i64, i64, i64, i64) {
    (
        kv.create_revision(),
        kv.mod_revision(),
        kv.version(),
        kv.lease(),
    )
}

/// The store's current revision, from the header of a Range.
pub async fn current_revision(client: &mut Client) -> i64 {
    let response = client
        .get(REVISION_PROBE_KEY, None)
        .await
        .expect("range to learn the current revision");
    header_revision(response.header())
}

/// Puts `key = value` and returns the revision of the put.
pub async fn put(client: &mut Client, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> i64 {
    let key = key.into();
    let response = client
        .put(key.clone(), value, None)
        .await
        .unwrap_or_else(|error| panic!("put {}: {error}", bytes_text(&key)));
    header_revision(response.header())
}

/// Puts every pair in order and returns the revision of the last put.
pub async fn put_all(client: &mut Client, pairs: &[(&str, &str)]) -> i64 {
    let mut revision = 0;
    for (key, value) in pairs {
        revision = put(client, *key, *value).await;
    }
    revision
}
