//! `etcdctl lease grant/revoke/keep-alive/timetolive/list` and `put --lease`, run against the
//! real etcd and the server under test side by side, outputs compared after normalising what
//! legitimately differs: lease IDs (each server picks its own; mapped to `<L1>`, `<L2>`, ... in
//! grant order), cluster and member IDs, raft terms and remaining TTLs (timing). Everything
//! else, exit codes and `Error:` lines included, must be identical.
//!
//! The server under test is the one `COMPAT_SERVER` names (etcd is then compared with itself).

use std::process::Output;
use std::time::Duration;

use compat_tests::json::Normalizer;
use compat_tests::lease::{poll_until, EtcdctlProcess};
use compat_tests::{etcdctl, OutputExt, Server, ServerKind, ServerOptions};
use serde_json::Value;

/// Starts the reference etcd and the server under test.
async fn start_pair() -> (Server, Server) {
    tokio::join!(
        Server::start(ServerOptions::new(ServerKind::Etcd)),
        Server::start(ServerOptions::from_env()),
    )
}

/// One etcdctl invocation's outcome, normalised.
#[derive(Debug, Clone, PartialEq)]
struct Step {
    command: String,
    exit_code: Option<i32>,
    stdout: String,
    /// The `Error: ...` lines of stderr (etcdctl's own log lines carry timestamps and
    /// random client IDs and are left out).
    errors: Vec<String>,
}

/// Runs a script of etcdctl commands against one server. Arguments may name the leases
/// granted so far as `{L1}`, `{L2}`, ... (etcdctl takes lease IDs in hex).
struct Session<'a> {
    server: &'a Server,
    /// (hex as etcdctl prints it, decimal) of every lease granted, in order.
    leases: Vec<(String, i64)>,
    steps: Vec<Step>,
}

impl<'a> Session<'a> {
    fn new(server: &'a Server) -> Self {
        Session {
            server,
            leases: Vec::new(),
            steps: Vec::new(),
        }
    }

    fn expand(&self, arg: &str) -> String {
        let mut arg = arg.to_string();
        for (index, (hex, _)) in self.leases.iter().enumerate().rev() {
            arg = arg.replace(&format!("{{L{}}}", index + 1), hex);
        }
        arg
    }

    /// Records a lease granted by this output, if it is a grant's.
    fn learn_lease(&mut self, output: &Output) {
        let stdout = output.stdout_text();
        if let Some(rest) = stdout.strip_prefix("lease ") {
            if let Some((hex, _)) = rest.split_once(" granted with TTL(") {
                let id = i64::from_str_radix(hex, 16)
                    .unwrap_or_else(|_| panic!("lease ID {hex:?} is not hex"));
                self.leases.push((hex.to_string(), id));
            }
        } else if let Ok(json) = serde_json::from_str::<Value>(&stdout) {
            if let (Some(id), Some(_)) = (json["ID"].as_i64(), json.get("TTL")) {
                self.leases.push((format!("{id:016x}"), id));
            }
        }
    }

    async fn run(&mut self, args: &[&str]) -> Output {
        let expanded: Vec<String> = args.iter().map(|arg| self.expand(arg)).collect();
        let expanded: Vec<&str> = expanded.iter().map(String::as_str).collect();
        let output = etcdctl(self.server, &expanded).await;
        self.learn_lease(&output);
        self.steps.push(Step {
            command: args.join(" "),
            exit_code: output.status.code(),
            stdout: output.stdout_text(),
            errors: output
                .stderr_text()
                .lines()
                .filter(|line| line.starts_with("Error:"))
                .map(String::from)
                .collect(),
        });
        output
    }

    /// Every step with lease IDs, cluster/member IDs, raft terms and remaining TTLs
    /// normalised. Remaining TTLs are checked to lie in (0, granted TTL] on the way.
    fn normalized(&self) -> Vec<Step> {
        self.steps
            .iter()
            .map(|step| Step {
                stdout: self.normalize_output(&step.stdout),
                errors: step.errors.iter().map(|e| self.replace_ids(e)).collect(),
                ..step.clone()
            })
            .collect()
    }

    fn replace_ids(&self, text: &str) -> String {
        let mut text = text.to_string();
        for (index, (hex, id)) in self.leases.iter().enumerate() {
            let placeholder = format!("<L{}>", index + 1);
            text = text.replace(hex.as_str(), &placeholder);
            text = text.replace(&id.to_string(), &placeholder);
        }
        text
    }

    /// Lease IDs in JSON numbers become `"<Ln>"` strings.
    fn replace_ids_json(&self, json: Value) -> Value {
        match json {
            Value::Number(number) => match self
                .leases
                .iter()
                .position(|(_, id)| number.as_i64() == Some(*id))
            {
                Some(index) => Value::String(format!("<L{}>", index + 1)),
                None => Value::Number(number),
            },
            Value::Array(items) => Value::Array(
                items
                    .into_iter()
                    .map(|v| self.replace_ids_json(v))
                    .collect(),
            ),
            Value::Object(fields) => Value::Object(
                fields
                    .into_iter()
                    .map(|(k, v)| (k, self.replace_ids_json(v)))
                    .collect(),
            ),
            other => other,
        }
    }

    /// [`Normalizer::default`], remaining TTLs and lease IDs of a JSON output.
    fn normalize_json(&self, json: &Value) -> Value {
        let json = Normalizer::default().apply(json);
        self.replace_ids_json(normalize_time_to_live(json))
    }

    fn normalize_output(&self, stdout: &str) -> String {
        if let Ok(json) = serde_json::from_str::<Value>(stdout) {
            return serde_json::to_string(&self.normalize_json(&json)).expect("JSON") + "\n";
        }
        let mut lines = Vec::new();
        for line in stdout.lines() {
            let mut line = self.replace_ids(line);
            if let Some((head, tail)) = line.split_once("remaining(") {
                let (seconds, rest) = tail.split_once("s)").expect("remaining(<n>s)");
                let remaining: i64 = seconds.parse().expect("remaining seconds");
                let granted: i64 = head
                    .split_once("TTL(")
                    .and_then(|(_, t)| t.split_once("s)"))
                    .and_then(|(t, _)| t.parse().ok())
                    .expect("granted TTL before the remaining one");
                assert!(
                    remaining > 0 && remaining <= granted,
                    "remaining {remaining} s of a lease granted {granted} s: {line}"
                );
                line = format!("{head}remaining(<n>s){rest}");
            }
            if let Some((head, tail)) = line.split_once("attached keys([") {
                let (keys, rest) = tail.split_once("])").expect("attached keys([...])");
                // etcd lists a lease's keys in map order.
                let mut keys: Vec<&str> = keys.split(' ').filter(|k| !k.is_empty()).collect();
                keys.sort();
                line = format!("{head}attached keys([{}]){rest}", keys.join(" "));
            }
            lines.push(line);
        }
        lines.iter().map(|line| format!("{line}\n")).collect()
    }
}

/// In a `timetolive -w json` answer: the remaining `ttl` depends on timing (kept only when -1,
/// "no such lease"), and `keys` come in map order.
fn normalize_time_to_live(mut json: Value) -> Value {
    if let Some(granted) = json.get("granted-ttl").and_then(Value::as_i64) {
        let ttl = json["ttl"].as_i64().expect("ttl");
        if ttl != -1 {
            assert!(
                ttl > 0 && ttl <= granted,
                "remaining {ttl} s of {granted} s"
            );
            json["ttl"] = Value::String("<remaining>".into());
        }
        if let Some(keys) = json.get_mut("keys").and_then(Value::as_array_mut) {
            keys.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
        }
    }
    json
}

#[track_caller]
fn assert_same_steps(reference: &Session<'_>, subject: &Session<'_>) {
    let expected = reference.normalized();
    let actual = subject.normalized();
    assert_eq!(expected.len(), actual.len(), "number of steps");
    let differences: Vec<String> = expected
        .iter()
        .zip(&actual)
        .filter(|(e, a)| e != a)
        .map(|(e, a)| format!("`{}`:\n  etcd:    {e:?}\n  subject: {a:?}", e.command))
        .collect();
    assert!(
        differences.is_empty(),
        "{} of {} etcdctl steps differ from etcd:\n{}",
        differences.len(),
        expected.len(),
        differences.join("\n")
    );
}

/// The script, against one server.
async fn lease_script(server: &Server) -> Session<'_> {
    let mut s = Session::new(server);
    s.run(&["lease", "grant", "100"])
        .await
        .expect_success("grant"); // L1
    s.run(&["lease", "grant", "1"]).await; // L2: raised to etcd's minimum, 2 s
    s.run(&["lease", "revoke", "{L2}"]).await;
    s.run(&["lease", "grant", "200", "-w", "json"]).await; // L3
    s.run(&["lease", "grant", "9000000001"]).await;
    s.run(&["lease", "grant", "9000000000"]).await; // L4
    s.run(&["lease", "revoke", "{L4}", "-w", "json"]).await;

    s.run(&["put", "--lease={L1}", "k1", "v1"]).await;
    s.run(&["put", "--lease={L1}", "k2", "v2"]).await;
    s.run(&["put", "--lease={L3}", "k3", "v3", "-w", "json"])
        .await;
    s.run(&["put", "--lease=1234", "k4", "v4"]).await;
    s.run(&["get", "k", "--prefix", "-w", "json"]).await;

    s.run(&["lease", "timetolive", "{L1}"]).await;
    s.run(&["lease", "timetolive", "{L1}", "--keys"]).await;
    s.run(&["lease", "timetolive", "{L1}", "--keys", "-w", "json"])
        .await;
    s.run(&["lease", "timetolive", "{L3}", "-w", "json"]).await;
    s.run(&["lease", "timetolive", "1234"]).await;
    s.run(&["lease", "timetolive", "1234", "--keys", "-w", "json"])
        .await;

    s.run(&["lease", "keep-alive", "--once", "{L1}"]).await;
    s.run(&["lease", "keep-alive", "--once", "{L3}", "-w", "json"])
        .await;
    s.run(&["lease", "keep-alive", "--once", "1234"]).await;
    s.run(&["lease", "list"]).await;
    s.run(&["lease", "list", "-w", "json"]).await;

    // Re-attach k2 elsewhere, detach k1 by a plain put: revoking L1 then deletes nothing.
    s.run(&["put", "--lease={L3}", "k2", "v2b"]).await;
    s.run(&["put", "k1", "v1b"]).await;
    s.run(&["put", "k3", "v3b", "--ignore-lease"]).await;
    s.run(&["lease", "timetolive", "{L1}", "--keys"]).await;
    s.run(&["lease", "timetolive", "{L3}", "--keys"]).await;
    s.run(&["lease", "revoke", "{L1}"]).await;
    s.run(&["get", "k", "--prefix", "-w", "json"]).await;
    s.run(&["lease", "revoke", "{L3}", "-w", "json"]).await;
    s.run(&["get", "k", "--prefix"]).await;

    // Everything about a lease that no longer exists.
    s.run(&["lease", "revoke", "{L1}"]).await;
    s.run(&["lease", "timetolive", "{L1}"]).await;
    s.run(&["lease", "keep-alive", "--once", "{L1}"]).await;
    s.run(&["lease", "keep-alive", "{L1}"]).await;
    s.run(&["put", "--lease={L1}", "k5", "v5"]).await;
    s.run(&["lease", "list"]).await;
    s.run(&["lease", "list", "-w", "json"]).await;
    s
}

#[tokio::test]
async fn lease_commands_print_what_etcd_prints() {
    let (etcd, subject) = start_pair().await;
    let (reference, tested) = tokio::join!(lease_script(&etcd), lease_script(&subject));
    // Sanity of the reference: the commands did what the script expects.
    let steps = reference.normalized();
    assert_eq!(steps[0].stdout, "lease <L1> granted with TTL(100s)\n");
    assert_eq!(steps[1].stdout, "lease <L2> granted with TTL(2s)\n");
    assert_same_steps(&reference, &tested);
}

/// `etcdctl lease keep-alive` runs until the lease is gone: the first answers, then the end
/// after a revoke, against one server.
async fn keep_alive_stream(server: &Server) -> (Vec<String>, Option<i32>) {
    let mut s = Session::new(server);
    s.run(&["lease", "grant", "3"])
        .await
        .expect_success("grant");
    let hex = s.leases[0].0.clone();
    let mut keep_alive = EtcdctlProcess::spawn(server, &["lease", "keep-alive", &hex]);
    let mut lines = Vec::new();
    // etcd's client renews every TTL/3 = 1 s: two answers within a few seconds.
    for _ in 0..2 {
        let line = keep_alive
            .next_line(Duration::from_secs(10))
            .await
            .expect("keep-alive prints a line per answer");
        lines.push(s.replace_ids(&line));
    }
    s.run(&["lease", "revoke", &hex])
        .await
        .expect_success("revoke");
    // Its next renewal is answered TTL 0: it reports the lease gone and exits.
    loop {
        let line = keep_alive
            .next_line(Duration::from_secs(10))
            .await
            .expect("keep-alive says the lease is gone before it exits");
        let line = s.replace_ids(&line);
        let done = line.contains("expired or revoked");
        lines.push(line);
        if done {
            break;
        }
        assert!(
            lines.len() < 20,
            "keep-alive kept printing after the revoke: {lines:?}"
        );
    }
    let code = keep_alive.wait_exit(Duration::from_secs(10)).await;
    // Answers that arrived between the revoke and the end are timing; keep first and last.
    let last = lines.last().cloned().expect("lines");
    lines.truncate(2);
    lines.push(last);
    (lines, code)
}

#[tokio::test]
async fn lease_keep_alive_streams_until_the_lease_is_revoked() {
    let (etcd, subject) = start_pair().await;
    let (reference, tested) = tokio::join!(keep_alive_stream(&etcd), keep_alive_stream(&subject));
    assert_eq!(
        reference,
        (
            vec![
                "lease <L1> keepalived with TTL(3)".to_string(),
                "lease <L1> keepalived with TTL(3)".to_string(),
                "lease <L1> expired or revoked.".to_string(),
            ],
            Some(0)
        ),
        "etcd's own output"
    );
    assert_eq!(
        tested, reference,
        "etcdctl lease keep-alive against the subject"
    );
}

/// `etcdctl lease keep-alive -w json` prints one JSON answer per renewal.
async fn keep_alive_json(server: &Server) -> Value {
    let mut s = Session::new(server);
    s.run(&["lease", "grant", "30"])
        .await
        .expect_success("grant");
    let hex = s.leases[0].0.clone();
    let mut keep_alive =
        EtcdctlProcess::spawn(server, &["lease", "keep-alive", &hex, "-w", "json"]);
    let line = keep_alive
        .next_line(Duration::from_secs(10))
        .await
        .expect("a JSON answer");
    keep_alive.kill().await;
    let json: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    s.normalize_json(&json)
}

#[tokio::test]
async fn lease_keep_alive_json_prints_each_answer() {
    let (etcd, subject) = start_pair().await;
    let (reference, tested) = tokio::join!(keep_alive_json(&etcd), keep_alive_json(&subject));
    assert_eq!(reference["TTL"], 30, "etcd's answer: {reference}");
    compat_tests::assert_same_json("keep-alive -w json", &reference, &tested);
}

/// `lease keep-alive --once` of a lease that has lived a while (keelson records remaining
/// TTLs of leases that aged 5 s, every 5 s; the renewal must not trip over the record).
async fn keep_alive_once_after_a_while(server: &Server) -> Vec<Step> {
    let mut s = Session::new(server);
    s.run(&["lease", "grant", "30"])
        .await
        .expect_success("grant");
    s.run(&["put", "--lease={L1}", "k", "v"]).await;
    let hex = s.leases[0].0.clone();
    poll_until(Duration::from_secs(20), "the lease aged 12 s", || {
        let hex = hex.clone();
        async move {
            let output = etcdctl(server, &["lease", "timetolive", &hex, "-w", "json"]).await;
            let json = output.expect_json("timetolive");
            (json["ttl"].as_i64().expect("ttl") <= 30 - 13).then_some(())
        }
    })
    .await;
    s.run(&["lease", "keep-alive", "--once", "{L1}"]).await;
    s.run(&["lease", "keep-alive", "--once", "{L1}", "-w", "json"])
        .await;
    s.run(&["lease", "timetolive", "{L1}", "--keys"]).await;
    s.normalized()
}

#[tokio::test]
async fn lease_keep_alive_once_of_an_older_lease() {
    let (etcd, subject) = start_pair().await;
    let (reference, tested) = tokio::join!(
        keep_alive_once_after_a_while(&etcd),
        keep_alive_once_after_a_while(&subject)
    );
    assert_eq!(
        reference[2].stdout, "lease <L1> keepalived with TTL(30)\n",
        "etcd: {reference:?}"
    );
    assert_eq!(tested, reference, "left: the subject, right: etcd");
}
