//! The KV service through the etcd-client crate: every Range, Put, DeleteRange, Txn and
//! Compact option, every error with its exact gRPC code and message, response headers and
//! size limits. Each test starts its own member, so tests run in parallel.

use compat_tests::grpc::{assert_grpc_error, expect_grpc_error, messages, Code};
use compat_tests::kv::{current_revision, header_revision, keys, put, put_all, revisions, values};
use compat_tests::{Server, ServerKind, ServerOptions};
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions,
    SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, TxnResponse,
};

const MIB: usize = 1024 * 1024;

async fn start() -> (Server, Client) {
    let server = Server::start_default().await;
    let client = server.client().await;
    (server, client)
}

async fn start_with(args: &[&str]) -> (Server, Client) {
    let server = Server::start(ServerOptions::from_env().args(args.iter().copied())).await;
    let client = server.client().await;
    (server, client)
}

async fn get(client: &mut Client, key: &str, options: GetOptions) -> etcd_client::GetResponse {
    client
        .get(key, Some(options))
        .await
        .unwrap_or_else(|error| panic!("range {key:?}: {error}"))
}

async fn txn(client: &mut Client, txn: Txn) -> TxnResponse {
    client
        .txn(txn)
        .await
        .unwrap_or_else(|error| panic!("txn: {error}"))
}

// ---------------------------------------------------------------------------------------
// Range
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn range_of_one_key_returns_only_that_key_with_its_revisions() {
    let (_server, mut client) = start().await;
    put_all(&mut client, &[("a", "1"), ("ab", "2"), ("b", "3")]).await;

    let response = client.get("a", None).await.expect("range a");

    assert_eq!(keys(&response), ["a"]);
    assert_eq!(values(&response), ["1"]);
    assert_eq!(revisions(&response.kvs()[0]), (2, 2, 1, 0));
    assert_eq!((response.count(), response.more()), (1, false));
    assert_eq!(header_revision(response.header()), 4);
}

#[tokio::test]
async fn range_of_a_missing_key_is_empty_at_the_current_revision() {
    let (_server, mut client) = start().await;
    put(&mut client, "present", "v").await;

    let response = client.get("absent", None).await.expect("range absent");

    assert!(response.kvs().is_empty());
    assert_eq!((response.count(), response.more()), (0, false));
    assert_eq!(header_revision(response.header()), 2);
}

#[tokio::test]
async fn range_end_is_exclusive() {
    let (_server, mut client) = start().await;
    put_all(
        &mut client,
        &[("a", "1"), ("ab", "2"), ("b", "3"), ("c", "4")],
    )
    .await;

    let a_to_b = get(&mut client, "a", GetOptions::new().with_range("b")).await;
    let ab_to_c = get(&mut client, "ab", GetOptions::new().with_range("c")).await;

    assert_eq!(keys(&a_to_b), ["a", "ab"]);
    assert_eq!(a_to_b.count(), 2);
    assert_eq!(keys(&ab_to_c), ["ab", "b"]);
}

#[tokio::test]
async fn range_end_before_the_key_is_empty() {
    let (_server, mut client) = start().await;
    put_all(&mut client, &[("a", "1"), ("b", "2"), ("c", "3")]).await;

    let response = get(&mut client, "c", GetOptions::new().with_range("a")).await;

    assert!(response.kvs().is_empty());
    assert_eq!((response.count(), response.more()), (0, false));
    assert_eq!(header_revision(response.header()), 4);
}

#[tokio::test]
async fn range_prefix_covers_exactly_the_keys_with_that_prefix() {
    let (_server, mut client) = start().await;
    put_all(
        &mut client,
        &[
            ("p", "0"),
            ("p/1", "1"),
            ("p/2", "2"),
            ("p0", "3"),
            ("q", "4"),
        ],
    )
    .await;

    let slash = get(&mut client, "p/", GetOptions::new().with_prefix()).await;
    let p = get(&mut client, "p", GetOptions::new().with_prefix()).await;

    assert_eq!(keys(&slash), ["p/1", "p/2"]);
    assert_eq!(keys(&p), ["p", "p/1", "p/2", "p0"]);
}

#[tokio::test]
async fn range_prefix_ending_in_0xff_and_binary_keys() {
    let (_server, mut client) = start().await;
    put(&mut client, b"x\xff".to_vec(), "1").await;
    put(&mut client, b"x\xff\x00\x01".to_vec(), "2").await;
    put(&mut client, b"y".to_vec(), "3").await;

    // The client turns the prefix x\xff into the range [x\xff, y).
    let response = client
        .get(b"x\xff".to_vec(), Some(GetOptions::new().with_prefix()))
        .await
        .expect("prefix range");

    assert_eq!(keys(&response), ["x\\xff", "x\\xff\\x00\\x01"]);
}

#[tokio::test]
async fn range_from_key_and_over_all_keys() {
    let (_server, mut client) = start().await;
    put_all(&mut client, &[("a", "1"), ("b", "2"), ("c", "3")]).await;
    put(&mut client, b"\x00zero".to_vec(), "0").await;

    let from_b = get(&mut client, "b", GetOptions::new().with_from_key()).await;
    let all = get(&mut client, "", GetOptions::new().with_all_keys()).await;

    assert_eq!(keys(&from_b), ["b", "c"]);
    assert_eq!(keys(&all), ["\\x00zero", "a", "b", "c"]);
    assert_eq!(all.count(), 4);
}

#[tokio::test]
async fn range_limit_reports_more_and_the_full_count() {
    let (_server, mut client) = start().await;
    put_all(
        &mut client,
        &[
            ("k1", "1"),
            ("k2", "2"),
            ("k3", "3"),
            ("k4", "4"),
            ("k5", "5"),
        ],
    )
    .await;

    for (limit, expected_keys, expected_more) in [
        (2, vec!["k1", "k2"], true),
        (4, vec!["k1", "k2", "k3", "k4"], true),
        (5, vec!["k1", "k2", "k3", "k4", "k5"], false),
        (6, vec!["k1", "k2", "k3", "k4", "k5"], false),
        (0, vec!["k1", "k2", "k3", "k4", "k5"], false),
    ] {
        let options = GetOptions::new().with_prefix().with_limit(limit);
        let response = get(&mut client, "k", options).await;
        assert_eq!(keys(&response), expected_keys, "limit {limit}");
        assert_eq!(
            (response.count(), response.more()),
            (5, expected_more),
            "(count, more) with limit {limit}"
        );
    }
}

#[tokio::test]
async fn range_at_past_revisions_sees_the_history() {
    let (_server, mut client) = start().await;
    put(&mut client, "k", "v1").await; // 2
    put(&mut client, "k", "v2").await; // 3
    client.delete("k", None).await.expect("delete k"); // 4
    put(&mut client, "k", "v3").await; // 5
    put(&mut client, "other", "x").await; // 6

    let at = |revision| GetOptions::new().with_revision(revision);
    let at_2 = get(&mut client, "k", at(2)).await;
    let at_3 = get(&mut client, "k", at(3)).await;
    let at_4 = get(&mut client, "k", at(4)).await;
    let at_5 = get(&mut client, "k", at(5)).await;
    let all_at_5 = get(&mut client, "", at(5).with_all_keys()).await;

    assert_eq!(values(&at_2), ["v1"]);
    assert_eq!(revisions(&at_2.kvs()[0]), (2, 2, 1, 0));
    assert_eq!(values(&at_3), ["v2"]);
    assert_eq!(revisions(&at_3.kvs()[0]), (2, 3, 2, 0));
    assert!(at_4.kvs().is_empty(), "k is deleted at revision 4");
    assert_eq!(at_4.count(), 0);
    assert_eq!(values(&at_5), ["v3"]);
    assert_eq!(revisions(&at_5.kvs()[0]), (5, 5, 1, 0));
    assert_eq!(keys(&all_at_5), ["k"], "`other` does not exist yet at 5");
    for response in [&at_2, &at_3, &at_4, &at_5, &all_at_5] {
        assert_eq!(
            header_revision(response.header()),
            6,
            "a read at a past revision answers with the current revision in its header"
        );
    }
}

#[tokio::test]
async fn range_at_a_future_revision_is_refused() {
    let (_server, mut client) = start().await;
    put(&mut client, "k", "v").await; // 2

    let result = client
        .get("k", Some(GetOptions::new().with_revision(3)))
        .await;

    assert_grpc_error(result, Code::OutOfRange, messages::FUTURE_REVISION);
}

#[tokio::test]
async fn range_below_the_compacted_revision_is_refused() {
    let (_server, mut client) = start().await;
    put_all(&mut client, &[("k", "v2"), ("k", "v3"), ("k", "v4")]).await;
    client
        .compact(3, None)
        .await
        .expect("compact at revision 3");

    let below = client
        .get("k", Some(GetOptions::new().with_revision(2)))
        .await;
    let at_compaction = get(&mut client, "k", GetOptions::new().with_revision(3)).await;

    assert_grpc_error(below, Code::OutOfRange, messages::COMPACTED);
    assert_eq!(
        values(&at_compaction),
        ["v3"],
        "the compacted revision itself stays readable"
    );
}

/// Writes four keys whose orders by key, version, create revision, mod revision and value
/// all differ, and checks the stored rows:
///
/// | key | version | create | mod | value |
/// |-----|---------|--------|-----|-------|
/// | a   | 1       | 5      | 5   | v-c   |
/// | b   | 2       | 3      | 11  | v-a   |
/// | c   | 3       | 4      | 10  | v-d   |
/// | d   | 4       | 2      | 8   | v-b   |
async fn write_sort_fixture(client: &mut Client) {
    put_all(
        client,
        &[
            ("d", "-"),   // 2
            ("b", "-"),   // 3
            ("c", "-"),   // 4
            ("a", "v-c"), // 5
            ("d", "-"),   // 6
            ("d", "-"),   // 7
            ("d", "v-b"), // 8
            ("c", "-"),   // 9
            ("c", "v-d"), // 10
            ("b", "v-a"), // 11
        ],
    )
    .await;
    let all = get(client, "", GetOptions::new().with_all_keys()).await;
    let rows: Vec<_> = all
        .kvs()
        .iter()
        .map(|kv| (kv.version(), kv.create_revision(), kv.mod_revision()))
        .collect();
    assert_eq!(rows, [(1, 5, 5), (2, 3, 11), (3, 4, 10), (4, 2, 8)]);
    assert_eq!(values(&all), ["v-c", "v-a", "v-d", "v-b"]);
}

#[tokio::test]
async fn range_sorts_by_every_target_in_both_orders() {
    let (_server, mut client) = start().await;
    write_sort_fixture(&mut client).await;

    let ascending = [
        (SortTarget::Key, ["a", "b", "c", "d"]),
        (SortTarget::Version, ["a", "b", "c", "d"]),
        (SortTarget::Create, ["d", "b", "c", "a"]),
        (SortTarget::Mod, ["a", "d", "c", "b"]),
        (SortTarget::Value, ["b", "d", "a", "c"]),
    ];
    for (target, expected) in ascending {
        // etcd-client sends Key+Ascend as sort_order NONE; kv_etcdctl sends it raw.
        let up = GetOptions::new()
            .with_all_keys()
            .with_sort(target, SortOrder::Ascend);
        let down = GetOptions::new()
            .with_all_keys()
            .with_sort(target, SortOrder::Descend);
        let mut expected_descending = expected;
        expected_descending.reverse();

        assert_eq!(
            keys(&get(&mut client, "", up).await),
            expected,
            "{target:?} ascending"
        );
        assert_eq!(
            keys(&get(&mut client, "", down).await),
            expected_descending,
            "{target:?} descending"
        );
    }
}

#[tokio::test]
async fn range_sort_order_none_on_another_target_sorts_ascending() {
    let (_server, mut client) = start().await;
    write_sort_fixture(&mut client).await;

    // etcd: "sort ASCEND by default only when target is not KEY".
    let options = GetOptions::new()
        .with_all_keys()
        .with_sort(SortTarget::Mod, SortOrder::None);
    let response = get(&mut client, "", options).await;

    assert_eq!(keys(&response), ["a", "d", "c", "b"]);
}

#[tokio::test]
async fn range_sort_order_none_with_a_limit_sorts_only_the_first_keys() {
    let (_server, mut client) = start().await;
    // Versions: a 3, b 2, c 1, d 1.
    put_all(
        &mut client,
        &[
            ("a", "-"),
            ("a", "-"),
            ("a", "-"),
            ("b", "-"),
            ("b", "-"),
            ("c", "-"),
            ("d", "-"),
        ],
    )
    .await;

    // etcd 3.4 to 3.6 fetch only limit + 1 keys in key order when sort_order is NONE (the
    // ascending sort of a non-key target is decided afterwards), then sort those and cut:
    // [a, b, c] sorted by version is [c, b, a], cut to [c, b]; a sort over the whole
    // range would give c and d.
    let options = GetOptions::new()
        .with_all_keys()
        .with_sort(SortTarget::Version, SortOrder::None)
        .with_limit(2);
    let response = get(&mut client, "", options).await;

    assert_eq!(keys(&response), ["c", "b"]);
    assert_eq!((response.count(), response.more()), (4, true));
}

#[tokio::test]
async fn range_sort_applies_before_the_limit() {
    let (_server, mut client) = start().await;
    write_sort_fixture(&mut client).await;

    let options = GetOptions::new()
        .with_all_keys()
        .with_sort(SortTarget::Mod, SortOrder::Descend)
        .with_limit(2);
    let response = get(&mut client, "", options).await;

    assert_eq!(keys(&response), ["b", "c"]);
    assert_eq!((response.count(), response.more()), (4, true));
}

#[tokio::test]
async fn range_filters_by_mod_and_create_revision() {
    let (_server, mut client) = start().await;
    write_sort_fixture(&mut client).await;
    let all = || GetOptions::new().with_all_keys();

    let cases = [
        (
            "min_mod 8",
            all().with_min_mod_revision(8),
            vec!["b", "c", "d"],
        ),
        ("max_mod 8", all().with_max_mod_revision(8), vec!["a", "d"]),
        (
            "min_create 4",
            all().with_min_create_revision(4),
            vec!["a", "c"],
        ),
        (
            "max_create 3",
            all().with_max_create_revision(3),
            vec!["b", "d"],
        ),
        (
            "min_mod 8 and max_create 3",
            all().with_min_mod_revision(8).with_max_create_revision(3),
            vec!["b", "d"],
        ),
    ];
    for (name, options, expected) in cases {
        let response = get(&mut client, "", options).await;
        assert_eq!(keys(&response), expected, "{name}");
        // etcd counts the keys in range before it applies these filters.
        assert_eq!((response.count(), response.more()), (4, false), "{name}");
    }

    let limited = get(
        &mut client,
        "",
        all().with_min_mod_revision(8).with_limit(1),
    )
    .await;
    assert_eq!(keys(&limited), ["b"]);
    assert_eq!((limited.count(), limited.more()), (4, true));
}

#[tokio::test]
async fn range_serializable_reads_the_acknowledged_write() {
    let (_server, mut client) = start().await;
    put(&mut client, "k", "v").await;

    let response = get(&mut client, "k", GetOptions::new().with_serializable()).await;

    assert_eq!(values(&response), ["v"]);
    assert_eq!(header_revision(response.header()), 2);
}

#[tokio::test]
async fn range_keys_only_drops_values_and_keeps_everything_else() {
    let (_server, mut client) = start().await;
    put_all(&mut client, &[("a", "1"), ("b", "2"), ("b", "3")]).await;

    let response = get(
        &mut client,
        "",
        GetOptions::new().with_all_keys().with_keys_only(),
    )
    .await;

    assert_eq!(keys(&response), ["a", "b"]);
    assert_eq!(values(&response), ["", ""]);
    assert_eq!(revisions(&response.kvs()[1]), (3, 4, 2, 0));
    assert_eq!(response.count(), 2);
}

#[tokio::test]
async fn range_count_only_returns_the_count_without_pairs() {
    let (_server, mut client) = start().await;
    put_all(&mut client, &[("a", "1"), ("b", "2"), ("c", "3")]).await;

    let count_only = || GetOptions::new().with_all_keys().with_count_only();
    let plain = get(&mut client, "", count_only()).await;
    let limited = get(&mut client, "", count_only().with_limit(1)).await;

    assert!(plain.kvs().is_empty());
    assert_eq!((plain.count(), plain.more()), (3, false));
    assert!(limited.kvs().is_empty());
    assert_eq!(
        (limited.count(), limited.more()),
        (3, false),
        "count_only with a limit: no pairs, so nothing was cut"
    );
}

#[tokio::test]
async fn range_with_an_empty_key_is_refused() {
    let (_server, mut client) = start().await;

    let result = client.get("", None).await;

    assert_grpc_error(result, Code::InvalidArgument, messages::EMPTY_KEY);
}

// ---------------------------------------------------------------------------------------
// Put
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn put_returns_its_revision_and_the_previous_pair_on_request() {
    let (_server, mut client) = start().await;

    let first = client
        .put("k", "v1", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("first put");
    let second = client
        .put("k", "v2", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("second put");
    let third = client.put("k", "v3", None).await.expect("third put");

    assert_eq!(header_revision(first.header()), 2);
    assert!(first.prev_key().is_none(), "a new key has no previous pair");
    assert_eq!(header_revision(second.header()), 3);
    let previous = second.prev_key().expect("previous pair of k");
    assert_eq!(previous.value(), b"v1");
    assert_eq!(revisions(previous), (2, 2, 1, 0));
    assert!(third.prev_key().is_none(), "prev_kv was not asked for");

    let stored = client.get("k", None).await.expect("range k");
    assert_eq!(values(&stored), ["v3"]);
    assert_eq!(revisions(&stored.kvs()[0]), (2, 4, 3, 0));
}

#[tokio::test]
async fn put_ignore_value_keeps_the_value_and_bumps_version() {
    let (_server, mut client) = start().await;
    put(&mut client, "k", "kept").await; // 2

    let response = client
        .put(
            "k",
            "",
            Some(PutOptions::new().with_ignore_value().with_prev_key()),
        )
        .await
        .expect("put with ignore_value");

    assert_eq!(header_revision(response.header()), 3);
    assert_eq!(response.prev_key().map(|kv| kv.value()), Some(&b"kept"[..]));
    let stored = client.get("k", None).await.expect("range k");
    assert_eq!(values(&stored), ["kept"]);
    assert_eq!(revisions(&stored.kvs()[0]), (2, 3, 2, 0));
}

#[tokio::test]
async fn put_ignore_value_on_a_missing_key_is_refused() {
    let (_server, mut client) = start().await;

    let result = client
        .put("missing", "", Some(PutOptions::new().with_ignore_value()))
        .await;

    assert_grpc_error(result, Code::InvalidArgument, messages::KEY_NOT_FOUND);
    assert_eq!(
        current_revision(&mut client).await,
        1,
        "nothing was written"
    );
}

#[tokio::test]
async fn put_ignore_value_with_a_value_is_refused() {
    let (_server, mut client) = start().await;
    put(&mut client, "k", "v").await;

    let result = client
        .put("k", "new", Some(PutOptions::new().with_ignore_value()))
        .await;

    assert_grpc_error(result, Code::InvalidArgument, messages::VALUE_PROVIDED);
}

#[tokio::test]
async fn put_ignore_lease_with_a_lease_is_refused() {
    let (_server, mut client) = start().await;
    put(&mut client, "k", "v").await;

    let options = PutOptions::new().with_ignore_lease().with_lease(7);
    let result = client.put("k", "new", Some(options)).await;

    assert_grpc_error(result, Code::InvalidArgument, messages::LEASE_PROVIDED);
}

#[tokio::test]
async fn put_ignore_lease_on_a_key_without_lease_updates_the_value() {
    let (_server, mut client) = start().await;
    put(&mut client, "k", "v1").await;

    client
        .put("k", "v2", Some(PutOptions::new().with_ignore_lease()))
        .await
        .expect("put with ignore_lease");

    let stored = client.get("k", None).await.expect("range k");
    assert_eq!(values(&stored), ["v2"]);
    assert_eq!(revisions(&stored.kvs()[0]), (2, 3, 2, 0));
}

#[tokio::test]
async fn put_ignore_value_on_a_missing_key_in_a_txn_is_refused() {
    let (_server, mut client) = start().await;

    let result = client
        .txn(Txn::new().and_then([TxnOp::put(
            "missing",
            "",
            Some(PutOptions::new().with_ignore_value()),
        )]))
        .await;

    assert_grpc_error(result, Code::InvalidArgument, messages::KEY_NOT_FOUND);
}

#[tokio::test]
async fn put_ignore_lease_keeps_the_attached_lease() {
    let (_server, mut client) = start().await;
    let lease = client
        .lease_grant(600, None)
        .await
        .expect("grant a lease")
        .id();
    put_with_lease(&mut client, "k", "v1", lease).await;

    client
        .put("k", "v2", Some(PutOptions::new().with_ignore_lease()))
        .await
        .expect("put with ignore_lease");
    let plain = client
        .put("k", "v3", None)
        .await
        .expect("put without lease");

    let stored = client
        .get("k", Some(GetOptions::new().with_revision(3)))
        .await
        .expect("range k at 3");
    assert_eq!(
        stored.kvs()[0].lease(),
        lease,
        "ignore_lease keeps the lease"
    );
    assert_eq!(header_revision(plain.header()), 4);
    let current = client.get("k", None).await.expect("range k");
    assert_eq!(
        current.kvs()[0].lease(),
        0,
        "a plain put detaches the lease"
    );

    let lease_compare = Txn::new().when([Compare::lease("k", CompareOp::Equal, 0)]);
    assert!(txn(&mut client, lease_compare).await.succeeded());
    put_with_lease(&mut client, "k", "v4", lease).await;
    let lease_compare = Txn::new().when([Compare::lease("k", CompareOp::Equal, lease)]);
    assert!(txn(&mut client, lease_compare).await.succeeded());
}

async fn put_with_lease(client: &mut Client, key: &str, value: &str, lease: i64) {
    client
        .put(key, value, Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap_or_else(|error| panic!("put {key} with lease {lease}: {error}"));
}

#[tokio::test]
async fn put_with_a_lease_that_does_not_exist_is_refused() {
    let (_server, mut client) = start().await;

    let result = client
        .put("k", "v", Some(PutOptions::new().with_lease(0x1234_5678)))
        .await;

    assert_grpc_error(result, Code::NotFound, messages::LEASE_NOT_FOUND);
    assert_eq!(
        current_revision(&mut client).await,
        1,
        "nothing was written"
    );
}

#[tokio::test]
async fn put_with_an_empty_key_is_refused() {
    let (_server, mut client) = start().await;

    let result = client.put("", "v", None).await;

    assert_grpc_error(result, Code::InvalidArgument, messages::EMPTY_KEY);
}

// ---------------------------------------------------------------------------------------
// DeleteRange
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn delete_of_one_key_returns_deleted_and_the_previous_pair() {
    let (_server, mut client) = start().await;
    put_all(&mut client, &[("k", "v1"), ("k", "v2"), ("other", "x")]).await;

    let response = client
        .delete("k", Some(DeleteOptions::new().with_prev_key()))
        .await
        .expect("delete k");

    assert_eq!(header_revision(response.header()), 5);
    assert_eq!(response.deleted(), 1);
    let previous = &response.prev_kvs()[0];
    assert_eq!(previous.value(), b"v2");
    assert_eq!(revisions(previous), (2, 3, 2, 0));
    assert!(client.get("k", None).await.expect("range").kvs().is_empty());
}

#[tokio::test]
async fn delete_without_prev_kv_returns_no_pairs() {
    let (_server, mut client) = start().await;
    put(&mut client, "k", "v").await;

    let response = client.delete("k", None).await.expect("delete k");

    assert_eq!(response.deleted(), 1);
    assert!(response.prev_kvs().is_empty());
}

#[tokio::test]
async fn delete_of_a_range_and_of_a_prefix_counts_every_key() {
    let (_server, mut client) = start().await;
    put_all(
        &mut client,
        &[
            ("a", "1"),
            ("b", "2"),
            ("c", "3"),
            ("p/1", "4"),
            ("p/2", "5"),
        ],
    )
    .await; // 2..6

    let range = client
        .delete(
            "a",
            Some(DeleteOptions::new().with_range("c").with_prev_key()),
        )
        .await
        .expect("delete [a, c)");
    let prefix = client
        .delete("p/", Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("delete prefix p/");

    assert_eq!(range.deleted(), 2);
    let previous_keys: Vec<&[u8]> = range.prev_kvs().iter().map(|kv| kv.key()).collect();
    assert_eq!(previous_keys, [b"a", b"b"]);
    assert_eq!(header_revision(range.header()), 7);
    assert_eq!(prefix.deleted(), 2);
    assert_eq!(
        header_revision(prefix.header()),
        8,
        "one revision per delete"
    );
    let left = get(&mut client, "", GetOptions::new().with_all_keys()).await;
    assert_eq!(keys(&left), ["c"]);
}

#[tokio::test]
async fn delete_of_nothing_does_not_bump_the_revision() {
    let (_server, mut client) = start().await;
    put(&mut client, "k", "v").await; // 2

    let response = client
        .delete("absent", Some(DeleteOptions::new().with_prev_key()))
        .await
        .expect("delete absent");

    assert_eq!(response.deleted(), 0);
    assert!(response.prev_kvs().is_empty());
    assert_eq!(header_revision(response.header()), 2);
    assert_eq!(put(&mut client, "k2", "v").await, 3, "the next write is 3");
}

#[tokio::test]
async fn a_key_put_again_after_delete_starts_a_new_life() {
    let (_server, mut client) = start().await;
    put_all(&mut client, &[("k", "v1"), ("k", "v2")]).await; // 2, 3
    client.delete("k", None).await.expect("delete k"); // 4

    put(&mut client, "k", "v3").await; // 5

    let stored = client.get("k", None).await.expect("range k");
    assert_eq!(revisions(&stored.kvs()[0]), (5, 5, 1, 0));
}

#[tokio::test]
async fn delete_with_an_empty_key_is_refused() {
    let (_server, mut client) = start().await;

    let result = client.delete("", None).await;

    assert_grpc_error(result, Code::InvalidArgument, messages::EMPTY_KEY);
}

// ---------------------------------------------------------------------------------------
// Txn
// ---------------------------------------------------------------------------------------

/// What `actual <op> probe` must give for each compare result.
fn compare_holds(op: CompareOp, ordering: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering::{Equal, Greater, Less};
    match op {
        CompareOp::Equal => ordering == Equal,
        CompareOp::Greater => ordering == Greater,
        CompareOp::Less => ordering == Less,
        CompareOp::NotEqual => ordering != Equal,
    }
}

const ALL_COMPARE_OPS: [CompareOp; 4] = [
    CompareOp::Equal,
    CompareOp::Greater,
    CompareOp::Less,
    CompareOp::NotEqual,
];

#[tokio::test]
async fn txn_compares_every_target_with_every_result() {
    let (_server, mut client) = start().await;
    put_all(&mut client, &[("k", "v1"), ("k", "v2")]).await;
    // k: version 2, create 2, mod 3, value v2, lease 0.
    type IntCompare = fn(&'static str, CompareOp, i64) -> Compare;
    let integer_targets: [(&str, IntCompare, i64); 4] = [
        ("version", |k, op, n| Compare::version(k, op, n), 2),
        ("create", |k, op, n| Compare::create_revision(k, op, n), 2),
        ("mod", |k, op, n| Compare::mod_revision(k, op, n), 3),
        ("lease", |k, op, n| Compare::lease(k, op, n), 0),
    ];

    for (name, compare, actual) in integer_targets {
        for probe in [actual - 1, actual, actual + 1] {
            for op in ALL_COMPARE_OPS {
                let response = txn(&mut client, Txn::new().when([compare("k", op, probe)])).await;
                assert_eq!(
                    response.succeeded(),
                    compare_holds(op, actual.cmp(&probe)),
                    "{name}(k) = {actual}, compared {op:?} {probe}"
                );
            }
        }
    }
    for probe in ["v1", "v2", "v3"] {
        for op in ALL_COMPARE_OPS {
            let response = txn(
                &mut client,
                Txn::new().when([Compare::value("k", op, probe)]),
            )
            .await;
            assert_eq!(
                response.succeeded(),
                compare_holds(op, "v2".cmp(probe)),
                "value(k) = v2, compared {op:?} {probe}"
            );
        }
    }
    assert_eq!(
        current_revision(&mut client).await,
        3,
        "compares write nothing"
    );
}

#[tokio::test]
async fn txn_compares_on_a_missing_key() {
    let (_server, mut client) = start().await;
    let cases = [
        (
            "version = 0",
            Compare::version("missing", CompareOp::Equal, 0),
            true,
        ),
        (
            "version < 1",
            Compare::version("missing", CompareOp::Less, 1),
            true,
        ),
        (
            "create = 0",
            Compare::create_revision("missing", CompareOp::Equal, 0),
            true,
        ),
        (
            "mod = 0",
            Compare::mod_revision("missing", CompareOp::Equal, 0),
            true,
        ),
        (
            "mod > 0",
            Compare::mod_revision("missing", CompareOp::Greater, 0),
            false,
        ),
        (
            "lease = 0",
            Compare::lease("missing", CompareOp::Equal, 0),
            true,
        ),
        (
            "value = ''",
            Compare::value("missing", CompareOp::Equal, ""),
            false,
        ),
        (
            "value != x",
            Compare::value("missing", CompareOp::NotEqual, "x"),
            false,
        ),
        (
            "value > ''",
            Compare::value("missing", CompareOp::Greater, ""),
            false,
        ),
    ];

    for (name, compare, expected) in cases {
        let response = txn(&mut client, Txn::new().when([compare])).await;
        assert_eq!(response.succeeded(), expected, "missing key: {name}");
    }
}

#[tokio::test]
async fn txn_compare_with_range_end_must_hold_for_every_key_in_range() {
    let (_server, mut client) = start().await;
    put_all(
        &mut client,
        &[("p/1", "x"), ("p/2", "x"), ("p/2", "x"), ("q", "y")],
    )
    .await;
    // p/1 has version 1, p/2 version 2.
    let cases = [
        (
            "version > 0",
            Compare::version("p/", CompareOp::Greater, 0).with_prefix(),
            true,
        ),
        (
            "version = 1",
            Compare::version("p/", CompareOp::Equal, 1).with_prefix(),
            false,
        ),
        (
            "version < 3",
            Compare::version("p/", CompareOp::Less, 3).with_prefix(),
            true,
        ),
        (
            "value = x",
            Compare::value("p/", CompareOp::Equal, "x").with_prefix(),
            true,
        ),
        (
            "value = x over [p/, r)",
            Compare::value("p/", CompareOp::Equal, "x").with_range("r"),
            false,
        ),
        (
            "version = 0 over an empty range",
            Compare::version("z/", CompareOp::Equal, 0).with_prefix(),
            true,
        ),
        (
            "value = x over an empty range",
            Compare::value("z/", CompareOp::Equal, "x").with_prefix(),
            false,
        ),
    ];

    for (name, compare, expected) in cases {
        let response = txn(&mut client, Txn::new().when([compare])).await;
        assert_eq!(response.succeeded(), expected, "prefix p/: {name}");
    }
}

#[tokio::test]
async fn txn_runs_one_branch_and_bumps_the_revision_once_per_write() {
    let (_server, mut client) = start().await;
    put(&mut client, "k", "v").await; // 2

    let writes = Txn::new()
        .when([Compare::value("k", CompareOp::Equal, "v")])
        .and_then([
            TxnOp::put("x", "1", None),
            TxnOp::put("y", "2", None),
            TxnOp::delete("absent", None),
        ])
        .or_else([TxnOp::put("never", "1", None)]);
    let succeeded = txn(&mut client, writes).await;
    let read_only_failure = Txn::new()
        .when([Compare::value("k", CompareOp::Equal, "other")])
        .and_then([TxnOp::put("never", "1", None)])
        .or_else([TxnOp::get("x", None)]);
    let failed = txn(&mut client, read_only_failure).await;
    let writing_failure = Txn::new()
        .when([Compare::version("k", CompareOp::Greater, 5)])
        .and_then([TxnOp::put("never", "1", None)])
        .or_else([TxnOp::put("w", "3", None)]);
    let failed_with_write = txn(&mut client, writing_failure).await;

    assert!(succeeded.succeeded());
    assert_eq!(header_revision(succeeded.header()), 3);
    assert!(!failed.succeeded());
    assert_eq!(
        header_revision(failed.header()),
        3,
        "a read-only branch writes nothing"
    );
    assert!(!failed_with_write.succeeded());
    assert_eq!(header_revision(failed_with_write.header()), 4);

    let all = get(&mut client, "", GetOptions::new().with_all_keys()).await;
    assert_eq!(keys(&all), ["k", "w", "x", "y"], "`never` was not written");
    let mods: Vec<i64> = all.kvs().iter().map(|kv| kv.mod_revision()).collect();
    assert_eq!(
        mods,
        [2, 4, 3, 3],
        "both puts of one txn share its revision"
    );
}

#[tokio::test]
async fn txn_sub_responses_carry_their_results_and_headers() {
    let (_server, mut client) = start().await;
    put_all(&mut client, &[("a", "1"), ("b", "2")]).await; // 2, 3

    let response = txn(
        &mut client,
        Txn::new().and_then([
            TxnOp::get("a", None),
            TxnOp::put("a", "10", Some(PutOptions::new().with_prev_key())),
            TxnOp::get("a", None),
            TxnOp::delete("b", Some(DeleteOptions::new().with_prev_key())),
            TxnOp::delete("absent", None),
        ]),
    )
    .await;

    assert!(response.succeeded(), "a txn without compares succeeds");
    assert_eq!(header_revision(response.header()), 4);
    let ops = response.op_responses();
    assert_eq!(ops.len(), 5);
    let TxnOpResponse::Get(before) = &ops[0] else {
        panic!("op 0 is a range: {:?}", ops[0])
    };
    let TxnOpResponse::Put(put) = &ops[1] else {
        panic!("op 1 is a put: {:?}", ops[1])
    };
    let TxnOpResponse::Get(after) = &ops[2] else {
        panic!("op 2 is a range: {:?}", ops[2])
    };
    let TxnOpResponse::Delete(deleted) = &ops[3] else {
        panic!("op 3 is a delete: {:?}", ops[3])
    };
    let TxnOpResponse::Delete(nothing) = &ops[4] else {
        panic!("op 4 is a delete: {:?}", ops[4])
    };
    assert_eq!(
        values(before),
        ["1"],
        "a range sees the state before later ops"
    );
    assert_eq!(put.prev_key().map(|kv| kv.value()), Some(&b"1"[..]));
    assert_eq!(
        values(after),
        ["10"],
        "a range sees earlier puts of its txn"
    );
    assert_eq!(revisions(&after.kvs()[0]), (2, 4, 2, 0));
    assert_eq!((deleted.deleted(), deleted.prev_kvs().len()), (1, 1));
    assert_eq!(nothing.deleted(), 0);

    // Sub-response headers hold only the revision (etcd 3.4 to 3.6 fill the IDs and the
    // term only in the outer header): a range before the first write of the txn sees the
    // revision before the txn, every op from the first write on sees the txn's revision.
    let sub_revisions = [
        header_revision(before.header()),
        header_revision(put.header()),
        header_revision(after.header()),
        header_revision(deleted.header()),
        header_revision(nothing.header()),
    ];
    assert_eq!(sub_revisions, [3, 4, 4, 4, 4]);
}

#[tokio::test]
async fn txn_without_compares_or_ops_succeeds_and_writes_nothing() {
    let (_server, mut client) = start().await;
    put(&mut client, "k", "v").await;

    let response = txn(&mut client, Txn::new()).await;

    assert!(response.succeeded());
    assert!(response.op_responses().is_empty());
    assert_eq!(header_revision(response.header()), 2);
}

#[tokio::test]
async fn txn_nested_runs_the_inner_branch_chosen_by_its_own_compares() {
    let (server, mut client) = start().await;
    put(&mut client, "a", "1").await; // 2

    let inner = Txn::new()
        .when([Compare::value("a", CompareOp::Equal, "other")])
        .and_then([TxnOp::put("then", "1", None)])
        .or_else([TxnOp::put("else", "1", None), TxnOp::get("a", None)]);
    let outer = Txn::new()
        .when([Compare::version("a", CompareOp::Equal, 1)])
        .and_then([TxnOp::txn(inner), TxnOp::put("outer", "1", None)]);
    let response = txn(&mut client, outer).await;

    assert!(response.succeeded());
    assert_eq!(header_revision(response.header()), 3);
    let ops = response.op_responses();
    let TxnOpResponse::Txn(nested) = &ops[0] else {
        panic!("op 0 is a txn: {:?}", ops[0])
    };
    assert!(!nested.succeeded(), "the inner compare fails");
    // etcd (3.4 to 3.6) gives a nested txn response an empty header: revision 0. keelson
    // gives every response a full header (shared/etcd-compat.md section 2): the revision after
    // the nested txn's own writes.
    let expected_nested_revision = match server.kind() {
        ServerKind::Etcd => 0,
        ServerKind::Keelson => 3,
    };
    assert_eq!(header_revision(nested.header()), expected_nested_revision);
    if server.kind() == ServerKind::Keelson {
        let header = nested.header().expect("nested header");
        assert_ne!(
            header.cluster_id(),
            0,
            "nested txn header carries the cluster"
        );
        assert_ne!(
            header.member_id(),
            0,
            "nested txn header carries the member"
        );
    }
    let nested_ops = nested.op_responses();
    assert_eq!(nested_ops.len(), 2);
    assert!(matches!(nested_ops[0], TxnOpResponse::Put(_)));
    assert!(matches!(nested_ops[1], TxnOpResponse::Get(_)));
    let all = get(&mut client, "", GetOptions::new().with_all_keys()).await;
    assert_eq!(keys(&all), ["a", "else", "outer"]);
    assert!(all.kvs()[1..].iter().all(|kv| kv.mod_revision() == 3));
}

#[tokio::test]
async fn txn_with_an_empty_key_in_a_compare_or_op_is_refused() {
    let (_server, mut client) = start().await;

    let compare = client
        .txn(Txn::new().when([Compare::version("", CompareOp::Equal, 0)]))
        .await;
    let op = client
        .txn(Txn::new().and_then([TxnOp::put("", "v", None)]))
        .await;

    assert_grpc_error(compare, Code::InvalidArgument, messages::EMPTY_KEY);
    assert_grpc_error(op, Code::InvalidArgument, messages::EMPTY_KEY);
}

fn then_ops(ops: Vec<TxnOp>) -> Txn {
    Txn::new().and_then(ops)
}

fn nested(then: Vec<TxnOp>, otherwise: Vec<TxnOp>) -> TxnOp {
    TxnOp::txn(Txn::new().and_then(then).or_else(otherwise))
}

fn put_op(key: &str) -> TxnOp {
    TxnOp::put(key, "v", None)
}

fn delete_op(key: &str) -> TxnOp {
    TxnOp::delete(key, None)
}

#[tokio::test]
async fn txn_duplicate_keys_follow_etcds_rule() {
    let (_server, mut client) = start().await;
    let delete_a_to_c = || TxnOp::delete("a", Some(DeleteOptions::new().with_range("c")));
    let refused = [
        ("put a twice", then_ops(vec![put_op("a"), put_op("a")])),
        (
            "put a, delete a",
            then_ops(vec![put_op("a"), delete_op("a")]),
        ),
        (
            "delete a, put a",
            then_ops(vec![delete_op("a"), put_op("a")]),
        ),
        (
            "delete [a, c), put b",
            then_ops(vec![delete_a_to_c(), put_op("b")]),
        ),
        (
            "put a, nested put a",
            then_ops(vec![put_op("a"), nested(vec![put_op("a")], vec![])]),
        ),
        (
            "delete a, nested put a",
            then_ops(vec![delete_op("a"), nested(vec![put_op("a")], vec![])]),
        ),
        (
            "nested delete a, put a",
            then_ops(vec![nested(vec![delete_op("a")], vec![]), put_op("a")]),
        ),
        (
            "put a twice in the failure branch",
            Txn::new().or_else([put_op("a"), put_op("a")]),
        ),
    ];
    let accepted = [
        (
            "delete a twice",
            then_ops(vec![delete_op("a"), delete_op("a")]),
        ),
        (
            "get a, put a",
            then_ops(vec![TxnOp::get("a", None), put_op("a")]),
        ),
        (
            "nested put a in both branches",
            then_ops(vec![nested(vec![put_op("a")], vec![put_op("a")])]),
        ),
        (
            "put a in then and in else",
            Txn::new().and_then([put_op("a")]).or_else([put_op("a")]),
        ),
    ];

    for (name, refused_txn) in refused {
        let (code, message) = expect_grpc_error(client.txn(refused_txn).await);
        assert_eq!(
            (code, message.as_str()),
            (Code::InvalidArgument, messages::DUPLICATE_KEY),
            "{name}"
        );
    }
    for (name, accepted_txn) in accepted {
        if let Err(error) = client.txn(accepted_txn).await {
            panic!("{name}: refused with {error}");
        }
    }
}

#[tokio::test]
async fn txn_with_more_ops_than_max_txn_ops_is_refused() {
    let (_server, mut client) = start_with(&["--max-txn-ops", "8"]).await;
    let puts =
        |count: usize| -> Vec<TxnOp> { (0..count).map(|i| put_op(&format!("k{i}"))).collect() };
    let compares = |count: usize| -> Vec<Compare> {
        (0..count)
            .map(|i| Compare::version(format!("k{i}"), CompareOp::Equal, 0))
            .collect()
    };

    let at_limit = client
        .txn(Txn::new().when(compares(8)).and_then(puts(8)))
        .await;
    assert!(at_limit.is_ok(), "8 ops are allowed: {at_limit:?}");
    let over = [
        ("9 success ops", Txn::new().and_then(puts(9))),
        ("9 failure ops", Txn::new().or_else(puts(9))),
        ("9 compares", Txn::new().when(compares(9))),
        (
            // A nested txn may use what the outer one leaves: 8 - 1 = 7 ops.
            "a nested txn of 8 ops inside 1",
            Txn::new().and_then([TxnOp::txn(Txn::new().and_then(puts(8)))]),
        ),
    ];
    for (name, too_big) in over {
        let (code, message) = expect_grpc_error(client.txn(too_big).await);
        assert_eq!(
            (code, message.as_str()),
            (Code::InvalidArgument, messages::TOO_MANY_OPS),
            "{name}"
        );
    }
    let nested_within_budget = Txn::new().and_then([TxnOp::txn(Txn::new().and_then(puts(7)))]);
    assert!(client.txn(nested_within_budget).await.is_ok());
}

// ---------------------------------------------------------------------------------------
// Compact
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn compact_keeps_the_revision_and_refuses_old_and_future_revisions() {
    let (_server, mut client) = start().await;
    put_all(
        &mut client,
        &[("k", "2"), ("k", "3"), ("k", "4"), ("k", "5")],
    )
    .await;

    let compacted = client.compact(3, None).await.expect("compact 3");
    assert_eq!(
        header_revision(compacted.header()),
        5,
        "compaction writes no revision"
    );
    assert_eq!(put(&mut client, "k", "6").await, 6);

    assert_grpc_error(
        client.compact(3, None).await,
        Code::OutOfRange,
        messages::COMPACTED,
    );
    assert_grpc_error(
        client.compact(2, None).await,
        Code::OutOfRange,
        messages::COMPACTED,
    );
    assert_grpc_error(
        client.compact(7, None).await,
        Code::OutOfRange,
        messages::FUTURE_REVISION,
    );
    let at_current = client
        .compact(6, None)
        .await
        .expect("compact at the current revision");
    assert_eq!(header_revision(at_current.header()), 6);
    let history = client
        .get("k", Some(GetOptions::new().with_revision(5)))
        .await;
    assert_grpc_error(history, Code::OutOfRange, messages::COMPACTED);
    let latest = client.get("k", None).await.expect("range k");
    assert_eq!(values(&latest), ["6"]);
    assert_eq!(revisions(&latest.kvs()[0]), (2, 6, 5, 0));
}

#[tokio::test]
async fn compact_physical_answers_after_the_compaction_is_done() {
    let (_server, mut client) = start().await;
    for i in 0..50 {
        put(&mut client, format!("k{}", i % 5), format!("v{i}")).await;
    } // revisions 2..=51
    client.delete("k0", None).await.expect("delete k0"); // 52

    let response = client
        .compact(52, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("physical compaction");

    assert_eq!(header_revision(response.header()), 52);
    let all = get(&mut client, "", GetOptions::new().with_all_keys()).await;
    assert_eq!(keys(&all), ["k1", "k2", "k3", "k4"]);
    assert_eq!(values(&all), ["v46", "v47", "v48", "v49"]);
    assert_eq!(
        all.kvs().iter().map(|kv| kv.version()).collect::<Vec<_>>(),
        [10, 10, 10, 10],
        "compaction keeps versions"
    );
    assert_grpc_error(
        client
            .get("k1", Some(GetOptions::new().with_revision(51)))
            .await,
        Code::OutOfRange,
        messages::COMPACTED,
    );
    assert_eq!(put(&mut client, "k0", "again").await, 53);
    let k0 = client.get("k0", None).await.expect("range k0");
    assert_eq!(revisions(&k0.kvs()[0]), (53, 53, 1, 0));
}

// ---------------------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn every_response_header_has_ids_term_and_the_current_revision() {
    let (_server, mut client) = start().await;
    let mut headers = Vec::new();

    let r = client.put("k", "v", None).await.expect("put");
    headers.push(("put", r.header().cloned(), 2));
    let r = client.get("k", None).await.expect("range");
    headers.push(("range", r.header().cloned(), 2));
    let r = client.delete("absent", None).await.expect("delete nothing");
    headers.push(("delete nothing", r.header().cloned(), 2));
    let r = client.delete("k", None).await.expect("delete");
    headers.push(("delete", r.header().cloned(), 3));
    let r = txn(&mut client, Txn::new().and_then([put_op("t")])).await;
    headers.push(("txn", r.header().cloned(), 4));
    let r = client.compact(2, None).await.expect("compact");
    headers.push(("compact", r.header().cloned(), 4));
    let r = client
        .get("k", Some(GetOptions::new().with_revision(2)))
        .await
        .expect("range at 2");
    headers.push(("range at 2", r.header().cloned(), 4));
    let r = client.status().await.expect("status");
    headers.push(("status", r.header().cloned(), 4));

    let (first_name, first, _) = &headers[0];
    let first = first.clone().expect("put header");
    for (name, header, revision) in &headers {
        let header = header
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no header"));
        assert_ne!(header.cluster_id(), 0, "{name}: cluster_id");
        assert_ne!(header.member_id(), 0, "{name}: member_id");
        assert!(header.raft_term() > 0, "{name}: raft_term");
        assert_eq!(header.revision(), *revision, "{name}: revision");
        assert_eq!(
            (header.cluster_id(), header.member_id()),
            (first.cluster_id(), first.member_id()),
            "{name}: same IDs as {first_name}"
        );
    }

    let members = client.member_list().await.expect("member list");
    let header = members.header().expect("member list header");
    assert_eq!(
        (header.cluster_id(), header.member_id()),
        (first.cluster_id(), first.member_id())
    );
    assert_eq!(members.members().len(), 1);
    assert_eq!(members.members()[0].id(), first.member_id());
}

// ---------------------------------------------------------------------------------------
// Sizes
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_request_over_max_request_bytes_is_refused() {
    let (_server, mut client) = start_with(&["--max-request-bytes", "1024"]).await;

    let small = client.put("k", vec![b'x'; 500], None).await;
    let big = client.put("k", vec![b'x'; 2000], None).await;
    let big_txn = client
        .txn(Txn::new().and_then([
            TxnOp::put("a", vec![b'x'; 600], None),
            TxnOp::put("b", vec![b'x'; 600], None),
        ]))
        .await;

    assert!(small.is_ok(), "500 bytes fit in 1024: {small:?}");
    assert_grpc_error(big, Code::InvalidArgument, messages::REQUEST_TOO_LARGE);
    assert_grpc_error(big_txn, Code::InvalidArgument, messages::REQUEST_TOO_LARGE);
    assert_eq!(
        current_revision(&mut client).await,
        2,
        "only the small put was written"
    );
}

#[tokio::test]
async fn the_default_request_limit_is_one_and_a_half_mib() {
    let (_server, mut client) = start().await;

    let one_mib = client.put("k", vec![b'x'; MIB], None).await;
    // Over 1.5 MiB but under the gRPC receive limit (1.5 MiB + 512 KiB): etcd's own check.
    let over_limit = client.put("k", vec![b'x'; MIB * 7 / 4], None).await;
    // Over the gRPC receive limit: grpc-go refuses the message before etcd sees it.
    let over_grpc_limit = client.put("k", vec![b'x'; MIB * 5 / 2], None).await;

    assert!(one_mib.is_ok(), "a 1 MiB value fits: {one_mib:?}");
    assert_grpc_error(
        over_limit,
        Code::InvalidArgument,
        messages::REQUEST_TOO_LARGE,
    );
    let (code, message) = expect_grpc_error(over_grpc_limit);
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(
        message.starts_with(messages::GRPC_MESSAGE_TOO_LARGE_PREFIX),
        "grpc-go's message for a message over the receive limit, got {message:?}"
    );
    assert_eq!(
        current_revision(&mut client).await,
        2,
        "only the 1 MiB put was written"
    );
}

#[tokio::test]
async fn a_response_over_four_mib_is_sent_whole() {
    let (_server, client) = start().await;
    let mut kv = client.kv_client().max_decoding_message_size(64 * MIB);
    for i in 0..6u8 {
        kv.put(format!("big/{i}"), vec![b'a' + i; MIB], None)
            .await
            .unwrap_or_else(|error| panic!("put big/{i}: {error}"));
    }

    let response = kv
        .get("big/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("a range of 6 MiB");

    assert_eq!(response.kvs().len(), 6);
    assert_eq!(response.count(), 6);
    for (i, kv) in response.kvs().iter().enumerate() {
        assert_eq!(kv.value().len(), MIB, "big/{i}");
        assert!(
            kv.value().iter().all(|&byte| byte == b'a' + i as u8),
            "big/{i}"
        );
    }
}

#[tokio::test]
async fn a_one_mib_key_is_accepted_like_any_key() {
    let (_server, mut client) = start().await;
    let key = vec![b'k'; MIB];

    let put_result = client.put(key.clone(), "v", None).await;
    assert!(
        put_result.is_ok(),
        "etcd has no key size limit of its own: {put_result:?}"
    );

    let response = client
        .get(key.clone(), None)
        .await
        .expect("range the big key");
    assert_eq!(response.kvs().len(), 1);
    assert_eq!(response.kvs()[0].key(), key.as_slice());
    assert_eq!(response.kvs()[0].value(), b"v");
    let deleted = client.delete(key, None).await.expect("delete the big key");
    assert_eq!(deleted.deleted(), 1);
}
