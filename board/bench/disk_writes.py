#!/usr/bin/env python3
"""Bytes the daemon writes per message: the number that decides SD-card wear.

Method (board/README.md, "SD cards and flash wear"):
- start `interop-hub` with its demo users and `interopd run` against it, as two processes, so
  the hub's own store is not counted;
- read the daemon's /proc/PID/io, send N texts to the echo contact (+15550100) through the
  API, one at a time, and wait until N echo replies are in the inbox and the last send is
  `read`, then read /proc/PID/io again;
- report the difference per message. `write_bytes` is what the kernel sent to the block
  layer for this process (redb's pages, after fsync); `wchar` is every byte passed to
  write() (the store, the log on stderr, sockets). One "message" here is a round trip: a
  send with its three status changes (sent, delivered, read) plus one received echo with
  its delivery and read receipts.

Usage: cargo build --release && python3 board/bench/disk_writes.py [N]   (default 200, at most 500)
Sends go at the API rate limit (a burst of 100, then 20/s), retried after each 429.
Needs Linux (/proc/PID/io). Prints one line per counter.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.path.join(ROOT, "target", "release")
ECHO = "+15550100"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, ok, timeout=60):
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = ok()
        if value:
            return value
        time.sleep(0.05)
    sys.exit(f"disk_writes: timed out waiting for {what}")


def io_counters(pid):
    with open(f"/proc/{pid}/io") as f:
        return {k: int(v) for k, v in (line.split(": ") for line in f.read().splitlines())}


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    work = tempfile.mkdtemp(prefix="interopd-writes-")
    hub_state, state = os.path.join(work, "hub"), os.path.join(work, "state")
    listen, control = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    api = f"127.0.0.1:{free_port()}"
    procs = []
    try:
        procs.append(subprocess.Popen(
            [f"{BIN}/interop-hub", "--state", hub_state, "--listen", listen, "--control", control,
             "--demo-users"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for("the hub", lambda: os.path.exists(os.path.join(hub_state, "ca.pem")))
        conf = subprocess.run(
            [f"{BIN}/interop-hub", "provision", "--state", hub_state, "--account", "bench-home",
             "--connect", listen], check=True, capture_output=True, text=True).stdout
        conf_path = os.path.join(work, "interopd.conf")
        with open(conf_path, "w") as f:
            f.write(conf)
        daemon = subprocess.Popen(
            [f"{BIN}/interopd", "run", "--config", conf_path, "--state", state, "--api", api],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(daemon)
        token_path = os.path.join(state, "api-token")
        wait_for("the API token", lambda: os.path.exists(token_path))
        token = open(token_path).read().strip()

        def call(method, path, body=None):
            req = urllib.request.Request(f"http://{api}{path}", data=body, method=method,
                                         headers={"Authorization": f"Bearer {token}",
                                                  "Content-Type": "text/plain"})
            while True:
                try:
                    with urllib.request.urlopen(req, timeout=30) as r:
                        return json.loads(r.read() or b"{}")
                except urllib.error.HTTPError as e:
                    if e.code != 429:  # the API's rate limit: wait as told, then retry
                        raise
                    time.sleep(float(e.headers.get("Retry-After", "1")))

        wait_for("the link", lambda: call("GET", "/healthz").get("link") == "up")
        # Warm up: the first send fetches the contact's devices and builds the session.
        first = call("POST", f"/v1/messages?to=%2B15550100", b"warm up")["id"]
        wait_for("the warm-up echo", lambda: call("GET", f"/v1/messages/{first}")["status"] == "read")
        wait_for("the warm-up reply", lambda: call("GET", "/v1/inbox?limit=10")["messages"])
        time.sleep(1)
        cursor = call("GET", "/v1/inbox?limit=500")["next"]

        before = io_counters(daemon.pid)
        t0 = time.time()
        last = None
        for i in range(n):
            last = call("POST", "/v1/messages?to=%2B15550100", f"bench {i}".encode())["id"]
        wait_for("the echoes", lambda: len(call("GET", f"/v1/inbox?after={cursor}&limit=500")
                                           ["messages"]) >= n, timeout=300)
        wait_for("the last read receipt",
                 lambda: call("GET", f"/v1/messages/{last}")["status"] == "read", timeout=300)
        time.sleep(1)  # read receipts for the echoes go out in the next pass
        after = io_counters(daemon.pid)
        secs = time.time() - t0
        print(f"disk_writes: {n} round trips in {secs:.1f} s")
        for key in ("write_bytes", "wchar", "syscw"):
            d = after[key] - before[key]
            print(f"  {key:12} {d:>12} total  {d / n:>10.0f} per round trip")
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait()


if __name__ == "__main__":
    main()
