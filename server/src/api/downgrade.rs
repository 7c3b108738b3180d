//! Maintenance.Downgrade (etcd 3.5), answered as etcd 3.5 answers for a cluster that cannot
//! be downgraded: keelson reports cluster version 3.5, and the only target etcd 3.5 would
//! accept from there is 3.4, whose data format keelson cannot go back to in place (moving to
//! etcd 3.4 is a snapshot and a restore, docs/migration.md). So every well-formed target gets
//! etcd's "invalid downgrade target version", and no downgrade job is ever in flight.

use crate::error::EtcdError;
use crate::proto::etcdserverpb::downgrade_request::DowngradeAction;

/// What a request asks, once its action and version are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// VALIDATE or ENABLE of a well-formed target: refused after a linearizable read, as etcd
    /// reads the cluster's downgrade state before it decides.
    Target,
    /// CANCEL: likewise read first, then "no inflight downgrade job".
    Cancel,
}

/// Checks what can be checked without the cluster (etcd's order: the action, then the format
/// of the target version).
pub fn check(action: i32, version: &str) -> Result<Asked, EtcdError> {
    match DowngradeAction::try_from(action) {
        Ok(DowngradeAction::Validate) | Ok(DowngradeAction::Enable) => {
            if is_cluster_version(version) {
                Ok(Asked::Target)
            } else {
                Err(EtcdError::WrongDowngradeVersionFormat)
            }
        }
        Ok(DowngradeAction::Cancel) => Ok(Asked::Cancel),
        Err(_) => Err(EtcdError::UnknownMethod),
    }
}

/// The answer after the linearizable read.
pub fn refusal(asked: Asked) -> EtcdError {
    match asked {
        Asked::Target => EtcdError::InvalidDowngradeTargetVersion,
        Asked::Cancel => EtcdError::NoInflightDowngrade,
    }
}

/// etcd's reading of a target: a semantic version `X.Y.Z[-pre][+meta]`, or `X.Y`.
fn is_cluster_version(version: &str) -> bool {
    is_semver(version) || is_semver(&format!("{version}.0"))
}

fn is_semver(version: &str) -> bool {
    let (rest, metadata) = version.split_once('+').unwrap_or((version, ""));
    let (core, pre_release) = rest.split_once('-').unwrap_or((rest, ""));
    let parts: Vec<&str> = core.splitn(3, '.').collect();
    parts.len() == 3
        && parts.iter().all(|p| p.parse::<i64>().is_ok())
        && is_identifier(pre_release)
        && is_identifier(metadata)
}

/// Dot-separated alphanumerics and hyphens (empty: absent).
fn is_identifier(id: &str) -> bool {
    id.is_empty()
        || id.split('.').all(|part| {
            !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::api::status::to_status;

    const WRONG_FORMAT: &str = "etcdserver: wrong downgrade target version format";

    #[test]
    fn targets_are_read_as_etcd_reads_them() {
        for ok in ["3.4", "3.4.0", "3.5.21", "3.4.0-rc.1", "3.4.1+build"] {
            assert_eq!(
                check(DowngradeAction::Validate as i32, ok).ok(),
                Some(Asked::Target),
                "{ok}"
            );
        }
        for bad in ["", "v3.4", "3", "three", "3.4.x", "3.4.0-rc..1"] {
            let status = to_status(check(DowngradeAction::Enable as i32, bad).expect_err(bad));
            assert_eq!(
                (status.code(), status.message()),
                (Code::InvalidArgument, WRONG_FORMAT)
            );
        }
        assert_eq!(
            check(DowngradeAction::Cancel as i32, "").ok(),
            Some(Asked::Cancel)
        );
        assert_eq!(
            to_status(check(7, "3.4").expect_err("unknown")).code(),
            Code::Unknown
        );
    }
}
