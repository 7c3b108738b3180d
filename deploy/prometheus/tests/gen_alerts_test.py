#!/usr/bin/env python3
"""Writes alerts-test.yaml: `promtool test rules` cases for keelson-alerts.yaml and
keelson-recording.yaml over the series a 3-member keelson cluster exports when Prometheus
scrapes it through the chart's ServiceMonitor (labels job, instance, namespace, pod, service,
endpoint, container), with alerts that fire and then resolve.

Every metric name used here must be one keelson exports (deploy/tests/test_prometheus.py checks
that against server/src/metrics and a live scrape). Run it after changing a scenario:

    python3 deploy/prometheus/tests/gen_alerts_test.py   # rewrites alerts-test.yaml

The committed alerts-test.yaml must equal this script's output (checked by the tests).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "alerts-test.yaml"

JOB = "keelson-etcd"
NS = "db"
MEMBERS = [
    {"pod": f"keelson-{i}", "instance": f"10.244.{i}.7:2381"} for i in range(3)
]
# etcd's disk histogram buckets: 1 ms doubling, 14 of them.
DISK_BUCKETS = [0.001 * 2**n for n in range(14)]
GIB = 1024**3
QUOTA = 2 * GIB
ALL_ALERTS = [
    "etcdMembersDown",
    "etcdInsufficientMembers",
    "etcdNoLeader",
    "etcdHighNumberOfLeaderChanges",
    "etcdHighNumberOfFailedGRPCRequests",
    "etcdGRPCRequestsSlow",
    "etcdMemberCommunicationSlow",
    "etcdHighNumberOfFailedProposals",
    "etcdHighFsyncDurations",
    "etcdHighCommitDurations",
    "etcdBackendQuotaLowSpace",
    "etcdExcessiveDatabaseGrowth",
    "etcdDatabaseHighFragmentationRatio",
    "KeelsonBackendQuotaHigh",
    "KeelsonApplyLagging",
    "KeelsonLearnerNotPromoted",
    "KeelsonHealthChecksFailing",
    "KeelsonSlowWatchers",
]


def labels(member: dict, **extra: str) -> dict:
    out = {
        "job": JOB,
        "namespace": NS,
        "instance": member["instance"],
        "pod": member["pod"],
        "service": "keelson-headless",
        "endpoint": "metrics",
        "container": "keelson",
    }
    out.update(extra)
    return out


def selector(name: str, lbls: dict) -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(lbls.items()))
    return f"{name}{{{inner}}}"


def fmt(v: float) -> str:
    if float(v).is_integer():
        return str(int(v))
    return repr(v)


def series(name: str, lbls: dict, values: str) -> dict:
    return {"series": selector(name, lbls), "values": values}


def healthy_member(member: dict, minutes: int, *, fsync_p: float = 0.002) -> list[dict]:
    """The steady series of a healthy member for `minutes` minutes."""
    out = [
        series("up", labels(member), f"1+0x{minutes}"),
        series("etcd_server_has_leader", labels(member), f"1+0x{minutes}"),
        series("etcd_server_is_leader", labels(member), f"{1 if member['pod'] == 'keelson-0' else 0}+0x{minutes}"),
        series("etcd_server_is_learner", labels(member), f"0+0x{minutes}"),
        series("etcd_server_leader_changes_seen_total", labels(member), f"1+0x{minutes}"),
        series("etcd_server_proposals_committed_total", labels(member), f"1000+600x{minutes}"),
        series("etcd_server_proposals_applied_total", labels(member), f"998+600x{minutes}"),
        series("etcd_server_proposals_failed_total", labels(member), f"0+0x{minutes}"),
        series("etcd_server_quota_backend_bytes", labels(member), f"{QUOTA}+0x{minutes}"),
        series("etcd_mvcc_db_total_size_in_bytes", labels(member), f"{300 * 1024**2}+0x{minutes}"),
        series("etcd_mvcc_db_total_size_in_use_in_bytes", labels(member), f"{250 * 1024**2}+0x{minutes}"),
        series("etcd_server_health_success", labels(member), f"0+2x{minutes}"),
        series("etcd_server_health_failures", labels(member), f"0+0x{minutes}"),
        series("etcd_debugging_mvcc_slow_watcher_total", labels(member), f"0+0x{minutes}"),
    ]
    out += histogram("etcd_disk_wal_fsync_duration_seconds", member, minutes, per_minute=600, at=fsync_p)
    out += histogram("etcd_disk_backend_commit_duration_seconds", member, minutes, per_minute=600, at=0.004)
    for method, code, per_minute in [("Range", "OK", 3000), ("Txn", "OK", 600), ("Put", "OK", 10)]:
        svc = "etcdserverpb.KV"
        out.append(series("grpc_server_handled_total", labels(member, grpc_type="unary", grpc_service=svc, grpc_method=method, grpc_code=code), f"0+{per_minute}x{minutes}"))
        out.append(series("grpc_server_handled_total", labels(member, grpc_type="unary", grpc_service=svc, grpc_method=method, grpc_code="Unavailable"), f"0+0x{minutes}"))
    return out


def histogram(name: str, member: dict, minutes: int, *, per_minute: int, at: float, start: int = 0) -> list[dict]:
    """Cumulative bucket series where every observation takes about `at` seconds."""
    out = []
    for le in DISK_BUCKETS + [float("inf")]:
        rate = per_minute if le >= at else 0
        le_text = "+Inf" if le == float("inf") else fmt(round(le, 6))
        out.append(series(f"{name}_bucket", labels(member, le=le_text), f"{start}+{rate}x{minutes}"))
    out.append(series(f"{name}_count", labels(member), f"{start}+{per_minute}x{minutes}"))
    return out


def replace(base: list[dict], name: str, member: dict, values: str, **extra: str) -> list[dict]:
    """`base` with the values of one series replaced (it must exist)."""
    sel = selector(name, labels(member, **extra))
    hits = [s for s in base if s["series"] == sel]
    assert len(hits) == 1, f"no series {sel}"
    hits[0]["values"] = values
    return base


def cluster(minutes: int) -> list[dict]:
    out = []
    for m in MEMBERS:
        out += healthy_member(m, minutes)
    return out


def alert(name: str, t: str, alerts: list[dict]) -> dict:
    """A check on Prometheus' ALERTS series: exactly `alerts` are firing for `name` at `t`
    (an empty list: none is firing, so the alert resolved or never fired)."""
    samples = []
    for a in alerts:
        lbls = {"alertname": name, "alertstate": "firing", **a["exp_labels"]}
        samples.append({"labels": selector("ALERTS", lbls), "value": 1})
    return {"expr": f'ALERTS{{alertname="{name}", alertstate="firing"}}', "eval_time": t, "exp_samples": samples}


def fired(severity: str, **lbls: str) -> dict:
    return {"exp_labels": {"severity": severity, **lbls}}


def member_labels(member: dict, **extra: str) -> dict:
    return labels(member, **extra)


def quiet(t: str) -> list[dict]:
    """Nothing firing nor pending at `t`."""
    return [{"expr": "ALERTS", "eval_time": t, "exp_samples": []}]


def tests() -> list[dict]:
    groups = []

    # 1. A healthy cluster for an hour: nothing fires; recording rules give the expected values.
    groups.append({
        "name": "healthy cluster",
        "interval": "1m",
        "input_series": cluster(60),
        "promql_expr_test": quiet("30m") + quiet("60m") + [
            {"expr": 'job:etcd_members_up:sum{job="keelson-etcd"}', "eval_time": "30m",
             "exp_samples": [{"labels": 'job:etcd_members_up:sum{job="keelson-etcd", namespace="db"}', "value": 3}]},
            {"expr": 'job:etcd_server_has_leader:min', "eval_time": "30m",
             "exp_samples": [{"labels": 'job:etcd_server_has_leader:min{job="keelson-etcd", namespace="db"}', "value": 1}]},
            {"expr": 'instance:etcd_server_proposals_apply_lag:entries{pod="keelson-1"}', "eval_time": "30m",
             "exp_samples": [{"labels": 'instance:etcd_server_proposals_apply_lag:entries{' + ", ".join(f'{k}="{v}"' for k, v in sorted(labels(MEMBERS[1]).items())) + '}', "value": 2}]},
            {"expr": 'job:grpc_server_handled_failed:ratio_rate5m', "eval_time": "30m",
             "exp_samples": [{"labels": 'job:grpc_server_handled_failed:ratio_rate5m{job="keelson-etcd", namespace="db"}', "value": 0}]},
            {"expr": 'instance:etcd_mvcc_db_total_size_in_bytes:quota_ratio{pod="keelson-2"}', "eval_time": "30m",
             "exp_samples": [{"labels": 'instance:etcd_mvcc_db_total_size_in_bytes:quota_ratio{' + ", ".join(f'{k}="{v}"' for k, v in sorted(labels(MEMBERS[2]).items())) + '}', "value": 300 / 2048}]},
        ],
    })

    # 2. keelson-2 is down from minute 5 to 30 and keelson-1 from 10 to 16: a quorum is lost for
    #    6 minutes (etcdInsufficientMembers), a member is missing for 25 (etcdMembersDown).
    s = cluster(50)
    replace(s, "up", MEMBERS[2], "1+0x4 0+0x25 1+0x20")
    replace(s, "up", MEMBERS[1], "1+0x9 0+0x5 1+0x34")
    cluster_lbls = {"job": JOB, "namespace": NS}
    groups.append({
        "name": "members down, quorum lost, then back",
        "interval": "1m",
        "input_series": s,
        "promql_expr_test": [
            alert("etcdInsufficientMembers", "11m", []),  # pending: for 3m
            alert("etcdInsufficientMembers", "14m", [fired("critical", **cluster_lbls)]),
            alert("etcdMembersDown", "14m", []),  # pending: for 10m
            alert("etcdMembersDown", "20m", [fired("critical", **cluster_lbls)]),
            alert("etcdInsufficientMembers", "20m", []),
            alert("etcdMembersDown", "29m", [fired("critical", **cluster_lbls)]),
            alert("etcdMembersDown", "35m", []),
        ] + quiet("45m"),
        "alert_rule_test": [
            {"eval_time": "14m", "alertname": "etcdInsufficientMembers", "exp_alerts": [{
                "exp_labels": {"severity": "critical", **cluster_lbls},
                "exp_annotations": {
                    "summary": "etcd cluster has insufficient number of members.",
                    "description": 'etcd cluster "keelson-etcd": only 1 member(s) up, less than a quorum; writes and linearizable reads fail.',
                }}]},
        ],
    })

    # 3. No leader anywhere from minute 10 to 15 (an election that cannot complete).
    s = cluster(30)
    for m in MEMBERS:
        replace(s, "etcd_server_has_leader", m, "1+0x9 0+0x5 1+0x15")
    groups.append({
        "name": "no leader, then elected",
        "interval": "1m",
        "input_series": s,
        "promql_expr_test": [
            alert("etcdNoLeader", "13m", [fired("critical", **member_labels(m)) for m in MEMBERS]),
            alert("etcdNoLeader", "20m", []),
        ],
        "alert_rule_test": [
            {"eval_time": "13m", "alertname": "etcdNoLeader", "exp_alerts": [{
                "exp_labels": {"severity": "critical", **member_labels(m)},
                "exp_annotations": {
                    "summary": "etcd cluster has no leader.",
                    "description": f'etcd cluster "keelson-etcd": member {m["instance"]} has no leader.',
                }} for m in MEMBERS]},
            {"eval_time": "20m", "alertname": "etcdNoLeader", "exp_alerts": []},
        ],
    })

    # 4. keelson-1's disk slows down for 30 minutes: 10 of its 600 fsyncs a minute take ~0.7 s
    #    (99th percentile 0.7168 s: warning, not critical), then it recovers.
    s = cluster(60)
    slow_member = MEMBERS[1]
    for le in DISK_BUCKETS + [float("inf")]:
        le_text = "+Inf" if le == float("inf") else fmt(round(le, 6))
        slow = (590 if le >= 0.002 else 0) + (10 if le >= 0.7 else 0)
        fast = 600 if le >= 0.002 else 0
        replace(s, "etcd_disk_wal_fsync_duration_seconds_bucket", slow_member,
                f"0+{slow}x30 {30 * slow + fast}+{fast}x29", le=le_text)
    instance_lbls = {"job": JOB, "namespace": NS, "instance": slow_member["instance"]}
    groups.append({
        "name": "slow fsyncs on one member",
        "interval": "1m",
        "input_series": s,
        "promql_expr_test": [
            alert("etcdHighFsyncDurations", "8m", []),
            alert("etcdHighFsyncDurations", "20m", [fired("warning", **instance_lbls)]),
            alert("etcdHighFsyncDurations", "50m", []),
            {"expr": "instance:etcd_disk_wal_fsync_duration_seconds:p99_rate5m > 0.5", "eval_time": "20m",
             "exp_samples": [{"labels": selector("instance:etcd_disk_wal_fsync_duration_seconds:p99_rate5m", instance_lbls), "value": 0.7168}]},
        ],
    })

    # 5. The database of every member grows towards the 2 GiB quota (no compaction), then a
    #    compaction and defragmentation brings it back to 300 MiB at minute 60.
    s = cluster(90)
    for m in MEMBERS:
        # 1.5 GiB growing 10 MiB/min for 60 minutes (2.09 GiB at the end), then 300 MiB.
        grow = 10 * 1024**2
        replace(s, "etcd_mvcc_db_total_size_in_bytes", m,
                f"{int(1.5 * GIB)}+{grow}x59 {300 * 1024**2}+0x30")
    per_member = lambda sev, m: fired(sev, **member_labels(m))  # noqa: E731
    groups.append({
        "name": "database fills its quota, then defragmented",
        "interval": "1m",
        "input_series": s,
        "promql_expr_test": [
            # 80% of 2 GiB = 1.6 GiB, reached after ~10 minutes; for 15m.
            alert("KeelsonBackendQuotaHigh", "30m", [per_member("warning", m) for m in MEMBERS]),
            # 95% = 1.9 GiB after ~41 minutes; for 10m.
            alert("etcdBackendQuotaLowSpace", "45m", []),
            alert("etcdBackendQuotaLowSpace", "55m", [per_member("critical", m) for m in MEMBERS]),
            alert("etcdBackendQuotaLowSpace", "70m", []),
            alert("KeelsonBackendQuotaHigh", "70m", []),
        ],
    })

    # 6. Leader changes every 2 minutes for 20 minutes (flapping elections), then stable.
    s = cluster(60)
    for m in MEMBERS:
        replace(s, "etcd_server_leader_changes_seen_total", m, "1+0.5x20 11+0x39")
    groups.append({
        "name": "flapping leadership",
        "interval": "1m",
        "input_series": s,
        "promql_expr_test": [
            alert("etcdHighNumberOfLeaderChanges", "15m", [fired("warning", job=JOB, namespace=NS)]),
            alert("etcdHighNumberOfLeaderChanges", "50m", []),
        ],
    })

    # 7. keelson-0 answers 10% of its Range calls with Unavailable for 20 minutes.
    s = cluster(60)
    m0 = MEMBERS[0]
    replace(s, "grpc_server_handled_total", m0, "0+300x20 6000+0x39",
            grpc_type="unary", grpc_service="etcdserverpb.KV", grpc_method="Range", grpc_code="Unavailable")
    grpc_lbls = {"job": JOB, "namespace": NS, "instance": m0["instance"], "grpc_service": "etcdserverpb.KV", "grpc_method": "Range"}
    groups.append({
        "name": "failing requests on one member",
        "interval": "1m",
        "input_series": s,
        "promql_expr_test": [
            alert("etcdHighNumberOfFailedGRPCRequests", "15m", [fired("warning", **grpc_lbls), fired("critical", **grpc_lbls)]),
            alert("etcdHighNumberOfFailedGRPCRequests", "40m", []),
        ],
    })

    # 8. A member joins as a learner and is promoted after 45 minutes; its apply falls 4000
    #    entries behind for 10 minutes while it catches up.
    s = cluster(60)
    m2 = MEMBERS[2]
    replace(s, "etcd_server_is_learner", m2, "1+0x44 0+0x15")
    replace(s, "etcd_server_proposals_applied_total", m2, "998+600x9 3000+600x9 13000+600x40")
    groups.append({
        "name": "learner slow to be promoted, apply lag",
        "interval": "1m",
        "input_series": s,
        "promql_expr_test": [
            alert("KeelsonApplyLagging", "17m", [fired("warning", **member_labels(m2))]),
            alert("KeelsonApplyLagging", "25m", []),
            alert("KeelsonLearnerNotPromoted", "25m", []),
            alert("KeelsonLearnerNotPromoted", "40m", [fired("warning", **member_labels(m2))]),
            alert("KeelsonLearnerNotPromoted", "50m", []),
        ],
    })
    return groups


def dump(value, indent: int = 0) -> str:
    """A small YAML emitter (stable output, no dependency): strings always single-quoted."""
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        lines = []
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:\n{dump(v, indent + 1)}")
            else:
                lines.append(f"{pad}{k}: {dump(v, 0)}")
        return "\n".join(lines)
    if isinstance(value, list):
        if not value:
            return "[]"
        lines = []
        for item in value:
            text = dump(item, indent + 1)
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}- {text.lstrip()}")
            else:
                lines.append(f"{pad}- {text}")
        return "\n".join(lines)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return fmt(value)
    return "'" + str(value).replace("'", "''") + "'"


def render() -> str:
    doc = {
        "rule_files": ["../keelson-alerts.yaml", "../keelson-recording.yaml"],
        "evaluation_interval": "1m",
        "tests": tests(),
    }
    header = "# Generated by gen_alerts_test.py; edit the scenarios there, then run it.\n"
    return header + dump(doc) + "\n"


if __name__ == "__main__":
    text = render()
    if len(sys.argv) > 1 and sys.argv[1] == "--stdout":
        sys.stdout.write(text)
    else:
        OUT.write_text(text)
        print(f"wrote {OUT}")
