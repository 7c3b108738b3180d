//! The auth store against etcd's rules, applied as raft entries are.

use std::time::Duration;

use bytes::Bytes;
use rocksdb::WriteBatch;
use tempfile::TempDir;

use super::*;
use crate::proto::authpb::permission::Type as PermissionType;
use crate::proto::etcdserverpb::{
    AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleDeleteRequest,
    AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest, AuthUserAddRequest,
    AuthUserChangePasswordRequest, AuthUserDeleteRequest, AuthUserGrantRoleRequest,
    AuthUserRevokeRoleRequest, DeleteRangeRequest, LeaseRevokeRequest, PutRequest, RequestOp,
};
use crate::proto::raftpb::AuthenticateRequest;
use tokens::SimpleTokens;

struct Fixture {
    _dir: TempDir,
    storage: Arc<Storage>,
    auth: AuthStore,
    index: u64,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(&dir.path().join("db")).expect("storage");
        let tokens = TokenProvider::Simple(SimpleTokens::new(Duration::from_secs(60)));
        let auth = AuthStore::open(storage.clone(), tokens, 4).expect("auth store");
        Fixture {
            _dir: dir,
            storage,
            auth,
            index: 10,
        }
    }

    /// Applies `request` from `caller` and commits what it wrote, as the applier does.
    fn apply_as(&mut self, caller: &Caller, request: Request) -> EtcdResult<AuthResult> {
        self.index += 1;
        let mut batch = WriteBatch::default();
        let outcome = self
            .auth
            .apply(&mut batch, self.index, caller, &request)
            .expect("an auth request");
        if outcome.is_ok() {
            self.storage.write(batch).expect("commit");
        }
        outcome
    }

    fn apply(&mut self, request: Request) -> EtcdResult<AuthResult> {
        self.apply_as(&Caller::Member, request)
    }

    fn user_add(&mut self, name: &str) -> EtcdResult<AuthResult> {
        self.apply(Request::AuthUserAdd(AuthUserAddRequest {
            name: name.into(),
            hashed_password: "$2a$04$hash".into(),
            ..Default::default()
        }))
    }

    fn role_add(&mut self, name: &str) -> EtcdResult<AuthResult> {
        self.apply(Request::AuthRoleAdd(AuthRoleAddRequest {
            name: name.into(),
        }))
    }

    fn grant_role(&mut self, user: &str, role: &str) -> EtcdResult<AuthResult> {
        self.apply(Request::AuthUserGrantRole(AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        }))
    }

    fn grant(
        &mut self,
        role: &str,
        kind: PermissionType,
        key: &str,
        end: &str,
    ) -> EtcdResult<AuthResult> {
        self.apply(Request::AuthRoleGrantPermission(
            AuthRoleGrantPermissionRequest {
                name: role.into(),
                perm: Some(Permission {
                    perm_type: kind as i32,
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    range_end: Bytes::copy_from_slice(end.as_bytes()),
                }),
            },
        ))
    }

    fn enable(&mut self) -> EtcdResult<AuthResult> {
        self.apply(Request::AuthEnable(AuthEnableRequest {}))
    }

    /// root (with the root role) and alice (role "app": readwrite on "foo", read on "r/").
    fn with_users(&mut self) {
        self.user_add(ROOT_USER).expect("root");
        self.grant_role(ROOT_USER, ROOT_ROLE).expect("root role");
        self.user_add("alice").expect("alice");
        self.role_add("app").expect("role");
        self.grant("app", PermissionType::Readwrite, "foo", "")
            .expect("grant");
        self.grant("app", PermissionType::Read, "r/", "r0")
            .expect("grant");
        self.grant_role("alice", "app").expect("grant role");
    }

    fn as_user(&self, name: &str) -> Caller {
        Caller::Client(AuthInfo {
            username: name.into(),
            revision: self.auth.revision(),
        })
    }

    fn reopened(&self) -> AuthStore {
        let tokens = TokenProvider::Simple(SimpleTokens::new(Duration::from_secs(60)));
        AuthStore::open(self.storage.clone(), tokens, 4).expect("auth store")
    }
}

fn put(key: &str) -> Request {
    Request::Put(PutRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        ..Default::default()
    })
}

fn no_leases(_: i64) -> EtcdResult<Vec<Bytes>> {
    Ok(Vec::new())
}

#[test]
fn enabling_needs_a_root_user_with_the_root_role() {
    let mut f = Fixture::new();
    assert_eq!(f.enable(), Err(EtcdError::RootUserNotExist));
    f.user_add(ROOT_USER).expect("root");
    assert_eq!(f.enable(), Err(EtcdError::RootRoleNotExist));
    // The root role needs no definition to be granted.
    f.grant_role(ROOT_USER, ROOT_ROLE).expect("root role");
    let revision = f.auth.revision();
    f.enable().expect("enables");
    assert!(f.auth.is_enabled());
    assert_eq!(
        f.auth.revision(),
        revision,
        "enabling does not bump the revision"
    );
    f.enable().expect("enabling twice is no error");
    // While auth is on, root stays.
    assert_eq!(
        f.apply(Request::AuthUserDelete(AuthUserDeleteRequest {
            name: ROOT_USER.into()
        })),
        Err(EtcdError::InvalidAuthMgmt)
    );
    assert_eq!(
        f.apply(Request::AuthUserRevokeRole(AuthUserRevokeRoleRequest {
            name: ROOT_USER.into(),
            role: ROOT_ROLE.into()
        })),
        Err(EtcdError::InvalidAuthMgmt)
    );
    assert_eq!(
        f.apply(Request::AuthRoleDelete(AuthRoleDeleteRequest {
            role: ROOT_ROLE.into()
        })),
        Err(EtcdError::InvalidAuthMgmt)
    );
    f.apply(Request::AuthDisable(AuthDisableRequest {}))
        .expect("disables");
    assert!(!f.auth.is_enabled());
    assert_eq!(
        f.auth.revision(),
        revision + 1,
        "disabling bumps the revision"
    );
}

#[test]
fn users_and_roles_with_etcds_errors() {
    let mut f = Fixture::new();
    assert_eq!(f.user_add(""), Err(EtcdError::UserEmpty));
    f.user_add("bob").expect("adds");
    assert_eq!(f.user_add("bob"), Err(EtcdError::UserAlreadyExists));
    assert_eq!(f.role_add(""), Err(EtcdError::RoleEmpty));
    f.role_add("r").expect("adds");
    assert_eq!(f.role_add("r"), Err(EtcdError::RoleAlreadyExists));
    assert_eq!(f.grant_role("nobody", "r"), Err(EtcdError::UserNotFound));
    assert_eq!(f.grant_role("bob", "nope"), Err(EtcdError::RoleNotFound));
    f.grant_role("bob", "r").expect("grants");
    let revision = f.auth.revision();
    f.grant_role("bob", "r")
        .expect("granting twice is no error");
    assert_eq!(f.auth.revision(), revision, "and changes nothing");
    assert_eq!(
        f.apply(Request::AuthUserRevokeRole(AuthUserRevokeRoleRequest {
            name: "bob".into(),
            role: "other".into()
        })),
        Err(EtcdError::RoleNotGranted)
    );
    assert_eq!(
        f.apply(Request::AuthRoleRevokePermission(
            AuthRoleRevokePermissionRequest {
                role: "r".into(),
                key: Bytes::from_static(b"k"),
                range_end: Bytes::new(),
            }
        )),
        Err(EtcdError::PermissionNotGranted)
    );
    assert_eq!(
        f.apply(Request::AuthRoleRevokePermission(
            AuthRoleRevokePermissionRequest {
                role: "nope".into(),
                ..Default::default()
            }
        )),
        Err(EtcdError::RoleNotFound)
    );
    assert_eq!(
        f.apply(Request::AuthUserChangePassword(
            AuthUserChangePasswordRequest {
                name: "nobody".into(),
                ..Default::default()
            }
        )),
        Err(EtcdError::UserNotFound)
    );
    // Deleting a role takes it from its users.
    f.apply(Request::AuthRoleDelete(AuthRoleDeleteRequest {
        role: "r".into(),
    }))
    .expect("deletes");
    assert_eq!(f.auth.user_get(&Caller::Member, "bob"), Ok(Vec::new()));
    assert_eq!(f.auth.role_list(&Caller::Member), Ok(Vec::new()));
    assert_eq!(
        f.auth.user_list(&Caller::Member),
        Ok(vec!["bob".to_string()])
    );
}

#[test]
fn granting_a_permission_twice_updates_it_and_they_stay_sorted() {
    let mut f = Fixture::new();
    f.role_add("r").expect("adds");
    f.grant("r", PermissionType::Read, "b", "").expect("grants");
    f.grant("r", PermissionType::Read, "a", "c")
        .expect("grants");
    f.grant("r", PermissionType::Write, "b", "")
        .expect("updates");
    let perms = f.auth.role_get(&Caller::Member, "r").expect("role");
    let summary: Vec<(&[u8], &[u8], i32)> = perms
        .iter()
        .map(|p| (p.key.as_ref(), p.range_end.as_ref(), p.perm_type))
        .collect();
    assert_eq!(
        summary,
        vec![
            (&b"a"[..], &b"c"[..], PermissionType::Read as i32),
            (&b"b"[..], &b""[..], PermissionType::Write as i32)
        ]
    );
}

#[test]
fn management_needs_the_root_role_once_enabled() {
    let mut f = Fixture::new();
    f.with_users();
    // Before auth is on, anyone manages.
    f.apply_as(
        &Caller::anonymous(),
        Request::AuthRoleAdd(AuthRoleAddRequest { name: "x".into() }),
    )
    .expect("anyone, while auth is off");
    f.enable().expect("enables");
    let add = || Request::AuthRoleAdd(AuthRoleAddRequest { name: "y".into() });
    assert_eq!(
        f.apply_as(&Caller::anonymous(), add()),
        Err(EtcdError::UserEmpty)
    );
    let alice = f.as_user("alice");
    assert_eq!(f.apply_as(&alice, add()), Err(EtcdError::PermissionDenied));
    let ghost = f.as_user("ghost");
    assert_eq!(f.apply_as(&ghost, add()), Err(EtcdError::UserNotFound));
    let root = f.as_user(ROOT_USER);
    f.apply_as(&root, add()).expect("root manages");
    // Reads: a user sees itself and its roles, not the others.
    let alice = f.as_user("alice");
    assert_eq!(
        f.auth.user_get(&alice, "alice"),
        Ok(vec!["app".to_string()])
    );
    assert_eq!(
        f.auth.user_get(&alice, ROOT_USER),
        Err(EtcdError::PermissionDenied)
    );
    assert!(f.auth.role_get(&alice, "app").is_ok());
    assert_eq!(
        f.auth.role_get(&alice, ROOT_ROLE),
        Err(EtcdError::PermissionDenied)
    );
    assert_eq!(f.auth.user_list(&alice), Err(EtcdError::PermissionDenied));
    assert_eq!(f.auth.status(&alice), Err(EtcdError::PermissionDenied));
    assert_eq!(f.auth.status(&root).map(|(on, _)| on), Ok(true));
}

#[test]
fn writes_are_checked_against_the_entrys_user_and_revision() {
    let mut f = Fixture::new();
    f.with_users();
    f.enable().expect("enables");
    let alice = f.as_user("alice");
    assert_eq!(f.auth.check_entry(&alice, &put("foo"), &no_leases), Ok(()));
    assert_eq!(
        f.auth.check_entry(&alice, &put("bar"), &no_leases),
        Err(EtcdError::PermissionDenied)
    );
    assert_eq!(
        f.auth
            .check_entry(&Caller::anonymous(), &put("foo"), &no_leases),
        Err(EtcdError::UserEmpty)
    );
    assert_eq!(
        f.auth.check_entry(&Caller::Member, &put("bar"), &no_leases),
        Ok(())
    );
    // Read-only permission does not allow a write, nor a delete with prev_kv of a write-only.
    let delete = Request::DeleteRange(DeleteRangeRequest {
        key: Bytes::from_static(b"r/"),
        range_end: Bytes::from_static(b"r0"),
        ..Default::default()
    });
    assert_eq!(
        f.auth.check_entry(&alice, &delete, &no_leases),
        Err(EtcdError::PermissionDenied)
    );
    // A lease with a key alice may not write cannot be revoked by her, nor reused.
    let lease_keys = |_: i64| Ok(vec![Bytes::from_static(b"secret")]);
    let revoke = Request::LeaseRevoke(LeaseRevokeRequest { id: 7 });
    assert_eq!(
        f.auth.check_entry(&alice, &revoke, &lease_keys),
        Err(EtcdError::PermissionDenied)
    );
    let put_on_lease = Request::Put(PutRequest {
        key: Bytes::from_static(b"foo"),
        lease: 7,
        ..Default::default()
    });
    assert_eq!(
        f.auth.check_entry(&alice, &put_on_lease, &lease_keys),
        Err(EtcdError::PermissionDenied)
    );
    // Any change to auth makes credentials checked before it stale.
    f.role_add("later").expect("adds");
    assert_eq!(
        f.auth.check_entry(&alice, &put("foo"), &no_leases),
        Err(EtcdError::AuthOldRevision)
    );
    assert_eq!(
        f.auth.check_unchanged(&alice),
        Err(EtcdError::AuthOldRevision)
    );
    assert_eq!(
        f.auth
            .check_entry(&f.as_user("alice"), &put("foo"), &no_leases),
        Ok(())
    );
}

#[test]
fn txn_compares_and_every_branch_and_nested_txns_are_checked() {
    let mut f = Fixture::new();
    f.with_users();
    f.enable().expect("enables");
    let alice = f.as_user("alice");
    let op_put = |key: &'static str| RequestOp {
        request: Some(TxnOp::RequestPut(PutRequest {
            key: Bytes::from_static(key.as_bytes()),
            ..Default::default()
        })),
    };
    let txn =
        |compare_key: &'static str, success: Vec<RequestOp>, failure: Vec<RequestOp>| TxnRequest {
            compare: vec![crate::proto::etcdserverpb::Compare {
                key: Bytes::from_static(compare_key.as_bytes()),
                ..Default::default()
            }],
            success,
            failure,
        };
    let allowed = txn("r/x", vec![op_put("foo")], vec![op_put("foo")]);
    assert_eq!(f.auth.check_txn(&alice, &allowed), Ok(()));
    let bad_compare = txn("bar", vec![op_put("foo")], vec![]);
    assert_eq!(
        f.auth.check_txn(&alice, &bad_compare),
        Err(EtcdError::PermissionDenied)
    );
    let bad_failure = txn("foo", vec![op_put("foo")], vec![op_put("bar")]);
    assert_eq!(
        f.auth.check_txn(&alice, &bad_failure),
        Err(EtcdError::PermissionDenied)
    );
    let nested = txn(
        "foo",
        vec![RequestOp {
            request: Some(TxnOp::RequestTxn(txn("foo", vec![op_put("bar")], vec![]))),
        }],
        vec![],
    );
    assert_eq!(
        f.auth.check_txn(&alice, &nested),
        Err(EtcdError::PermissionDenied)
    );
}

#[test]
fn simple_tokens_come_from_the_entry_and_die_with_the_password() {
    let mut f = Fixture::new();
    f.with_users();
    let login = |prefix: &str| {
        Request::Authenticate(AuthenticateRequest {
            name: "alice".into(),
            simple_token_prefix: prefix.into(),
        })
    };
    assert_eq!(f.apply(login("abc")), Err(EtcdError::AuthNotEnabled));
    f.enable().expect("enables");
    let result = f.apply(login("abc")).expect("logs in");
    assert_eq!(result.simple_token, format!("abc.{}", f.index));
    let info = f
        .auth
        .token_info(&result.simple_token)
        .expect("known token");
    assert_eq!(info.username, "alice");
    assert_eq!(info.revision, f.auth.revision());
    f.apply(Request::AuthUserChangePassword(
        AuthUserChangePasswordRequest {
            name: "alice".into(),
            hashed_password: "$2a$04$other".into(),
            ..Default::default()
        },
    ))
    .expect("changes the password");
    assert_eq!(f.auth.token_info(&result.simple_token), None);
    assert_eq!(
        f.apply(Request::Authenticate(AuthenticateRequest {
            name: "nobody".into(),
            simple_token_prefix: "x".into(),
        })),
        Err(EtcdError::AuthFailed)
    );
}

#[test]
fn the_store_survives_a_restart() {
    let mut f = Fixture::new();
    f.with_users();
    f.enable().expect("enables");
    let revision = f.auth.revision();
    let reopened = f.reopened();
    assert!(reopened.is_enabled());
    assert_eq!(reopened.revision(), revision);
    assert_eq!(
        reopened.user_list(&Caller::Member),
        Ok(vec!["alice".to_string(), "root".to_string()])
    );
    let alice = Caller::Client(AuthInfo {
        username: "alice".into(),
        revision,
    });
    assert_eq!(
        reopened.check_entry(&alice, &put("foo"), &no_leases),
        Ok(())
    );
    assert_eq!(
        reopened.check_entry(&alice, &put("bar"), &no_leases),
        Err(EtcdError::PermissionDenied)
    );
}

#[test]
fn a_fresh_store_is_at_revision_one_and_off() {
    let f = Fixture::new();
    assert!(!f.auth.is_enabled());
    assert_eq!(f.auth.revision(), 1);
    assert_eq!(f.auth.status(&Caller::anonymous()), Ok((false, 1)));
}

#[test]
fn entries_record_who_asked() {
    assert_eq!(Caller::anonymous().to_entry(), None);
    assert_eq!(Caller::of_entry(None), Caller::anonymous());
    let alice = Caller::Client(AuthInfo {
        username: "alice".into(),
        revision: 4,
    });
    assert_eq!(Caller::of_entry(alice.to_entry().as_ref()), alice);
    assert_eq!(
        Caller::of_entry(Caller::Member.to_entry().as_ref()),
        Caller::Member
    );
}
