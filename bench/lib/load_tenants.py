#!/usr/bin/env python3
"""Loads tenants into a running Kowloon gateway through its admin API, or
checks that every loaded tenant answers GET /api/v1/tenant with its key.

  load_tenants.py load   --url URL --admin-token T --keys-out FILE [--count N]
  load_tenants.py verify --url URL --keys FILE

load: for i in 1..N, POST /admin/v1/tenants {"subdomain":"tenant<i>", ...}
then POST /admin/v1/tenants/{id}/api-keys; writes "tenant<i> <secret>" lines
to FILE in order of i. verify: GET /api/v1/tenant as every tenant of FILE
(Host tenant<i>.<base>, Authorization: Bearer <key>), expecting 200 and the
tenant's own subdomain in the answer; this also fills the gateway's caches.

Both use CONCURRENCY threads, each with one keep-alive http.client
connection. The last stdout line is one JSON object with the figures. Any
unexpected answer stops the run with exit status 1.
"""
import argparse
import http.client
import json
import signal
import socket
import sys
import threading
import time
import urllib.parse


class Failure(Exception):
    pass


class NoDelayConnection(http.client.HTTPConnection):
    """Small requests go out at once (no Nagle wait for the server's ACK)."""

    def connect(self):
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Client:
    """One keep-alive connection; reconnects once if the server closed it."""

    def __init__(self, host, port, timeout):
        self.host, self.port, self.timeout = host, port, timeout
        self.conn = None

    def request(self, method, path, headers, body=None):
        while True:
            reused = self.conn is not None
            if not reused:
                self.conn = NoDelayConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if not reused:
                    raise
                # The server closed an idle keep-alive connection before our
                # request reached it: send it again on a fresh one.
                continue
            if resp.will_close:
                self.close()
            return resp.status, data

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def find_value(obj, key):
    """The first value of KEY anywhere in a JSON document, or None."""
    if isinstance(obj, dict):
        if key in obj and not isinstance(obj[key], (dict, list)):
            return obj[key]
        for v in obj.values():
            r = find_value(v, key)
            if r is not None:
                return r
    elif isinstance(obj, list):
        for v in obj:
            r = find_value(v, key)
            if r is not None:
                return r
    return None


def run_parallel(n, concurrency, make_client, work):
    """work(client, i) for i in 0..n-1 over CONCURRENCY threads."""
    lock = threading.Lock()
    state = {"next": 0, "error": None}

    def worker():
        client = make_client()
        try:
            while True:
                with lock:
                    if state["error"] is not None or state["next"] >= n:
                        return
                    i = state["next"]
                    state["next"] += 1
                work(client, i)
        except Exception as e:  # the first failure stops every thread
            with lock:
                if state["error"] is None:
                    state["error"] = e
        finally:
            client.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if state["error"] is not None:
        raise state["error"]


def parse_json(status, data, what):
    try:
        return json.loads(data)
    except ValueError:
        raise Failure(f"{what}: HTTP {status}, body is not JSON: {data[:300]!r}")


def cmd_load(args, host, port):
    subs = [f"{args.prefix}{i}" for i in range(1, args.count + 1)]
    plans = [p for p in args.plans.split(",") if p] if args.plans else []
    keys = [None] * args.count
    admin = {"Host": args.base_domain, "Authorization": f"Bearer {args.admin_token}",
             "Content-Type": "application/json"}

    def work(client, i):
        body = {"subdomain": subs[i], "name": f"Bench tenant {i + 1}", "status": "active"}
        if plans:  # like the anchor: tenant N gets plans[N % len(plans)]
            body["plan"] = plans[(i + 1) % len(plans)]
        st, data = client.request("POST", "/admin/v1/tenants", admin, json.dumps(body))
        if st not in (200, 201):
            raise Failure(f"POST /admin/v1/tenants {subs[i]}: HTTP {st}: {data[:300]!r}")
        tid = find_value(parse_json(st, data, "create tenant"), "id")
        if not tid:
            raise Failure(f"POST /admin/v1/tenants {subs[i]}: no id in {data[:300]!r}")
        path = f"/admin/v1/tenants/{urllib.parse.quote(str(tid), safe='')}/api-keys"
        st, data = client.request("POST", path, admin, json.dumps({"name": "bench"}))
        if st not in (200, 201):
            raise Failure(f"POST {path}: HTTP {st}: {data[:300]!r}")
        secret = find_value(parse_json(st, data, "create key"), "secret")
        if not secret or any(c.isspace() for c in str(secret)):
            raise Failure(f"POST {path}: no usable secret in {data[:300]!r}")
        keys[i] = secret

    t0 = time.monotonic()
    run_parallel(args.count, args.concurrency,
                 lambda: Client(host, port, args.timeout), work)
    secs = time.monotonic() - t0
    with open(args.keys_out, "w") as f:
        for sub, key in zip(subs, keys):
            f.write(f"{sub} {key}\n")
    calls = 2 * args.count
    print(json.dumps({"tenants": args.count, "keys": args.count, "calls": calls,
                      "seconds": round(secs, 2), "calls_per_s": round(calls / secs, 1),
                      "concurrency": args.concurrency}))


def cmd_verify(args, host, port):
    pairs = []
    with open(args.keys) as f:
        for line in f:
            sub, key = line.split()
            pairs.append((sub, key))

    def work(client, i):
        sub, key = pairs[i]
        hdr = {"Host": f"{sub}.{args.base_domain}", "Authorization": f"Bearer {key}"}
        st, data = client.request("GET", args.path, hdr)
        if st != 200:
            raise Failure(f"GET {args.path} as {sub}: HTTP {st}: {data[:300]!r}")
        got = find_value(parse_json(st, data, f"GET {args.path} as {sub}"), "subdomain")
        if got != sub:
            raise Failure(f"GET {args.path} as {sub}: answer names {got!r}: {data[:300]!r}")

    t0 = time.monotonic()
    run_parallel(len(pairs), args.concurrency,
                 lambda: Client(host, port, args.timeout), work)
    secs = time.monotonic() - t0
    print(json.dumps({"verified": len(pairs), "seconds": round(secs, 2),
                      "requests_per_s": round(len(pairs) / secs, 1)}))


def main():
    # Ctrl-C kills the process at once (no KeyboardInterrupt waiting for the
    # worker threads), so the calling shell sees the signal and cleans up.
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("load", "verify"))
    ap.add_argument("--url", required=True, help="gateway, e.g. http://127.0.0.1:8080")
    ap.add_argument("--base-domain", default="yoursaas.test")
    ap.add_argument("--admin-token", help="load: the admin API's bearer token")
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--prefix", default="tenant")
    ap.add_argument("--plans", default="",
                    help="comma-separated; tenant N gets plans[N %% len] (empty: default plan)")
    ap.add_argument("--keys-out", help="load: file to write")
    ap.add_argument("--keys", help="verify: file written by load")
    ap.add_argument("--path", default="/api/v1/tenant")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args()
    u = urllib.parse.urlsplit(args.url)
    if u.scheme != "http" or not u.hostname:
        ap.error("--url must be http://host:port")
    host, port = u.hostname, u.port or 80
    try:
        if args.command == "load":
            if not args.admin_token or not args.keys_out:
                ap.error("load needs --admin-token and --keys-out")
            cmd_load(args, host, port)
        else:
            if not args.keys:
                ap.error("verify needs --keys")
            cmd_verify(args, host, port)
    except (Failure, OSError, http.client.HTTPException) as e:
        print(f"load_tenants.py {args.command}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
