//! Authentication and role-based access control, as etcd's auth store.
//!
//! Users, roles, their permissions, the auth switch and the auth revision are state-machine
//! data: every change is a raft entry, applied on every member in log order into the `meta`
//! column family (keys under `auth/`, see docs/storage.md) in the same write batch as the
//! applied index, so they survive restarts and travel in snapshots. Memory holds a copy (with
//! each user's merged permissions) that is replaced whole on every change, so a check never sees
//! half of one.
//!
//! Where etcd checks, keelson checks: writes (Put, DeleteRange, Txn, LeaseRevoke) and auth
//! management when the entry is applied, against the user and auth revision the entry carries
//! (`RequestAuth`); reads (Range, read-only Txn, Watch) on the member that serves them, before
//! reading, and again after (a read that raced an auth change answers `auth revision is old`).
//! `api/` turns a request's token or client certificate into a [`Caller`] through the member.

mod keys;
pub mod password;
pub mod perms;
pub mod tokens;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use prost::Message;
use rocksdb::WriteBatch;

use crate::error::{EtcdError, EtcdResult};
use crate::proto::authpb::{Permission, Role, User, UserAddOptions};
use crate::proto::etcdserverpb::request_op::Request as TxnOp;
use crate::proto::etcdserverpb::TxnRequest;
use crate::proto::raftpb::raft_request::Request;
use crate::proto::raftpb::{AuthResult, RequestAuth};
use crate::storage::{Storage, StorageError, CF_META};
use password::PasswordHasher;
use perms::{Access, UserPermissions};
use tokens::TokenProvider;

pub const ROOT_USER: &str = "root";
pub const ROOT_ROLE: &str = "root";

// The auth store's keys in `meta`. Public for snapshots, which carry them as etcd's `auth`,
// `authUsers` and `authRoles` buckets: the switch is one byte (1 enabled, 0 disabled), the
// revision a u64 BE, users and roles the authpb messages under their names, as etcd has them.
pub const PREFIX: &[u8] = b"auth/";
pub const KEY_ENABLED: &[u8] = b"auth/enabled";
pub const KEY_REVISION: &[u8] = b"auth/revision";
pub const USER_PREFIX: &[u8] = b"auth/user/";
pub const ROLE_PREFIX: &[u8] = b"auth/role/";

/// Who a request's credentials name, and the auth revision they stand for (etcd's `AuthInfo`).
/// The default, an empty name at revision 0, is a request without credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthInfo {
    pub username: String,
    pub revision: u64,
}

/// On whose behalf a request runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The member itself (expiring a lease, a health check): never refused.
    Member,
    /// A client, with what its credentials resolved to.
    Client(AuthInfo),
}

impl Caller {
    /// A client without credentials.
    pub fn anonymous() -> Self {
        Caller::Client(AuthInfo::default())
    }

    /// The caller an applied entry names.
    pub fn of_entry(auth: Option<&RequestAuth>) -> Self {
        match auth {
            Some(a) if a.internal => Caller::Member,
            Some(a) => Caller::Client(AuthInfo {
                username: a.username.clone(),
                revision: a.revision,
            }),
            None => Caller::anonymous(),
        }
    }

    /// What a proposal records about the caller; nothing for a client without credentials,
    /// which keeps such entries as they were before auth existed.
    pub fn to_entry(&self) -> Option<RequestAuth> {
        match self {
            Caller::Member => Some(RequestAuth {
                internal: true,
                ..Default::default()
            }),
            Caller::Client(info) if *info == AuthInfo::default() => None,
            Caller::Client(info) => Some(RequestAuth {
                username: info.username.clone(),
                revision: info.revision,
                internal: false,
            }),
        }
    }
}

/// The auth store's contents at one point of the log.
#[derive(Debug, Clone, Default)]
struct AuthState {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    /// Each user's merged permissions (etcd's range permission cache).
    permissions: HashMap<String, UserPermissions>,
}

impl AuthState {
    fn has_root_role(user: &User) -> bool {
        user.roles.iter().any(|r| r == ROOT_ROLE)
    }

    fn refresh_permissions(&mut self) {
        self.permissions = self
            .users
            .iter()
            .map(|(name, user)| {
                let perms = user
                    .roles
                    .iter()
                    .filter_map(|role| self.roles.get(role))
                    .flat_map(|role| role.key_permission.iter());
                (name.clone(), UserPermissions::merge(perms))
            })
            .collect();
    }

    /// etcd's `IsAdminPermitted`.
    fn admin_permitted(&self, caller: &Caller) -> EtcdResult<()> {
        let Caller::Client(info) = caller else {
            return Ok(());
        };
        if !self.enabled {
            return Ok(());
        }
        if info.username.is_empty() {
            return Err(EtcdError::UserEmpty);
        }
        let user = self
            .users
            .get(&info.username)
            .ok_or(EtcdError::UserNotFound)?;
        if !Self::has_root_role(user) {
            return Err(EtcdError::PermissionDenied);
        }
        Ok(())
    }

    /// etcd's `isOpPermitted`.
    fn op_permitted(
        &self,
        caller: &Caller,
        key: &[u8],
        range_end: &[u8],
        access: Access,
    ) -> EtcdResult<()> {
        let Caller::Client(info) = caller else {
            return Ok(());
        };
        if !self.enabled {
            return Ok(());
        }
        if info.revision == 0 {
            return Err(EtcdError::UserEmpty);
        }
        if info.revision < self.revision {
            tracing::warn!(
                current_auth_revision = self.revision,
                request_auth_revision = info.revision,
                "request auth revision is less than current node auth revision"
            );
            return Err(EtcdError::AuthOldRevision);
        }
        let Some(user) = self.users.get(&info.username) else {
            tracing::warn!(user_name = %info.username, "cannot find a user for permission check");
            return Err(EtcdError::PermissionDenied);
        };
        if Self::has_root_role(user) {
            return Ok(());
        }
        let allowed = self
            .permissions
            .get(&info.username)
            .is_some_and(|p| p.allows(key, range_end, access));
        if allowed {
            Ok(())
        } else {
            Err(EtcdError::PermissionDenied)
        }
    }

    /// etcd's `checkTxnAuth`: every compare and every operation of both branches. Nested
    /// transactions are checked too (etcd 3.4 forgets them, which lets a nested txn bypass its
    /// permissions; keelson does not copy that).
    fn txn_permitted(&self, caller: &Caller, txn: &TxnRequest) -> EtcdResult<()> {
        for compare in &txn.compare {
            self.op_permitted(caller, &compare.key, &compare.range_end, Access::Read)?;
        }
        for op in txn.success.iter().chain(&txn.failure) {
            match &op.request {
                Some(TxnOp::RequestRange(r)) => {
                    self.op_permitted(caller, &r.key, &r.range_end, Access::Read)?
                }
                Some(TxnOp::RequestPut(r)) => {
                    self.op_permitted(caller, &r.key, b"", Access::Write)?
                }
                Some(TxnOp::RequestDeleteRange(r)) => {
                    if r.prev_kv {
                        self.op_permitted(caller, &r.key, &r.range_end, Access::Read)?;
                    }
                    self.op_permitted(caller, &r.key, &r.range_end, Access::Write)?
                }
                Some(TxnOp::RequestTxn(inner)) => self.txn_permitted(caller, inner)?,
                None => {}
            }
        }
        Ok(())
    }
}

/// The auth store of a member.
pub struct AuthStore {
    storage: Arc<Storage>,
    state: RwLock<Arc<AuthState>>,
    /// Copies of the state's switch and revision for the request path's quick checks.
    enabled: AtomicBool,
    revision: AtomicU64,
    tokens: TokenProvider,
    hasher: PasswordHasher,
}

fn decode<M: Message + Default>(raw: &[u8], what: &str) -> Result<M, StorageError> {
    M::decode(raw).map_err(|e| StorageError::Corrupt(format!("unreadable {what}: {e}")))
}

fn load_state(storage: &Storage) -> Result<AuthState, StorageError> {
    let mut state = AuthState {
        // etcd's store starts at auth revision 1.
        revision: 1,
        ..Default::default()
    };
    let mut iter = storage.db().raw_iterator_cf(storage.cf(CF_META));
    iter.seek(PREFIX);
    while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
        if !key.starts_with(PREFIX) {
            break;
        }
        if key == KEY_ENABLED {
            state.enabled = value == [1];
        } else if key == KEY_REVISION {
            let raw: [u8; 8] = value
                .try_into()
                .map_err(|_| StorageError::Corrupt("unreadable auth revision".into()))?;
            state.revision = u64::from_be_bytes(raw);
        } else if let Some(name) = key.strip_prefix(USER_PREFIX) {
            let user: User = decode(value, "user")?;
            state
                .users
                .insert(String::from_utf8_lossy(name).into_owned(), user);
        } else if let Some(name) = key.strip_prefix(ROLE_PREFIX) {
            let role: Role = decode(value, "role")?;
            state
                .roles
                .insert(String::from_utf8_lossy(name).into_owned(), role);
        }
        iter.next();
    }
    iter.status()?;
    state.refresh_permissions();
    Ok(state)
}

fn user_key(name: &str) -> Vec<u8> {
    [USER_PREFIX, name.as_bytes()].concat()
}

fn role_key(name: &str) -> Vec<u8> {
    [ROLE_PREFIX, name.as_bytes()].concat()
}

/// The writes of one auth change, gathered against a copy of the state.
struct Change<'a> {
    state: AuthState,
    batch: &'a mut WriteBatch,
    storage: &'a Storage,
}

impl Change<'_> {
    fn put_user(&mut self, name: &str, user: User) {
        self.batch.put_cf(
            self.storage.cf(CF_META),
            user_key(name),
            user.encode_to_vec(),
        );
        self.state.users.insert(name.to_string(), user);
    }

    fn delete_user(&mut self, name: &str) {
        self.batch
            .delete_cf(self.storage.cf(CF_META), user_key(name));
        self.state.users.remove(name);
    }

    fn put_role(&mut self, name: &str, role: Role) {
        self.batch.put_cf(
            self.storage.cf(CF_META),
            role_key(name),
            role.encode_to_vec(),
        );
        self.state.roles.insert(name.to_string(), role);
    }

    fn delete_role(&mut self, name: &str) {
        self.batch
            .delete_cf(self.storage.cf(CF_META), role_key(name));
        self.state.roles.remove(name);
    }

    fn set_enabled(&mut self, enabled: bool) {
        self.batch
            .put_cf(self.storage.cf(CF_META), KEY_ENABLED, [u8::from(enabled)]);
        self.state.enabled = enabled;
    }

    /// etcd's `commitRevision`: every change of users, roles or permissions bumps it, which
    /// makes credentials checked at an older revision stale.
    fn bump_revision(&mut self) {
        self.state.revision += 1;
        self.batch.put_cf(
            self.storage.cf(CF_META),
            KEY_REVISION,
            self.state.revision.to_be_bytes(),
        );
    }
}

impl AuthStore {
    pub fn open(
        storage: Arc<Storage>,
        tokens: TokenProvider,
        bcrypt_cost: u32,
    ) -> Result<Self, StorageError> {
        let state = load_state(&storage)?;
        if state.enabled {
            tokens.enable();
        }
        Ok(AuthStore {
            enabled: AtomicBool::new(state.enabled),
            revision: AtomicU64::new(state.revision),
            state: RwLock::new(Arc::new(state)),
            storage,
            tokens,
            hasher: PasswordHasher::new(bcrypt_cost),
        })
    }

    /// Reloads after the data underneath was replaced by a snapshot.
    pub fn reload(&self) -> Result<(), StorageError> {
        let state = load_state(&self.storage)?;
        if state.enabled {
            self.tokens.enable();
        } else {
            self.tokens.disable();
        }
        self.publish(state);
        Ok(())
    }

    fn current(&self) -> Arc<AuthState> {
        self.state
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    fn publish(&self, state: AuthState) {
        self.enabled.store(state.enabled, Ordering::Release);
        self.revision.store(state.revision, Ordering::Release);
        crate::metrics::METRICS
            .auth_revision
            .set(state.revision as i64);
        let state = Arc::new(state);
        match self.state.write() {
            Ok(mut current) => *current = state,
            Err(poisoned) => *poisoned.into_inner() = state,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    pub fn tokens(&self) -> &TokenProvider {
        &self.tokens
    }

    pub fn hasher(&self) -> &PasswordHasher {
        &self.hasher
    }

    // ---- checks on the member that serves a request ----

    /// Admin operations need the root role (while auth is enabled).
    pub fn check_admin(&self, caller: &Caller) -> EtcdResult<()> {
        if !self.is_enabled() {
            return Ok(());
        }
        self.current().admin_permitted(caller)
    }

    /// A read of the key or range.
    pub fn check_read(&self, caller: &Caller, key: &[u8], range_end: &[u8]) -> EtcdResult<()> {
        if !self.is_enabled() {
            return Ok(());
        }
        self.current()
            .op_permitted(caller, key, range_end, Access::Read)
    }

    /// A transaction served without consensus (read-only).
    pub fn check_txn(&self, caller: &Caller, txn: &TxnRequest) -> EtcdResult<()> {
        if !self.is_enabled() {
            return Ok(());
        }
        self.current().txn_permitted(caller, txn)
    }

    /// After a read: credentials checked at another auth revision than the current one may no
    /// longer allow what was read (etcd's `doSerialize`).
    pub fn check_unchanged(&self, caller: &Caller) -> EtcdResult<()> {
        match caller {
            Caller::Client(info) if info.revision != 0 && info.revision != self.revision() => {
                Err(EtcdError::AuthOldRevision)
            }
            _ => Ok(()),
        }
    }

    /// The user and revision a token names: `None` if it is unknown, expired or forged.
    pub fn token_info(&self, token: &str) -> Option<AuthInfo> {
        self.tokens.info(token, self.revision())
    }

    /// etcd's `CheckPassword`: the auth revision at which the password was right.
    pub async fn check_password(&self, name: &str, password: String) -> EtcdResult<u64> {
        let (hash, revision) = {
            let state = self.current();
            if !state.enabled {
                return Err(EtcdError::AuthNotEnabled);
            }
            let user = state.users.get(name).ok_or(EtcdError::AuthFailed)?;
            if user.options.as_ref().is_some_and(|o| o.no_password) {
                return Err(EtcdError::NoPasswordUser);
            }
            (
                String::from_utf8_lossy(&user.password).into_owned(),
                state.revision,
            )
        };
        if !self.hasher.verify(password, hash).await? {
            tracing::info!(user_name = %name, "invalid password");
            return Err(EtcdError::AuthFailed);
        }
        Ok(revision)
    }

    /// etcd's `AuthStatus` (3.5): admin only.
    pub fn status(&self, caller: &Caller) -> EtcdResult<(bool, u64)> {
        let state = self.current();
        state.admin_permitted(caller)?;
        Ok((state.enabled, state.revision))
    }

    /// A user's roles: for admins, or for the user itself.
    pub fn user_get(&self, caller: &Caller, name: &str) -> EtcdResult<Vec<String>> {
        let state = self.current();
        if let Err(e) = state.admin_permitted(caller) {
            let own = matches!(caller, Caller::Client(info) if info.username == name);
            if !own {
                return Err(e);
            }
        }
        let user = state.users.get(name).ok_or(EtcdError::UserNotFound)?;
        Ok(user.roles.clone())
    }

    pub fn user_list(&self, caller: &Caller) -> EtcdResult<Vec<String>> {
        let state = self.current();
        state.admin_permitted(caller)?;
        Ok(state.users.keys().cloned().collect())
    }

    /// A role's permissions: for admins, or for users that have the role.
    pub fn role_get(&self, caller: &Caller, role: &str) -> EtcdResult<Vec<Permission>> {
        let state = self.current();
        if let Err(e) = state.admin_permitted(caller) {
            let has_role = match caller {
                Caller::Client(info) => state
                    .users
                    .get(&info.username)
                    .is_some_and(|u| u.roles.iter().any(|r| r == role)),
                Caller::Member => true,
            };
            if !has_role {
                return Err(e);
            }
        }
        let found = state.roles.get(role).ok_or(EtcdError::RoleNotFound)?;
        Ok(found.key_permission.clone())
    }

    pub fn role_list(&self, caller: &Caller) -> EtcdResult<Vec<String>> {
        let state = self.current();
        state.admin_permitted(caller)?;
        Ok(state.roles.keys().cloned().collect())
    }

    // ---- applied on every member, in log order ----

    /// Whether simple tokens are to be rebuilt from the log when the member starts.
    pub fn replays_log(&self) -> bool {
        self.is_enabled() && self.tokens.is_simple()
    }

    /// etcd keeps simple tokens in memory only, yet they outlive a restart there: it replays
    /// the logins of its WAL. The same here, from the entries still in the raft log: each login
    /// of a user that still has a password registers its token again (with a fresh TTL, as in
    /// etcd), and later password changes, deletions and auth switches forget them again.
    pub fn replay(&self, index: u64, request: &Request) {
        let TokenProvider::Simple(simple) = &self.tokens else {
            return;
        };
        match request {
            Request::Authenticate(r) => {
                let state = self.current();
                let has_password = state
                    .users
                    .get(&r.name)
                    .is_some_and(|u| !u.options.as_ref().is_some_and(|o| o.no_password));
                if has_password && !r.simple_token_prefix.is_empty() {
                    simple.assign(format!("{}.{index}", r.simple_token_prefix), &r.name);
                }
            }
            Request::AuthUserDelete(r) => self.tokens.invalidate_user(&r.name),
            Request::AuthUserChangePassword(r) => self.tokens.invalidate_user(&r.name),
            Request::AuthDisable(_) => {
                self.tokens.disable();
                self.tokens.enable();
            }
            _ => {}
        }
    }

    /// etcd's auth applier for the requests it checks: the caller of a Put, DeleteRange, Txn or
    /// LeaseRevoke must be allowed to do all of it. `lease_keys` lists a lease's keys.
    pub fn check_entry(
        &self,
        caller: &Caller,
        request: &Request,
        lease_keys: &dyn Fn(i64) -> EtcdResult<Vec<Bytes>>,
    ) -> EtcdResult<()> {
        if !self.is_enabled() || *caller == Caller::Member {
            return Ok(());
        }
        let state = self.current();
        // A lease whose keys the user may not all write cannot be revoked by that user, nor
        // given more keys by it.
        let lease_puts = |lease: i64| -> EtcdResult<()> {
            if lease == 0 {
                return Ok(());
            }
            for key in lease_keys(lease)? {
                state.op_permitted(caller, &key, b"", Access::Write)?;
            }
            Ok(())
        };
        match request {
            Request::Put(r) => {
                state.op_permitted(caller, &r.key, b"", Access::Write)?;
                lease_puts(r.lease)?;
                if r.prev_kv {
                    state.op_permitted(caller, &r.key, b"", Access::Read)?;
                }
                Ok(())
            }
            Request::DeleteRange(r) => {
                state.op_permitted(caller, &r.key, &r.range_end, Access::Write)?;
                if r.prev_kv {
                    state.op_permitted(caller, &r.key, &r.range_end, Access::Read)?;
                }
                Ok(())
            }
            Request::Txn(r) => state.txn_permitted(caller, r),
            Request::LeaseRevoke(r) => lease_puts(r.id),
            _ => Ok(()),
        }
    }

    /// Applies an auth request; `None` for any other request. `index` is the entry's log index,
    /// which completes a simple token.
    pub fn apply(
        &self,
        batch: &mut WriteBatch,
        index: u64,
        caller: &Caller,
        request: &Request,
    ) -> Option<EtcdResult<AuthResult>> {
        let admin_only = match request {
            Request::Authenticate(_) => false,
            Request::AuthEnable(_)
            | Request::AuthDisable(_)
            | Request::AuthUserAdd(_)
            | Request::AuthUserDelete(_)
            | Request::AuthUserChangePassword(_)
            | Request::AuthUserGrantRole(_)
            | Request::AuthUserRevokeRole(_)
            | Request::AuthRoleAdd(_)
            | Request::AuthRoleDelete(_)
            | Request::AuthRoleGrantPermission(_)
            | Request::AuthRoleRevokePermission(_) => true,
            _ => return None,
        };
        let current = self.current();
        if admin_only {
            if let Err(e) = current.admin_permitted(caller) {
                return Some(Err(e));
            }
        }
        let mut change = Change {
            state: (*current).clone(),
            batch,
            storage: &self.storage,
        };
        let outcome = self.execute(&current, &mut change, index, request);
        let changed =
            change.state.revision != current.revision || change.state.enabled != current.enabled;
        let Change { mut state, .. } = change;
        match outcome {
            Ok(mut result) => {
                if changed {
                    state.refresh_permissions();
                    self.publish(state);
                }
                result.revision = self.revision();
                Some(Ok(result))
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// Reads `state` (as it was before the entry) and records the entry's writes in `change`;
    /// every refusal happens before the first write.
    fn execute(
        &self,
        state: &AuthState,
        change: &mut Change<'_>,
        index: u64,
        request: &Request,
    ) -> EtcdResult<AuthResult> {
        let done = AuthResult::default();
        match request {
            Request::AuthEnable(_) => {
                if state.enabled {
                    tracing::info!(
                        "authentication is already enabled; ignored auth enable request"
                    );
                    return Ok(done);
                }
                let root = state
                    .users
                    .get(ROOT_USER)
                    .ok_or(EtcdError::RootUserNotExist)?;
                if !AuthState::has_root_role(root) {
                    return Err(EtcdError::RootRoleNotExist);
                }
                // etcd does not bump the revision here: credentials resolved while auth was
                // off carry revision 0, or the current one.
                change.set_enabled(true);
                self.tokens.enable();
                tracing::info!("enabled authentication");
            }
            Request::AuthDisable(_) => {
                if !state.enabled {
                    return Ok(done);
                }
                change.set_enabled(false);
                change.bump_revision();
                self.tokens.disable();
                tracing::info!("disabled authentication");
            }
            Request::Authenticate(r) => {
                if !state.enabled {
                    return Err(EtcdError::AuthNotEnabled);
                }
                let user = state.users.get(&r.name).ok_or(EtcdError::AuthFailed)?;
                if user.options.as_ref().is_some_and(|o| o.no_password) {
                    return Err(EtcdError::AuthFailed);
                }
                let simple_token = match &self.tokens {
                    TokenProvider::Simple(simple) => {
                        let token = format!("{}.{index}", r.simple_token_prefix);
                        simple.assign(token.clone(), &r.name);
                        token
                    }
                    // The member that took the request signs the JWT once this is applied.
                    TokenProvider::Jwt(_) => String::new(),
                    TokenProvider::None => return Err(EtcdError::AuthFailed),
                };
                tracing::debug!(user_name = %r.name, "authenticated a user");
                return Ok(AuthResult {
                    revision: state.revision,
                    simple_token,
                });
            }
            Request::AuthUserAdd(r) => {
                if r.name.is_empty() {
                    return Err(EtcdError::UserEmpty);
                }
                if state.users.contains_key(&r.name) {
                    return Err(EtcdError::UserAlreadyExists);
                }
                let options = r.options.unwrap_or(UserAddOptions { no_password: false });
                let password = if options.no_password {
                    Bytes::new()
                } else {
                    Bytes::from(r.hashed_password.clone())
                };
                change.put_user(
                    &r.name,
                    User {
                        name: Bytes::from(r.name.clone()),
                        password,
                        roles: Vec::new(),
                        options: Some(options),
                    },
                );
                change.bump_revision();
                tracing::info!(user_name = %r.name, "added a user");
            }
            Request::AuthUserDelete(r) => {
                if state.enabled && r.name == ROOT_USER {
                    tracing::warn!(user_name = %r.name, "cannot delete 'root' user");
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                let user = state.users.get(&r.name).ok_or(EtcdError::UserNotFound)?;
                let roles = user.roles.clone();
                change.delete_user(&r.name);
                change.bump_revision();
                self.tokens.invalidate_user(&r.name);
                tracing::info!(user_name = %r.name, user_roles = ?roles, "deleted a user");
            }
            Request::AuthUserChangePassword(r) => {
                let user = state.users.get(&r.name).ok_or(EtcdError::UserNotFound)?;
                let updated = User {
                    password: Bytes::from(r.hashed_password.clone()),
                    ..user.clone()
                };
                change.put_user(&r.name, updated);
                change.bump_revision();
                self.tokens.invalidate_user(&r.name);
                tracing::info!(user_name = %r.name, "changed a password of a user");
            }
            Request::AuthUserGrantRole(r) => {
                let user = state.users.get(&r.user).ok_or(EtcdError::UserNotFound)?;
                // The root role needs no definition to be granted.
                if r.role != ROOT_ROLE && !state.roles.contains_key(&r.role) {
                    return Err(EtcdError::RoleNotFound);
                }
                let Err(at) = user.roles.binary_search(&r.role) else {
                    tracing::warn!(user_name = %r.user, role_name = %r.role, "ignored grant role request to a user");
                    return Ok(done);
                };
                let mut updated = user.clone();
                updated.roles.insert(at, r.role.clone());
                change.put_user(&r.user, updated);
                change.bump_revision();
                tracing::info!(user_name = %r.user, added_role_name = %r.role, "granted a role to a user");
            }
            Request::AuthUserRevokeRole(r) => {
                if state.enabled && r.name == ROOT_USER && r.role == ROOT_ROLE {
                    tracing::warn!("'root' user cannot revoke 'root' role");
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                let user = state.users.get(&r.name).ok_or(EtcdError::UserNotFound)?;
                let mut updated = user.clone();
                updated.roles.retain(|role| *role != r.role);
                if updated.roles.len() == user.roles.len() {
                    return Err(EtcdError::RoleNotGranted);
                }
                change.put_user(&r.name, updated);
                change.bump_revision();
                tracing::info!(user_name = %r.name, revoked_role_name = %r.role, "revoked a role from a user");
            }
            Request::AuthRoleAdd(r) => {
                if r.name.is_empty() {
                    return Err(EtcdError::RoleEmpty);
                }
                if state.roles.contains_key(&r.name) {
                    return Err(EtcdError::RoleAlreadyExists);
                }
                change.put_role(
                    &r.name,
                    Role {
                        name: Bytes::from(r.name.clone()),
                        key_permission: Vec::new(),
                    },
                );
                change.bump_revision();
                tracing::info!(role_name = %r.name, "created a role");
            }
            Request::AuthRoleDelete(r) => {
                if state.enabled && r.role == ROOT_ROLE {
                    tracing::warn!("cannot delete 'root' role");
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                if !state.roles.contains_key(&r.role) {
                    return Err(EtcdError::RoleNotFound);
                }
                let holders: Vec<(String, User)> = state
                    .users
                    .iter()
                    .filter(|(_, u)| u.roles.contains(&r.role))
                    .map(|(name, u)| {
                        let mut updated = u.clone();
                        updated.roles.retain(|role| *role != r.role);
                        (name.clone(), updated)
                    })
                    .collect();
                change.delete_role(&r.role);
                for (name, user) in holders {
                    change.put_user(&name, user);
                }
                change.bump_revision();
                tracing::info!(role_name = %r.role, "deleted a role");
            }
            Request::AuthRoleGrantPermission(r) => {
                let role = state.roles.get(&r.name).ok_or(EtcdError::RoleNotFound)?;
                let perm = r.perm.clone().unwrap_or_default();
                let mut updated = role.clone();
                // etcd looks at the first permission whose key is not smaller: the same key and
                // range end there is an update, anything else a new permission.
                let at = updated.key_permission.partition_point(|p| p.key < perm.key);
                match updated.key_permission.get_mut(at) {
                    Some(existing)
                        if existing.key == perm.key && existing.range_end == perm.range_end =>
                    {
                        existing.perm_type = perm.perm_type;
                    }
                    _ => {
                        updated.key_permission.push(Permission {
                            perm_type: perm.perm_type,
                            key: perm.key.clone(),
                            range_end: perm.range_end.clone(),
                        });
                        updated.key_permission.sort_by(|a, b| a.key.cmp(&b.key));
                    }
                }
                change.put_role(&r.name, updated);
                change.bump_revision();
                tracing::info!(role_name = %r.name, permission_type = perm.perm_type, "granted/updated a permission to a user");
            }
            Request::AuthRoleRevokePermission(r) => {
                let role = state.roles.get(&r.role).ok_or(EtcdError::RoleNotFound)?;
                let mut updated = role.clone();
                updated
                    .key_permission
                    .retain(|p| p.key != r.key || p.range_end != r.range_end);
                if updated.key_permission.len() == role.key_permission.len() {
                    return Err(EtcdError::PermissionNotGranted);
                }
                change.put_role(&r.role, updated);
                change.bump_revision();
                tracing::info!(role_name = %r.role, "revoked a permission on range");
            }
            _ => {}
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests;
