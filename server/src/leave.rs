//! `keelson leave`: removes this member from its cluster, as a StatefulSet's preStop hook does on
//! a scale-down (docs/deploy.md). The member is named by the same flags it runs with; with
//! `--if-scaled-down=statefulset/NAME` it first asks the Kubernetes API whether the StatefulSet
//! still counts this pod's ordinal, and leaves only when it does not (a restart, a rollout or a
//! drain keeps the member). It always exits successfully, so that the pod stops either way; a
//! member that could not leave stays listed, and the next scale-up replaces it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use crate::config::Config;
use crate::error::EtcdError;
use crate::proto::peerpb::membership_change::Change;
use crate::proto::peerpb::{ClusterInfo, MembershipChange, RemoveMember};
use crate::raft::peer::client::{change_members_at, fetch_cluster};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
const RETRY_EVERY: Duration = Duration::from_millis(500);
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// `keelson leave`'s own options; the rest of the command line is the member's flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaveOptions {
    /// `statefulset/NAME`: leave only when this pod's ordinal is at or above its replicas.
    pub if_scaled_down: Option<String>,
    pub service_account_dir: PathBuf,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaveError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

/// Splits `leave`'s own flags from the member's flags.
pub fn parse_options(args: &[String]) -> Result<(LeaveOptions, Vec<String>), LeaveError> {
    let mut options = LeaveOptions {
        if_scaled_down: None,
        service_account_dir: PathBuf::from(SERVICE_ACCOUNT_DIR),
        timeout: DEFAULT_TIMEOUT,
    };
    let mut rest = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let bare = arg.trim_start_matches('-');
        let (name, inline) = match bare.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (bare, None),
        };
        let mut value = |flag: &str| -> Result<String, LeaveError> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => args
                    .next()
                    .cloned()
                    .ok_or_else(|| LeaveError::Usage(format!("--{flag} needs a value"))),
            }
        };
        match name {
            "if-scaled-down" => options.if_scaled_down = Some(value(name)?),
            "kube-service-account-dir" => options.service_account_dir = PathBuf::from(value(name)?),
            "timeout" => {
                let raw = value(name)?;
                options.timeout = crate::config::parse_duration(&raw).ok_or_else(|| {
                    LeaveError::Usage(format!("--timeout: {raw:?} is not a duration"))
                })?;
            }
            _ => rest.push(arg.clone()),
        }
    }
    Ok((options, rest))
}

/// This pod's ordinal: the number after the last `-` of its name ($POD_NAME, else $HOSTNAME).
fn pod_ordinal() -> Option<u64> {
    let name = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()?;
    name.rsplit_once('-')?.1.parse().ok()
}

/// The StatefulSet's `spec.replicas`, from the Kubernetes API with the pod's service account.
async fn statefulset_replicas(name: &str, service_account_dir: &Path) -> Result<u64, LeaveError> {
    let fail = |what: String| {
        LeaveError::Failed(format!("asking Kubernetes for statefulset/{name}: {what}"))
    };
    let host = std::env::var("KUBERNETES_SERVICE_HOST")
        .map_err(|_| fail("KUBERNETES_SERVICE_HOST is not set (not in a pod?)".into()))?;
    let port: u16 = std::env::var("KUBERNETES_SERVICE_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(443);
    let read = |file: &str| {
        std::fs::read_to_string(service_account_dir.join(file))
            .map(|s| s.trim().to_string())
            .map_err(|e| fail(format!("{}: {e}", service_account_dir.join(file).display())))
    };
    let namespace = read("namespace")?;
    let token = read("token")?;
    let tls = crate::transport::tls::kube_api_client_config(&service_account_dir.join("ca.crt"))
        .map_err(|e| fail(e.to_string()))?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| fail(e.to_string()))?;
    let server_name =
        rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| fail(e.to_string()))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(server_name, tcp)
        .await
        .map_err(|e| fail(format!("TLS: {e}")))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| fail(e.to_string()))?;
    tokio::spawn(connection);
    let request = http::Request::get(format!(
        "/apis/apps/v1/namespaces/{namespace}/statefulsets/{name}"
    ))
    .header("Host", format!("{host}:{port}"))
    .header("Authorization", format!("Bearer {token}"))
    .header("Accept", "application/json")
    .body(http_body_util::Empty::<bytes::Bytes>::new())
    .map_err(|e| fail(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| fail(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        return Err(fail(format!("HTTP {status}")));
    }
    let parsed: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| fail(format!("not JSON: {e}")))?;
    parsed["spec"]["replicas"]
        .as_u64()
        .ok_or_else(|| fail("no spec.replicas in the answer".into()))
}

/// Whether this pod is still wanted by its StatefulSet (then it must not leave).
async fn still_wanted(options: &LeaveOptions) -> Result<bool, LeaveError> {
    let Some(target) = &options.if_scaled_down else {
        return Ok(false);
    };
    let name = target.strip_prefix("statefulset/").ok_or_else(|| {
        LeaveError::Usage(format!(
            "--if-scaled-down={target}: expected statefulset/NAME"
        ))
    })?;
    let ordinal = pod_ordinal().ok_or_else(|| {
        LeaveError::Failed("cannot tell this pod's ordinal from $POD_NAME or $HOSTNAME".into())
    })?;
    let replicas = statefulset_replicas(name, &options.service_account_dir).await?;
    tracing::info!(
        ordinal,
        replicas,
        "asked Kubernetes whether this member is still wanted"
    );
    Ok(ordinal < replicas)
}

/// Who this member is and who leads, as the member itself answers on its peer URL.
async fn ask_self(
    config: &Config,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<ClusterInfo, LeaveError> {
    let mut last = String::from("no peer URL");
    for url in &config.initial_advertise_peer_urls {
        match fetch_cluster(url, tls, ASK_TIMEOUT).await {
            Ok(info) => return Ok(info),
            Err(e) => last = e,
        }
    }
    Err(LeaveError::Failed(format!(
        "this member does not answer on its peer URLs: {last}"
    )))
}

/// Removes this member through the leader, retrying until `options.timeout`.
async fn remove_self(config: &Config, options: &LeaveOptions) -> Result<(), LeaveError> {
    let tls =
        crate::boot::peer_client_tls(config).map_err(|e| LeaveError::Failed(e.to_string()))?;
    let deadline = Instant::now() + options.timeout;
    loop {
        let outcome = match ask_self(config, tls.as_ref()).await {
            Ok(info) => {
                let leader = info
                    .members
                    .iter()
                    .find(|m| m.id == info.leader_id)
                    .and_then(|m| m.peer_ur_ls.first().cloned());
                match leader {
                    None => Err(EtcdError::NoLeader),
                    Some(url) => {
                        tracing::info!(member = %format!("{:x}", info.member_id), "removing this member from the cluster");
                        change_members_at(
                            &url,
                            tls.as_ref(),
                            info.cluster_id,
                            MembershipChange {
                                change: Some(Change::Remove(RemoveMember { id: info.member_id })),
                            },
                            ASK_TIMEOUT * 5,
                        )
                        .await
                        .map(|_| ())
                    }
                }
            }
            Err(LeaveError::Failed(e)) => Err(EtcdError::Internal(e)),
            Err(e) => return Err(e),
        };
        match outcome {
            Ok(()) => return Ok(()),
            Err(EtcdError::MemberNotFound) => return Ok(()),
            Err(e) if Instant::now() + RETRY_EVERY < deadline => {
                tracing::info!(error = %e, "could not leave yet; retrying");
                tokio::time::sleep(RETRY_EVERY).await;
            }
            Err(e) => {
                return Err(LeaveError::Failed(format!(
                    "gave up leaving after {:?}: {e}",
                    options.timeout
                )))
            }
        }
    }
}

/// Runs `keelson leave`; returns what to report (it exits 0 either way, see the module docs).
pub async fn run(config: &Config, options: &LeaveOptions) -> Result<String, LeaveError> {
    if still_wanted(options).await? {
        return Ok("the StatefulSet still counts this pod: staying in the cluster".into());
    }
    remove_self(config, options).await?;
    Ok("left the cluster".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leave_flags_are_split_from_the_members() {
        let args: Vec<String> = [
            "--if-scaled-down=statefulset/db-keelson",
            "--timeout",
            "20s",
            "--name",
            "db-keelson-3",
            "--kube-service-account-dir=/sa",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (options, rest) = parse_options(&args).expect("valid");
        assert_eq!(
            options.if_scaled_down.as_deref(),
            Some("statefulset/db-keelson")
        );
        assert_eq!(options.timeout, Duration::from_secs(20));
        assert_eq!(options.service_account_dir, PathBuf::from("/sa"));
        assert_eq!(rest, vec!["--name".to_string(), "db-keelson-3".to_string()]);
        assert!(parse_options(&["--timeout".to_string()]).is_err());
    }
}
