//! Helpers of the auth tests: etcdctl transcripts compared with etcd's, and a raw gRPC client
//! that sends a token of the test's choosing (the etcd-client crate only sends the token it got
//! itself, from the endpoint it is connected to).

use std::time::Duration;

use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::Status;

use crate::etcdctl::{etcdctl, etcdctl_stdin, OutputExt};
use crate::server::Server;

/// The root user's password in every auth test.
pub const ROOT_PASSWORD: &str = "rootpw";

/// One etcdctl invocation of a script: optional `--user name:password`, arguments, stdin.
#[derive(Clone, Debug)]
pub struct Step {
    pub user: Option<&'static str>,
    pub args: Vec<String>,
    pub stdin: Option<&'static str>,
}

/// `etcdctl <args>` without credentials.
pub fn anon(args: &str) -> Step {
    Step {
        user: None,
        args: split(args),
        stdin: None,
    }
}

/// `etcdctl --user <user> <args>`.
pub fn as_user(user: &'static str, args: &str) -> Step {
    Step {
        user: Some(user),
        args: split(args),
        stdin: None,
    }
}

/// `etcdctl --user root:rootpw <args>`.
pub fn as_root(args: &str) -> Step {
    as_user("root:rootpw", args)
}

impl Step {
    /// The same step with `text` on standard input.
    pub fn stdin(mut self, text: &'static str) -> Self {
        self.stdin = Some(text);
        self
    }
}

/// Splits on spaces; `''` stands for an empty argument.
fn split(args: &str) -> Vec<String> {
    args.split(' ')
        .filter(|a| !a.is_empty())
        .map(|a| {
            if a == "''" {
                String::new()
            } else {
                a.to_string()
            }
        })
        .collect()
}

/// What a step printed and how it exited, with what varies between runs taken out: the
/// client's retry warnings (timestamps, random target names), the endpoint, timings.
pub async fn run_step(server: &Server, step: &Step) -> String {
    let mut args: Vec<String> = Vec::new();
    if let Some(user) = step.user {
        args.push(format!("--user={user}"));
    }
    args.extend(step.args.iter().cloned());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = match step.stdin {
        Some(input) => etcdctl_stdin(server, &refs, input).await,
        None => etcdctl(server, &refs).await,
    };
    let endpoint = server.endpoint();
    let clean = |text: String| -> String {
        text.lines()
            .filter(|line| !line.contains("retry_interceptor"))
            .map(|line| {
                let line = line.replace(&endpoint, "<endpoint>");
                match line.find("took = ") {
                    Some(at) => format!("{}took = <time>", &line[..at]),
                    None => line,
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!(
        "$ etcdctl {}\n--- stdout\n{}\n--- stderr\n{}\n--- exit {:?}",
        args.join(" "),
        clean(output.stdout_text()),
        clean(output.stderr_text()),
        output.status.code()
    )
}

/// Runs `steps` in order and returns what each printed.
pub async fn run_script(server: &Server, steps: &[Step]) -> Vec<String> {
    let mut transcript = Vec::new();
    for step in steps {
        transcript.push(run_step(server, step).await);
    }
    transcript
}

/// Asserts that two transcripts are the same, showing every step that differs.
#[track_caller]
pub fn assert_same_transcript(reference: &[String], subject: &[String]) {
    assert_eq!(reference.len(), subject.len(), "number of steps");
    let differing: Vec<String> = reference
        .iter()
        .zip(subject)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("etcd:\n{a}\nsubject:\n{b}"))
        .collect();
    assert!(
        differing.is_empty(),
        "{} of {} steps differ from etcd:\n{}",
        differing.len(),
        reference.len(),
        differing.join("\n\n")
    );
}

/// Creates root (with the root role) and enables auth, through etcdctl.
pub fn enable_steps() -> Vec<Step> {
    vec![
        anon("user add root --interactive=false").stdin("rootpw\n"),
        anon("user grant-role root root"),
        anon("auth enable"),
    ]
}

/// etcd's e2e `authSetupTestUser`: test-user (password "pass") with test-role, readwrite on foo.
pub fn test_user_steps() -> Vec<Step> {
    vec![
        as_root("user add test-user --interactive=false").stdin("pass\n"),
        as_root("role add test-role"),
        as_root("user grant-role test-user test-role"),
        as_root("role grant-permission test-role readwrite foo"),
    ]
}

// ---------------------------------------------------------------------------------------
// A raw gRPC client
// ---------------------------------------------------------------------------------------

/// The few etcd messages the raw client needs, as prost reads and writes them (fields the
/// tests do not use are skipped on decoding).
pub mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AuthenticateRequest {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub password: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AuthenticateResponse {
        #[prost(string, tag = "2")]
        pub token: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AuthStatusRequest {}

    /// etcd 3.5's Maintenance.Downgrade (action: 0 VALIDATE, 1 ENABLE, 2 CANCEL).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DowngradeRequest {
        #[prost(int32, tag = "1")]
        pub action: i32,
        #[prost(string, tag = "2")]
        pub version: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DowngradeResponse {
        #[prost(string, tag = "2")]
        pub version: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AuthStatusResponse {
        #[prost(bool, tag = "2")]
        pub enabled: bool,
        #[prost(uint64, tag = "3")]
        pub auth_revision: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RangeRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub range_end: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "5")]
        pub value: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RangeResponse {
        #[prost(message, repeated, tag = "2")]
        pub kvs: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutResponse {}

    /// A compare on a key's version (the target etcd numbers 0).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Compare {
        #[prost(bytes = "vec", tag = "3")]
        pub key: Vec<u8>,
        #[prost(int64, optional, tag = "4")]
        pub version: Option<i64>,
    }

    /// etcd's RequestOp: exactly one of the fields is set (a oneof on the wire).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RequestOp {
        #[prost(message, optional, tag = "1")]
        pub range: Option<RangeRequest>,
        #[prost(message, optional, tag = "2")]
        pub put: Option<PutRequest>,
        #[prost(message, optional, tag = "4")]
        pub txn: Option<TxnRequest>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TxnRequest {
        #[prost(message, repeated, tag = "1")]
        pub compare: Vec<Compare>,
        #[prost(message, repeated, tag = "2")]
        pub success: Vec<RequestOp>,
        #[prost(message, repeated, tag = "3")]
        pub failure: Vec<RequestOp>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TxnResponse {
        #[prost(bool, tag = "2")]
        pub succeeded: bool,
    }
}

/// A gRPC client that sends the token it is given.
#[derive(Clone)]
pub struct RawClient {
    grpc: tonic::client::Grpc<Channel>,
    token: Option<String>,
}

impl RawClient {
    /// Connects to `url` (`http://127.0.0.1:<port>`).
    pub async fn connect(url: &str) -> RawClient {
        let channel = Channel::from_shared(url.to_string())
            .unwrap_or_else(|e| panic!("endpoint {url}: {e}"))
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        RawClient {
            grpc: tonic::client::Grpc::new(channel),
            token: None,
        }
    }

    /// The same connection, sending `token` with every request.
    pub fn with_token(&self, token: &str) -> RawClient {
        RawClient {
            grpc: self.grpc.clone(),
            token: Some(token.to_string()),
        }
    }

    async fn unary<Req, Resp>(&mut self, path: &'static str, message: Req) -> Result<Resp, Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            let value = token
                .parse()
                .map_err(|_| Status::invalid_argument("token is not ASCII"))?;
            request.metadata_mut().insert("token", value);
        }
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        Ok(self
            .grpc
            .unary(request, PathAndQuery::from_static(path), codec)
            .await?
            .into_inner())
    }

    pub async fn authenticate(&mut self, name: &str, password: &str) -> Result<String, Status> {
        let request = pb::AuthenticateRequest {
            name: name.into(),
            password: password.into(),
        };
        let response: pb::AuthenticateResponse = self
            .unary("/etcdserverpb.Auth/Authenticate", request)
            .await?;
        Ok(response.token)
    }

    /// (enabled, auth revision).
    pub async fn auth_status(&mut self) -> Result<(bool, u64), Status> {
        let response: pb::AuthStatusResponse = self
            .unary("/etcdserverpb.Auth/AuthStatus", pb::AuthStatusRequest {})
            .await?;
        Ok((response.enabled, response.auth_revision))
    }

    /// Maintenance.Downgrade; the cluster version it answers with.
    pub async fn downgrade(&mut self, action: i32, version: &str) -> Result<String, Status> {
        let request = pb::DowngradeRequest {
            action,
            version: version.into(),
        };
        let response: pb::DowngradeResponse = self
            .unary("/etcdserverpb.Maintenance/Downgrade", request)
            .await?;
        Ok(response.version)
    }

    /// The value of `key`, if it exists.
    pub async fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, Status> {
        let request = pb::RangeRequest {
            key: key.as_bytes().to_vec(),
            range_end: Vec::new(),
        };
        let response: pb::RangeResponse = self.unary("/etcdserverpb.KV/Range", request).await?;
        Ok(response.kvs.into_iter().next().map(|kv| kv.value))
    }

    pub async fn put(&mut self, key: &str, value: &str) -> Result<(), Status> {
        let request = pb::PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        };
        let _: pb::PutResponse = self.unary("/etcdserverpb.KV/Put", request).await?;
        Ok(())
    }

    /// Whether the txn took its success branch.
    pub async fn txn(&mut self, txn: pb::TxnRequest) -> Result<bool, Status> {
        let response: pb::TxnResponse = self.unary("/etcdserverpb.KV/Txn", txn).await?;
        Ok(response.succeeded)
    }
}

/// `(code, message)` of a raw call that must have failed.
#[track_caller]
pub fn raw_error<T: std::fmt::Debug>(result: Result<T, Status>) -> (tonic::Code, String) {
    match result {
        Ok(value) => panic!("expected a gRPC error, got {value:?}"),
        Err(status) => (status.code(), status.message().to_string()),
    }
}
