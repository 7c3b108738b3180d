//! `keelson auth-bootstrap`: turns etcd authentication on in a running cluster, once, from a
//! password file: the Helm chart runs it in a Job after every install and upgrade (the image
//! has no shell to script etcdctl with). It is idempotent, so that a rerun, a retry after a
//! partial run, or a run against a cluster that already has auth on, is harmless:
//!
//! - auth on: it logs in as root with the password (a wrong password is an error: the Secret and
//!   the cluster disagree) and changes nothing;
//! - auth off: it adds the root user (or sets its password when it exists), grants it the root
//!   role and enables auth, as `etcdctl user add root`, `user grant-role root root`, `auth
//!   enable` would.
//!
//! It retries while no endpoint answers, until `--timeout`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic::Code;

use crate::proto::etcdserverpb::auth_client::AuthClient;
use crate::proto::etcdserverpb::{
    AuthEnableRequest, AuthStatusRequest, AuthUserAddRequest, AuthUserChangePasswordRequest,
    AuthUserGrantRoleRequest, AuthenticateRequest,
};
use crate::transport::tls::{peer_client_config, TlsSettings};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
const RETRY_EVERY: Duration = Duration::from_secs(2);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const ROOT: &str = "root";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapOptions {
    pub endpoints: Vec<String>,
    pub root_password_file: PathBuf,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Accept any server certificate (etcdctl's --insecure-skip-tls-verify, for --auto-tls).
    pub insecure_skip_tls_verify: bool,
    pub timeout: Duration,
}

pub const USAGE: &str = "usage: keelson auth-bootstrap --endpoints=URL[,URL...] \
--root-password-file=PATH [--cacert=PATH] [--cert=PATH --key=PATH] \
[--insecure-skip-tls-verify] [--timeout=300s]";

fn parse_duration(text: &str) -> Option<Duration> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = number.parse().ok()?;
    match unit {
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        "ms" => Some(Duration::from_millis(n)),
        _ => None,
    }
}

pub fn parse_options(args: &[String]) -> Result<BootstrapOptions, String> {
    let mut endpoints = Vec::new();
    let mut root_password_file = None;
    let mut options = BootstrapOptions {
        endpoints: Vec::new(),
        root_password_file: PathBuf::new(),
        cacert: None,
        cert: None,
        key: None,
        insecure_skip_tls_verify: false,
        timeout: DEFAULT_TIMEOUT,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let bare = arg.trim_start_matches('-');
        let (name, inline) = match bare.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (bare, None),
        };
        if name == "insecure-skip-tls-verify" {
            options.insecure_skip_tls_verify = inline.as_deref() != Some("false");
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => args
                .next()
                .cloned()
                .ok_or_else(|| format!("--{name} needs a value"))?,
        };
        match name {
            "endpoints" => endpoints.extend(
                value
                    .split(',')
                    .filter(|e| !e.is_empty())
                    .map(|e| e.to_string()),
            ),
            "root-password-file" => root_password_file = Some(PathBuf::from(value)),
            "cacert" => options.cacert = Some(PathBuf::from(value)),
            "cert" => options.cert = Some(PathBuf::from(value)),
            "key" => options.key = Some(PathBuf::from(value)),
            "timeout" => {
                options.timeout =
                    parse_duration(&value).ok_or_else(|| format!("invalid --timeout {value:?}"))?
            }
            _ => return Err(format!("unknown flag --{name}\n{USAGE}")),
        }
    }
    if endpoints.is_empty() {
        return Err(format!("--endpoints is required\n{USAGE}"));
    }
    options.endpoints = endpoints;
    options.root_password_file =
        root_password_file.ok_or_else(|| format!("--root-password-file is required\n{USAGE}"))?;
    if options.cert.is_some() != options.key.is_some() {
        return Err("--cert and --key go together".into());
    }
    Ok(options)
}

/// Reads the password as Kubernetes mounts a Secret key: the whole file, without a trailing
/// newline (which `kubectl create secret --from-file` keeps when the file had one).
fn read_password(options: &BootstrapOptions) -> Result<String, String> {
    let text = std::fs::read_to_string(&options.root_password_file)
        .map_err(|e| format!("cannot read {}: {e}", options.root_password_file.display()))?;
    let password = text.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        return Err(format!(
            "{} is empty: the root user needs a password",
            options.root_password_file.display()
        ));
    }
    Ok(password)
}

fn channels(options: &BootstrapOptions) -> Result<Vec<(String, Channel)>, String> {
    let https = options.endpoints.iter().any(|e| e.starts_with("https://"));
    let tls = if https {
        let settings = TlsSettings {
            trusted_ca_file: options.cacert.clone(),
            cert_file: options.cert.clone(),
            key_file: options.key.clone(),
            // With no CA, auto_tls makes the client accept any server certificate.
            auto_tls: options.insecure_skip_tls_verify && options.cacert.is_none(),
            ..TlsSettings::default()
        };
        let dir = std::env::temp_dir();
        Some(peer_client_config(&settings, &dir, &[]).map_err(|e| e.to_string())?)
    } else {
        None
    };
    let mut channels = Vec::new();
    for endpoint in &options.endpoints {
        let url = if endpoint.contains("://") {
            endpoint.clone()
        } else {
            format!("http://{endpoint}")
        };
        let channel = crate::raft::peer::client::connect_lazy(&url, tls.as_ref())
            .ok_or_else(|| format!("invalid endpoint {endpoint:?}"))?;
        channels.push((endpoint.clone(), channel));
    }
    Ok(channels)
}

fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}

/// Whether an error means "try again later" (no answer, no leader yet) rather than a refusal.
fn transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
    ) && !status.message().contains("authentication failed")
}

enum Outcome {
    Done(String),
    Retry(String),
    Fail(String),
}

async fn attempt(mut client: AuthClient<Channel>, password: &str) -> Outcome {
    // AuthStatus is for admins once auth is on (as etcd 3.5's): an anonymous caller (or a
    // client certificate's CN that is not root) is refused, which says that auth is on.
    let enabled = match client.auth_status(request(AuthStatusRequest {})).await {
        Ok(r) => r.into_inner().enabled,
        Err(e)
            if e.message().contains("user name is empty")
                || e.message().contains("permission denied") =>
        {
            true
        }
        Err(e) => return Outcome::Retry(format!("auth status: {}", e.message())),
    };
    if enabled {
        let login = client
            .authenticate(request(AuthenticateRequest {
                name: ROOT.into(),
                password: password.into(),
            }))
            .await;
        return match login {
            Ok(_) => Outcome::Done("auth is enabled and root logs in with the password".into()),
            Err(e) if transient(&e) => Outcome::Retry(format!("authenticate: {}", e.message())),
            Err(e) => Outcome::Fail(format!(
                "auth is enabled but root cannot log in with the password file: {}",
                e.message()
            )),
        };
    }
    let added = client
        .user_add(request(AuthUserAddRequest {
            name: ROOT.into(),
            password: password.into(),
            ..Default::default()
        }))
        .await;
    match added {
        Ok(_) => {}
        Err(e) if e.message().contains("user name already exists") => {
            // A previous run added it (or an operator did): make its password the file's.
            if let Err(e) = client
                .user_change_password(request(AuthUserChangePasswordRequest {
                    name: ROOT.into(),
                    password: password.into(),
                    ..Default::default()
                }))
                .await
            {
                return Outcome::Retry(format!("user change password root: {}", e.message()));
            }
        }
        Err(e) => return Outcome::Retry(format!("user add root: {}", e.message())),
    }
    if let Err(e) = client
        .user_grant_role(request(AuthUserGrantRoleRequest {
            user: ROOT.into(),
            role: ROOT.into(),
        }))
        .await
    {
        return Outcome::Retry(format!("user grant-role root root: {}", e.message()));
    }
    match client.auth_enable(request(AuthEnableRequest {})).await {
        Ok(_) => Outcome::Done("added user root with the root role and enabled auth".into()),
        Err(e) => Outcome::Retry(format!("auth enable: {}", e.message())),
    }
}

/// Runs the bootstrap; Ok says what it did.
pub async fn run(options: &BootstrapOptions) -> Result<String, String> {
    let password = read_password(options)?;
    let channels = channels(options)?;
    let deadline = Instant::now() + options.timeout;
    let mut last = String::new();
    loop {
        for (endpoint, channel) in &channels {
            match attempt(AuthClient::new(channel.clone()), &password).await {
                Outcome::Done(what) => return Ok(format!("{endpoint}: {what}")),
                Outcome::Fail(why) => return Err(format!("{endpoint}: {why}")),
                Outcome::Retry(why) => {
                    tracing::info!(endpoint, "auth bootstrap: {why}; retrying");
                    last = format!("{endpoint}: {why}");
                }
            }
        }
        if Instant::now() + RETRY_EVERY > deadline {
            return Err(format!(
                "gave up after {:?}; last error: {last}",
                options.timeout
            ));
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_parse_as_etcdctl_spells_them() {
        let o = parse_options(&args(&[
            "--endpoints=https://a:2379,https://b:2379",
            "--root-password-file",
            "/p",
            "--cacert=/ca",
            "--cert=/c",
            "--key=/k",
            "--timeout=2m",
        ]))
        .unwrap();
        assert_eq!(o.endpoints, ["https://a:2379", "https://b:2379"]);
        assert_eq!(o.root_password_file, PathBuf::from("/p"));
        assert_eq!(o.timeout, Duration::from_secs(120));
        assert!(parse_options(&args(&["--endpoints=a"])).is_err());
        assert!(parse_options(&args(&["--root-password-file=/p"])).is_err());
        assert!(parse_options(&args(&[
            "--endpoints=a",
            "--root-password-file=/p",
            "--x=1"
        ]))
        .is_err());
        assert!(parse_options(&args(&[
            "--endpoints=a",
            "--root-password-file=/p",
            "--cert=/c"
        ]))
        .is_err());
    }
}
