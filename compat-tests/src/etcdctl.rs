//! Runs the real `etcdctl` (API v3) against a member, bounded by a timeout.

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::server::{inherited_env_names, Server};

/// The longest one etcdctl invocation may take before the test fails.
pub const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(30);

/// `ETCDCTL_BIN`, or Debian's `/usr/bin/etcdctl`.
pub fn etcdctl_binary() -> PathBuf {
    std::env::var_os("ETCDCTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcdctl"))
}

/// `etcdctl --endpoints=<server> <args>` with `ETCDCTL_API=3`.
pub async fn etcdctl(server: &Server, args: &[&str]) -> Output {
    run(server, args, None).await
}

/// Like [`etcdctl`], with `stdin` written to its standard input (for `txn` and `txn -i`).
pub async fn etcdctl_stdin(server: &Server, args: &[&str], stdin: &str) -> Output {
    run(server, args, Some(stdin)).await
}

/// `etcdctl --endpoints=<endpoints> <args>`: several members, or an endpoint in a form of the
/// test's choosing (`http://127.0.0.1:port`).
pub async fn etcdctl_at(endpoints: &str, args: &[&str]) -> Output {
    run_at(endpoints, args, None).await
}

async fn run(server: &Server, args: &[&str], stdin: Option<&str>) -> Output {
    run_at(&server.endpoint(), args, stdin).await
}

async fn run_at(endpoints: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut command = Command::new(etcdctl_binary());
    for name in inherited_env_names("ETCDCTL_") {
        command.env_remove(name);
    }
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .unwrap_or_else(|error| panic!("start {}: {error}", etcdctl_binary().display()));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("etcdctl's stdin is piped");
        pipe.write_all(input.as_bytes())
            .await
            .expect("write etcdctl's standard input");
        // Dropping the pipe closes it, so etcdctl sees the end of its input.
    }
    match tokio::time::timeout(ETCDCTL_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => output.expect("collect etcdctl's output"),
        // The dropped future drops the child, and kill_on_drop kills it.
        Err(_) => panic!("etcdctl {args:?} did not finish within {ETCDCTL_TIMEOUT:?}"),
    }
}

/// Reading an etcdctl [`Output`].
pub trait OutputExt {
    fn stdout_text(&self) -> String;
    fn stderr_text(&self) -> String;
    /// Panics (with stderr) unless etcdctl exited 0; returns stdout.
    fn expect_success(&self, what: &str) -> String;
    /// Panics (with stdout) if etcdctl exited 0; returns the `Error: ...` line of stderr
    /// without the `Error: ` prefix.
    fn expect_error(&self, what: &str) -> String;
    /// Stdout of a successful `-w json` invocation, parsed.
    fn expect_json(&self, what: &str) -> Value;
}

impl OutputExt for Output {
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    #[track_caller]
    fn expect_success(&self, what: &str) -> String {
        assert!(
            self.status.success(),
            "etcdctl {what}: exited with {}; stderr:\n{}\nstdout:\n{}",
            self.status,
            self.stderr_text(),
            self.stdout_text()
        );
        self.stdout_text()
    }

    #[track_caller]
    fn expect_error(&self, what: &str) -> String {
        assert!(
            !self.status.success(),
            "etcdctl {what}: expected a failure, got success; stdout:\n{}",
            self.stdout_text()
        );
        let stderr = self.stderr_text();
        stderr
            .lines()
            .rev()
            .find_map(|line| line.strip_prefix("Error: "))
            .unwrap_or_else(|| panic!("etcdctl {what}: no `Error: ` line in stderr:\n{stderr}"))
            .to_string()
    }

    #[track_caller]
    fn expect_json(&self, what: &str) -> Value {
        let stdout = self.expect_success(what);
        serde_json::from_str(&stdout).unwrap_or_else(|error| {
            panic!("etcdctl {what}: stdout is not JSON ({error}):\n{stdout}")
        })
    }
}
