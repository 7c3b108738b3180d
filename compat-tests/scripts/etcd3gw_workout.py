"""A day's work of an etcd3gw user (Debian's python3-etcd3gw) through the JSON gateway.

Usage: etcd3gw_workout.py HOST PORT API_PATH. Prints one line per step and "workout done" at
the end; any failed check raises, and the process exits non-zero.
"""

import queue
import sys
import threading

from etcd3gw.client import Etcd3Client

STEP_TIMEOUT = 20


def main():
    host, port, api_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    client = Etcd3Client(host=host, port=port, api_path=api_path, timeout=STEP_TIMEOUT)

    status = client.status()
    assert status["version"], status
    members = client.members()
    assert len(members) == 1 and members[0]["clientURLs"], members
    print("status and members")

    assert client.put("app/config", "v1")
    assert client.get("app/config") == [b"v1"]
    assert client.create("app/config", "other") is False
    assert client.create("app/new", "n1") is True
    assert client.replace("app/config", "v1", "v2") is True
    assert client.replace("app/config", "v1", "v3") is False
    values = [value for value, _ in client.get_prefix("app/")]
    assert values == [b"v2", b"n1"], values
    value, meta = client.get("app/config", metadata=True)[0]
    assert value == b"v2" and meta["key"] == b"app/config" and meta["version"] == "2", meta
    assert client.get("app/missing") == []
    print("put, get, create, replace, prefix")

    lease = client.lease(ttl=30)
    assert client.put("app/ephemeral", "e", lease=lease)
    assert 0 < lease.ttl() <= 30
    assert lease.refresh() == 30
    assert lease.keys() == [b"app/ephemeral"]
    lease.revoke()
    assert client.get("app/ephemeral") == []
    print("lease grant, ttl, keep-alive, keys, revoke")

    lock = client.lock("job", ttl=30)
    assert lock.acquire()
    assert lock.is_acquired()
    rival = client.lock("job", ttl=30)
    assert not rival.acquire()
    assert lock.refresh() == 30
    assert lock.release()
    assert rival.acquire()
    assert rival.release()
    print("lock acquire, refresh, release")

    events, cancel = client.watch_prefix("app/")
    seen = queue.Queue()

    def consume():
        for event in events:
            seen.put(event)

    threading.Thread(target=consume, daemon=True).start()
    # The watch is created asynchronously: write until its first event shows, bounded.
    first = None
    for attempt in range(100):
        client.put("app/watched", str(attempt))
        try:
            first = seen.get(timeout=0.2)
            break
        except queue.Empty:
            continue
    assert first is not None, "no watch event"
    assert first["kv"]["key"] == b"app/watched", first
    assert client.delete("app/watched")
    while True:
        event = seen.get(timeout=STEP_TIMEOUT)
        if event.get("type") == "DELETE":
            break
    cancel()
    written = threading.Event()

    def writer():
        # Until the watch (created asynchronously) has seen a write; bounded.
        for _ in range(200):
            if written.is_set():
                return
            client.put("app/once", "1")
            written.wait(0.1)

    once = threading.Thread(target=writer, daemon=True)
    once.start()
    event = client.watch_once("app/once", timeout=STEP_TIMEOUT)
    written.set()
    once.join(STEP_TIMEOUT)
    assert event["kv"]["value"] == b"1", event
    print("watch, watch_once")

    assert client.delete_prefix("app/") is True
    assert client.delete("app/config") is False
    assert client.get_all() == []
    print("workout done")


if __name__ == "__main__":
    main()
