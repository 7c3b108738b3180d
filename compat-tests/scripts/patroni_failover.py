"""Real Patroni (Debian's patroni, its etcd3 DCS over the JSON gateway) with real PostgreSQL.

Usage: patroni_failover.py HOST PORT WORK_DIR DEADLINE_SECONDS [auth]

With `auth`, the server's auth is enabled first (through the gateway's auth routes) and Patroni
logs in as a user whose role may only read and write its scope's keys; this script reads the
DCS as root.

Two Patroni members of one scope on loopback: one bootstraps PostgreSQL and takes the leader
key, the other clones it and streams from it; a switchover through Patroni's REST API moves
the leader key to the other; then the leader's node is killed (Patroni and PostgreSQL) and the
replica takes over once the leader key's lease expired; last, a Patroni stopped cleanly gives
its leader key up.
Each wait is bounded and the whole run ends before DEADLINE_SECONDS, so the caller's own
timeout never has to kill this process (whose `finally` stops every Patroni and PostgreSQL it
started). Prints one line per step and "patroni done" at the end; a failed check raises.

When run as root, Patroni runs as the `postgres` user (PostgreSQL refuses to run as root).
"""

import base64
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

SCOPE = "keelson-compat"
PATRONI = "/usr/bin/patroni"
HTTP_TIMEOUT = 5
POLL = 0.2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin_dir():
    base = "/usr/lib/postgresql"
    versions = sorted(
        (v for v in os.listdir(base) if os.path.isfile(os.path.join(base, v, "bin", "initdb"))),
        key=int,
    )
    assert versions, "no PostgreSQL server under /usr/lib/postgresql (install postgresql)"
    return os.path.join(base, versions[-1], "bin")


class Deadline:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def wait_for(self, what, check, limit):
        """Polls check() until it returns a true value, for at most `limit` seconds."""
        end = min(self.end, time.monotonic() + limit)
        last = None
        while time.monotonic() < end:
            try:
                value = check()
                if value:
                    return value
                last = value
            except (OSError, ValueError, KeyError) as e:
                last = e
            time.sleep(POLL)
        raise AssertionError("timed out waiting for %s (last: %r)" % (what, last))


# The token this script sends to the server once auth is on (`auth` mode).
TOKEN = None


def http_json(method, url, body=None, token=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if token is not None:
        request.add_header("Authorization", token)
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            text = response.read()
            status = response.status
    except urllib.error.HTTPError as e:
        text, status = e.read(), e.code
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text.decode(errors="replace")


def as_user(user, home):
    """Popen arguments that run a child as `user` (None: as this process's user)."""
    if user is None:
        return {}
    env = dict(os.environ, HOME=home, USER=user.pw_name, LOGNAME=user.pw_name)
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [], "env": env}


class Member:
    def __init__(self, name, work_dir, dcs, pg_bin, user, credentials):
        self.name = name
        self.dir = os.path.join(work_dir, name)
        self.api_port = free_port()
        self.pg_port = free_port()
        self.api = "http://127.0.0.1:%d" % self.api_port
        self.data_dir = os.path.join(self.dir, "data")
        self.pg_bin = pg_bin
        self.user = user
        self.process = None
        os.makedirs(self.dir, mode=0o700)
        config = os.path.join(self.dir, "patroni.yml")
        # JSON is YAML: no YAML writer is needed.
        settings = {
            "scope": SCOPE,
            "name": name,
            "restapi": {
                "listen": "127.0.0.1:%d" % self.api_port,
                "connect_address": "127.0.0.1:%d" % self.api_port,
            },
            "etcd3": dict(hosts=dcs, **credentials),
            "bootstrap": {
                "dcs": {"ttl": 10, "loop_wait": 1, "retry_timeout": 5},
                "initdb": [{"encoding": "UTF8"}],
            },
            "postgresql": {
                "listen": "127.0.0.1:%d" % self.pg_port,
                "connect_address": "127.0.0.1:%d" % self.pg_port,
                "data_dir": self.data_dir,
                "bin_dir": pg_bin,
                "pgpass": os.path.join(self.dir, "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres", "password": "compat"},
                    "replication": {"username": "replicator", "password": "compat"},
                },
                "parameters": {"unix_socket_directories": self.dir},
                "pg_hba": [
                    "local all all trust",
                    "host all all 127.0.0.1/32 md5",
                    "host replication replicator 127.0.0.1/32 md5",
                ],
            },
            "tags": {"nofailover": False},
        }
        with open(config, "w") as f:
            json.dump(settings, f)
        if user is not None:
            for path in (self.dir, config):
                os.chown(path, user.pw_uid, user.pw_gid)
        self.config = config
        self.log_path = os.path.join(self.dir, "patroni.log")

    def start(self):
        log = open(self.log_path, "ab")
        # Its own process group: the cleanup signals Patroni and the PostgreSQL it forked.
        # Patroni is started directly as the user (no runuser, which would SIGKILL it 2 s
        # after a SIGTERM, before its shutdown gives up the leader key).
        self.process = subprocess.Popen(
            [PATRONI, self.config], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, **as_user(self.user, self.dir),
        )
        log.close()

    def signal_group(self, sig):
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout):
        """Patroni's own shutdown (SIGTERM): it stops PostgreSQL and gives up the leader key."""
        self.signal_group(signal.SIGTERM)
        if self.process is not None:
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.process.wait(timeout=HTTP_TIMEOUT)
                raise AssertionError("%s's Patroni did not stop within %ss" % (self.name, timeout))

    def cleanup(self):
        self.signal_group(signal.SIGKILL)
        # A postmaster that outlived its Patroni (it leaves the group when daemonised).
        if os.path.isfile(os.path.join(self.data_dir, "postmaster.pid")):
            command = [os.path.join(self.pg_bin, "pg_ctl"), "stop", "-m", "immediate", "-D",
                       self.data_dir]
            subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=30, check=False, **as_user(self.user, self.dir))

    def cluster(self):
        status, body = http_json("GET", self.api + "/cluster")
        assert status == 200, (status, body)
        return {m["name"]: m for m in body["members"]}

    def log_tail(self):
        try:
            with open(self.log_path, "rb") as f:
                return b"".join(f.readlines()[-30:]).decode(errors="replace")
        except OSError:
            return ""


def dcs_value(dcs, key):
    """The value of a key in the DCS, read through the gateway as any client would."""
    body = {"key": base64.b64encode(key.encode()).decode()}
    status, answer = http_json("POST", "http://%s/v3/kv/range" % dcs, body, TOKEN)
    assert status == 200, (status, answer)
    kvs = answer.get("kvs", [])
    return base64.b64decode(kvs[0]["value"]).decode() if kvs else None


def leader_and_streaming_replica(members):
    """(leader, replica) once one member leads and the other streams from it."""
    view = members[0].cluster()
    if len(view) != 2:
        return None
    leaders = [name for name, m in view.items() if m["role"] == "leader" and m["state"] == "running"]
    if len(leaders) != 1:
        return None
    leader = next(m for m in members if m.name == leaders[0])
    replica = next(m for m in members if m is not leader)
    status, body = http_json("GET", leader.api + "/patroni")
    if status != 200:
        return None
    streaming = [r for r in body.get("replication", []) if r.get("state") == "streaming"]
    if [r["application_name"] for r in streaming] != [replica.name]:
        return None
    return leader, replica


def gateway(dcs, path, body, token=None):
    status, answer = http_json("POST", "http://%s/v3/%s" % (dcs, path), body, token)
    assert status == 200, (path, status, answer)
    return answer


def enable_auth(dcs):
    """root, and a `patroni` user whose role reads and writes only under /service/<scope>/."""
    global TOKEN
    prefix = "/service/%s/" % SCOPE
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    b64 = lambda text: base64.b64encode(text.encode()).decode()
    gateway(dcs, "auth/user/add", {"name": "root", "password": "rootpw"})
    gateway(dcs, "auth/user/grant", {"user": "root", "role": "root"})
    gateway(dcs, "auth/role/add", {"name": "patroni"})
    gateway(dcs, "auth/role/grant", {"name": "patroni", "perm": {
        "permType": "READWRITE", "key": b64(prefix), "range_end": b64(end)}})
    gateway(dcs, "auth/user/add", {"name": "patroni", "password": "patronipw"})
    gateway(dcs, "auth/user/grant", {"user": "patroni", "role": "patroni"})
    gateway(dcs, "auth/enable", {})
    TOKEN = gateway(dcs, "auth/authenticate", {"name": "root", "password": "rootpw"})["token"]
    status, answer = http_json("POST", "http://%s/v3/kv/range" % dcs, {"key": b64(prefix)})
    assert status == 400 and "user name is empty" in answer["error"], (status, answer)
    print("auth enabled; patroni may use only %s" % prefix, flush=True)
    return {"username": "patroni", "password": "patronipw"}


def main():
    host, port, work_dir, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    auth = sys.argv[5:] == ["auth"]
    deadline = Deadline(seconds)
    dcs = "%s:%d" % (host, port)
    credentials = enable_auth(dcs) if auth else {}
    user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    if user is not None:
        os.chown(work_dir, user.pw_uid, user.pw_gid)
    pg_bin = pg_bin_dir()
    members = [Member(name, work_dir, dcs, pg_bin, user, credentials) for name in ("pg1", "pg2")]
    try:
        members[0].start()
        deadline.wait_for("pg1 to bootstrap and take the leader key",
                          lambda: dcs_value(dcs, "/service/%s/leader" % SCOPE) == "pg1", 90)
        assert dcs_value(dcs, "/service/%s/initialize" % SCOPE), "no initialize key"
        print("pg1 bootstrapped PostgreSQL and holds the leader key", flush=True)

        members[1].start()
        leader, replica = deadline.wait_for(
            "a leader and a streaming replica", lambda: leader_and_streaming_replica(members), 90)
        assert leader.name == "pg1", leader.name
        print("pg2 cloned pg1 and streams from it", flush=True)

        status, body = http_json("POST", leader.api + "/switchover",
                                 {"leader": leader.name, "candidate": replica.name})
        assert status == 200, ("switchover", status, body)
        deadline.wait_for("pg2 to lead after the switchover",
                          lambda: (leader_and_streaming_replica(members) or (None,))[0] is replica,
                          90)
        assert dcs_value(dcs, "/service/%s/leader" % SCOPE) == replica.name
        print("switchover: pg2 leads, pg1 streams from it", flush=True)

        # The node is lost: Patroni killed, PostgreSQL stopped at once. Nobody gives the leader
        # key up; it goes when its lease (TTL 10 s) expires on the server.
        replica.cleanup()
        # /cluster calls pg1 the leader as soon as its key is written; /primary answers 200
        # only once pg1's Patroni has promoted PostgreSQL. Stopping it in between leaves a
        # Patroni that does not yet know it holds the key, so it would not give it up.
        deadline.wait_for(
            "pg1 to take over once pg2's leader key expired",
            lambda: dcs_value(dcs, "/service/%s/leader" % SCOPE) == leader.name
            and leader.cluster()[leader.name]["role"] == "leader"
            and http_json("GET", leader.api + "/primary")[0] == 200,
            60,
        )
        print("failover: pg2 killed, its leader key expired, pg1 leads", flush=True)
        leader.stop(timeout=60)
        assert dcs_value(dcs, "/service/%s/leader" % SCOPE) is None, "the leader key outlived its holder"
        print("patroni done", flush=True)
    except BaseException:
        for member in members:
            sys.stderr.write("--- %s's Patroni log ---\n%s\n" % (member.name, member.log_tail()))
        raise
    finally:
        for member in members:
            member.cleanup()


if __name__ == "__main__":
    main()
