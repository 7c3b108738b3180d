//! etcdserverpb.Auth, and the credentials every service reads from a request.

use std::sync::Arc;

use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::member::{Credentials, Member};
use crate::proto::etcdserverpb::auth_server::Auth;
use crate::proto::etcdserverpb::{
    AuthDisableRequest, AuthDisableResponse, AuthEnableRequest, AuthEnableResponse,
    AuthRoleAddRequest, AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse,
    AuthRoleGetRequest, AuthRoleGetResponse, AuthRoleGrantPermissionRequest,
    AuthRoleGrantPermissionResponse, AuthRoleListRequest, AuthRoleListResponse,
    AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse, AuthStatusRequest,
    AuthStatusResponse, AuthUserAddRequest, AuthUserAddResponse, AuthUserChangePasswordRequest,
    AuthUserChangePasswordResponse, AuthUserDeleteRequest, AuthUserDeleteResponse,
    AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest, AuthUserGrantRoleResponse,
    AuthUserListRequest, AuthUserListResponse, AuthUserRevokeRoleRequest,
    AuthUserRevokeRoleResponse, AuthenticateRequest, AuthenticateResponse,
};
use crate::transport::ClientIdentity;

/// etcd's token metadata keys: gRPC clients send `token`, the JSON gateway `authorization`.
const TOKEN_KEYS: [&str; 2] = ["token", "authorization"];
/// Requests relayed by etcd's gRPC gateway carry this; the gateway's own certificate must not
/// stand for the user, so the common name is ignored then.
const GATEWAY_MARKER: &str = "grpcgateway-accept";

/// The token and client certificate name a request came with.
pub fn credentials_of(metadata: &MetadataMap, identity: Option<&ClientIdentity>) -> Credentials {
    let token = TOKEN_KEYS
        .iter()
        .find_map(|key| metadata.get(*key))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let common_name = if metadata.contains_key(GATEWAY_MARKER) {
        None
    } else {
        identity.and_then(|i| i.common_name.clone())
    };
    Credentials { token, common_name }
}

/// The credentials of a gRPC request.
pub fn credentials<T>(request: &Request<T>) -> Credentials {
    credentials_of(
        request.metadata(),
        request.extensions().get::<ClientIdentity>(),
    )
}

/// On whose behalf a gRPC request runs (an invalid token is refused here).
pub async fn caller<T>(member: &Member, request: &Request<T>) -> Result<Caller, Status> {
    Ok(member.caller(&credentials(request)).await?)
}

pub struct AuthService {
    member: Arc<Member>,
}

impl AuthService {
    pub fn new(member: Arc<Member>) -> Self {
        Self { member }
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        request: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        let caller = caller(&self.member, &request).await?;
        Ok(Response::new(self.member.auth_enable(&caller).await?))
    }

    async fn auth_disable(
        &self,
        request: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let caller = caller(&self.member, &request).await?;
        Ok(Response::new(self.member.auth_disable(&caller).await?))
    }

    async fn auth_status(
        &self,
        request: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        let caller = caller(&self.member, &request).await?;
        Ok(Response::new(self.member.auth_status(&caller).await?))
    }

    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let credentials = credentials(&request);
        let req = request.into_inner();
        Ok(Response::new(
            self.member
                .authenticate(&credentials, req.name, req.password)
                .await?,
        ))
    }

    async fn user_add(
        &self,
        request: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let caller = caller(&self.member, &request).await?;
        Ok(Response::new(
            self.member.user_add(&caller, request.into_inner()).await?,
        ))
    }

    async fn user_get(
        &self,
        request: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let caller = caller(&self.member, &request).await?;
        Ok(Response::new(
            self.member
                .user_get(&caller, &request.get_ref().name)
                .await?,
        ))
    }

    async fn user_list(
        &self,
        request: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        let caller = caller(&self.member, &request).await?;
        Ok(Response::new(self.member.user_list(&caller).await?))
    }

    async fn user_delete(
        &self,
        request: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let caller = caller(&self.member, &request).await?;
        Ok(Response::new(
            self.member
                .user_delete(&caller, request.into_inner())
                .await?,
        ))
    }

    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let caller = caller(&self.member, &request).await?;
        Ok(Response::new(
            self.member
                .user_change_password(&caller, request.into_inner())
                .await?,
        ))
    }

    async fn user_grant_role(
        &self,
        request: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let caller = caller(&self.member, &request).await?;
        Ok(Response::new(
            self.member
                .user_grant_role(&caller, request.into_inner())
                .await?,
        ))
    }

    async fn user_revoke_role(
        &self,
        request: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let caller = caller(&self.member, &request).await?;
        Ok(Response::new(
            self.member
                .user_revoke_role(&caller, request.into_inner())
                .await?,
        ))
    }

    async fn role_add(
        &self,
        request: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let caller = caller(&self.member, &request).await?;
        Ok(Response::new(
            self.member.role_add(&caller, request.into_inner()).await?,
        ))
    }

    async fn role_get(
        &self,
        request: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let caller = caller(&self.member, &request).await?;
        Ok(Response::new(
            self.member
                .role_get(&caller, &request.get_ref().role)
                .await?,
        ))
    }

    async fn role_list(
        &self,
        request: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        let caller = caller(&self.member, &request).await?;
        Ok(Response::new(self.member.role_list(&caller).await?))
    }

    async fn role_delete(
        &self,
        request: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let caller = caller(&self.member, &request).await?;
        Ok(Response::new(
            self.member
                .role_delete(&caller, request.into_inner())
                .await?,
        ))
    }

    async fn role_grant_permission(
        &self,
        request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let caller = caller(&self.member, &request).await?;
        Ok(Response::new(
            self.member
                .role_grant_permission(&caller, request.into_inner())
                .await?,
        ))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let caller = caller(&self.member, &request).await?;
        Ok(Response::new(
            self.member
                .role_revoke_permission(&caller, request.into_inner())
                .await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_the_token_or_the_certificate() {
        let identity = ClientIdentity {
            common_name: Some("example.com".into()),
        };
        let mut metadata = MetadataMap::new();
        assert_eq!(credentials_of(&metadata, None), Credentials::default());
        assert_eq!(
            credentials_of(&metadata, Some(&identity))
                .common_name
                .as_deref(),
            Some("example.com")
        );
        metadata.insert("token", "abc.3".parse().expect("ascii"));
        let both = credentials_of(&metadata, Some(&identity));
        assert_eq!(both.token.as_deref(), Some("abc.3"));
        metadata.insert(GATEWAY_MARKER, "application/json".parse().expect("ascii"));
        assert_eq!(credentials_of(&metadata, Some(&identity)).common_name, None);
    }
}
