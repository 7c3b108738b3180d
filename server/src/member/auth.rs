//! The Auth API at the member level: credentials into callers, logins, and auth changes
//! through raft. Reads of the auth store (user and role lists, AuthStatus) are linearizable
//! local reads with etcd's permission rules; etcd 3.4 sends them through its log instead, with
//! the same answers.

use std::sync::Arc;

use super::{unexpected, Member};
use crate::auth::tokens::{simple_token_prefix, TokenProvider};
use crate::auth::{AuthInfo, AuthStore, Caller};
use crate::error::{EtcdError, EtcdResult};
use crate::proto::etcdserverpb::{
    AuthDisableRequest, AuthDisableResponse, AuthEnableRequest, AuthEnableResponse,
    AuthRoleAddRequest, AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse,
    AuthRoleGetResponse, AuthRoleGrantPermissionRequest, AuthRoleGrantPermissionResponse,
    AuthRoleListResponse, AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse,
    AuthStatusResponse, AuthUserAddRequest, AuthUserAddResponse, AuthUserChangePasswordRequest,
    AuthUserChangePasswordResponse, AuthUserDeleteRequest, AuthUserDeleteResponse,
    AuthUserGetResponse, AuthUserGrantRoleRequest, AuthUserGrantRoleResponse, AuthUserListResponse,
    AuthUserRevokeRoleRequest, AuthUserRevokeRoleResponse, AuthenticateResponse, ResponseHeader,
};
use crate::proto::raftpb::raft_request::Request;
use crate::proto::raftpb::raft_response::Response;
use crate::proto::raftpb::{AuthResult, AuthenticateRequest};

/// How many times a login is retried when the auth store changed between the password check
/// and the token (etcd retries without a bound).
const AUTHENTICATE_ATTEMPTS: usize = 8;

/// What a request presented: its `token` metadata, and the common name of the verified client
/// certificate of its connection (with `--client-cert-auth`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub token: Option<String>,
    pub common_name: Option<String>,
}

impl Member {
    pub fn auth(&self) -> &Arc<AuthStore> {
        &self.auth
    }

    /// etcd's `AuthInfoFromCtx`: a token names its user (a simple token once this member
    /// applied the login that made it), or else the client certificate's common name does.
    /// The caller of a request with these credentials, or the member itself with none.
    pub async fn caller_of(&self, credentials: Option<&Credentials>) -> EtcdResult<Caller> {
        match credentials {
            Some(credentials) => self.caller(credentials).await,
            None => Ok(Caller::Member),
        }
    }

    pub async fn caller(&self, credentials: &Credentials) -> EtcdResult<Caller> {
        if let Some(token) = &credentials.token {
            if let Some(index) = self.auth.tokens().simple_token_index(token) {
                // A token made on another member is known here once its login is applied.
                if self.raft.wait_for_applied(index).await.is_err() {
                    return Err(EtcdError::InvalidAuthToken);
                }
            }
            return match self.auth.token_info(token) {
                Some(info) => Ok(Caller::Client(info)),
                None => {
                    // The token itself is a credential: it is not logged.
                    tracing::warn!("invalid auth token");
                    Err(EtcdError::InvalidAuthToken)
                }
            };
        }
        if let Some(name) = &credentials.common_name {
            return Ok(Caller::Client(AuthInfo {
                username: name.clone(),
                revision: self.auth.revision(),
            }));
        }
        Ok(Caller::anonymous())
    }

    fn auth_header(&self) -> Option<ResponseHeader> {
        Some(self.header(self.store.current_revision()))
    }

    async fn propose_auth(&self, caller: &Caller, request: Request) -> EtcdResult<AuthResult> {
        match self.propose_as(caller, request).await? {
            Response::Auth(result) => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    /// etcd's Authenticate: check the password here (off the runtime), then let every member
    /// learn the token through the log; retried if the auth store changed in between.
    pub async fn authenticate(
        &self,
        credentials: &Credentials,
        name: String,
        password: String,
    ) -> EtcdResult<AuthenticateResponse> {
        self.raft.read_index().await?;
        for _ in 0..AUTHENTICATE_ATTEMPTS {
            let checked_revision = match self.auth.check_password(&name, password.clone()).await {
                Ok(revision) => revision,
                Err(EtcdError::AuthNotEnabled) => return Err(EtcdError::AuthNotEnabled),
                Err(e) => {
                    tracing::warn!(user = %name, error = %e, "invalid authentication was requested");
                    return Err(e);
                }
            };
            let simple_token_prefix = if self.auth.tokens().is_simple() {
                simple_token_prefix()
                    .map_err(|_| EtcdError::Internal("no randomness for a token".into()))?
            } else {
                String::new()
            };
            let caller = self.caller(credentials).await?;
            let request = Request::Authenticate(AuthenticateRequest {
                name: name.clone(),
                simple_token_prefix,
            });
            let result = self.propose_auth(&caller, request).await?;
            if checked_revision == self.auth.revision() {
                let token = match self.auth.tokens() {
                    TokenProvider::Jwt(jwt) => jwt
                        .sign(&name, result.revision)
                        .map_err(|e| EtcdError::Untranslated(e.to_string()))?,
                    _ => result.simple_token,
                };
                return Ok(AuthenticateResponse {
                    header: self.auth_header(),
                    token,
                });
            }
            tracing::info!("revision when password checked became stale; retrying");
        }
        Err(EtcdError::Timeout)
    }

    pub async fn auth_enable(&self, caller: &Caller) -> EtcdResult<AuthEnableResponse> {
        self.propose_auth(caller, Request::AuthEnable(AuthEnableRequest {}))
            .await?;
        Ok(AuthEnableResponse {
            header: self.auth_header(),
        })
    }

    pub async fn auth_disable(&self, caller: &Caller) -> EtcdResult<AuthDisableResponse> {
        self.propose_auth(caller, Request::AuthDisable(AuthDisableRequest {}))
            .await?;
        Ok(AuthDisableResponse {
            header: self.auth_header(),
        })
    }

    pub async fn auth_status(&self, caller: &Caller) -> EtcdResult<AuthStatusResponse> {
        self.raft.read_index().await?;
        let (enabled, auth_revision) = self.auth.status(caller)?;
        Ok(AuthStatusResponse {
            header: self.auth_header(),
            enabled,
            auth_revision,
        })
    }

    /// Hashes a password on this member for the log. Refused callers are turned away before
    /// the (slow, bounded) hashing, so that they cannot spend the member's CPU on it.
    async fn hash_password(&self, caller: &Caller, password: String) -> EtcdResult<String> {
        self.auth.check_admin(caller)?;
        self.auth.hasher().hash(password).await
    }

    pub async fn user_add(
        &self,
        caller: &Caller,
        mut req: AuthUserAddRequest,
    ) -> EtcdResult<AuthUserAddResponse> {
        if req.name.is_empty() {
            self.auth.check_admin(caller)?;
            return Err(EtcdError::UserEmpty);
        }
        let no_password = req.options.as_ref().is_some_and(|o| o.no_password);
        let password = std::mem::take(&mut req.password);
        // As etcd 3.5: the hash is made here from the password; a client's own is not trusted.
        req.hashed_password = if no_password {
            String::new()
        } else {
            self.hash_password(caller, password).await?
        };
        self.propose_auth(caller, Request::AuthUserAdd(req)).await?;
        Ok(AuthUserAddResponse {
            header: self.auth_header(),
        })
    }

    pub async fn user_change_password(
        &self,
        caller: &Caller,
        mut req: AuthUserChangePasswordRequest,
    ) -> EtcdResult<AuthUserChangePasswordResponse> {
        let password = std::mem::take(&mut req.password);
        req.hashed_password = self.hash_password(caller, password).await?;
        self.propose_auth(caller, Request::AuthUserChangePassword(req))
            .await?;
        Ok(AuthUserChangePasswordResponse {
            header: self.auth_header(),
        })
    }

    pub async fn user_get(&self, caller: &Caller, name: &str) -> EtcdResult<AuthUserGetResponse> {
        self.raft.read_index().await?;
        let roles = self.auth.user_get(caller, name)?;
        Ok(AuthUserGetResponse {
            header: self.auth_header(),
            roles,
        })
    }

    pub async fn user_list(&self, caller: &Caller) -> EtcdResult<AuthUserListResponse> {
        self.raft.read_index().await?;
        let users = self.auth.user_list(caller)?;
        Ok(AuthUserListResponse {
            header: self.auth_header(),
            users,
        })
    }

    pub async fn user_delete(
        &self,
        caller: &Caller,
        req: AuthUserDeleteRequest,
    ) -> EtcdResult<AuthUserDeleteResponse> {
        self.propose_auth(caller, Request::AuthUserDelete(req))
            .await?;
        Ok(AuthUserDeleteResponse {
            header: self.auth_header(),
        })
    }

    pub async fn user_grant_role(
        &self,
        caller: &Caller,
        req: AuthUserGrantRoleRequest,
    ) -> EtcdResult<AuthUserGrantRoleResponse> {
        self.propose_auth(caller, Request::AuthUserGrantRole(req))
            .await?;
        Ok(AuthUserGrantRoleResponse {
            header: self.auth_header(),
        })
    }

    pub async fn user_revoke_role(
        &self,
        caller: &Caller,
        req: AuthUserRevokeRoleRequest,
    ) -> EtcdResult<AuthUserRevokeRoleResponse> {
        self.propose_auth(caller, Request::AuthUserRevokeRole(req))
            .await?;
        Ok(AuthUserRevokeRoleResponse {
            header: self.auth_header(),
        })
    }

    pub async fn role_add(
        &self,
        caller: &Caller,
        req: AuthRoleAddRequest,
    ) -> EtcdResult<AuthRoleAddResponse> {
        self.propose_auth(caller, Request::AuthRoleAdd(req)).await?;
        Ok(AuthRoleAddResponse {
            header: self.auth_header(),
        })
    }

    pub async fn role_get(&self, caller: &Caller, role: &str) -> EtcdResult<AuthRoleGetResponse> {
        self.raft.read_index().await?;
        let perm = self.auth.role_get(caller, role)?;
        Ok(AuthRoleGetResponse {
            header: self.auth_header(),
            perm,
        })
    }

    pub async fn role_list(&self, caller: &Caller) -> EtcdResult<AuthRoleListResponse> {
        self.raft.read_index().await?;
        let roles = self.auth.role_list(caller)?;
        Ok(AuthRoleListResponse {
            header: self.auth_header(),
            roles,
        })
    }

    pub async fn role_delete(
        &self,
        caller: &Caller,
        req: AuthRoleDeleteRequest,
    ) -> EtcdResult<AuthRoleDeleteResponse> {
        self.propose_auth(caller, Request::AuthRoleDelete(req))
            .await?;
        Ok(AuthRoleDeleteResponse {
            header: self.auth_header(),
        })
    }

    pub async fn role_grant_permission(
        &self,
        caller: &Caller,
        req: AuthRoleGrantPermissionRequest,
    ) -> EtcdResult<AuthRoleGrantPermissionResponse> {
        self.propose_auth(caller, Request::AuthRoleGrantPermission(req))
            .await?;
        Ok(AuthRoleGrantPermissionResponse {
            header: self.auth_header(),
        })
    }

    pub async fn role_revoke_permission(
        &self,
        caller: &Caller,
        req: AuthRoleRevokePermissionRequest,
    ) -> EtcdResult<AuthRoleRevokePermissionResponse> {
        self.propose_auth(caller, Request::AuthRoleRevokePermission(req))
            .await?;
        Ok(AuthRoleRevokePermissionResponse {
            header: self.auth_header(),
        })
    }
}
