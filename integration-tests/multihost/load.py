#!/usr/bin/env python3
"""Bounded load against the gateways of the multi-host test, run inside the
test's "client" network namespace (ip netns exec). Python 3 standard library
only.

  load.py run --gateways 10.77.0.11:8080,10.77.0.12:8080 --tenants FILE \\
              --out FILE --rate 60 --threads 8 --max-seconds 150 \\
              --max-requests 20000 --stop-file PATH
  load.py get URL                # prints the body (for /metrics scraping)
  load.py setup --gateways G1,G2 --admin-token T --tenants N --out FILE
  load.py plaincheck ENDPOINT    # a plaintext Health.Check: "answered" or not

run: THREADS threads send RATE requests/s in all (each thread paces
itself), until STOP_FILE exists, MAX_SECONDS have passed or MAX_REQUESTS
were sent, whichever comes first: it always stops by itself. The mix is
1/3 GET /api/v1/tenant, 1/3 GET /api/v1/projects?page_size=5 (both
idempotent) and 1/3 POST /api/v1/projects with a unique name (not
idempotent). Every request is one line of JSON in OUT:

  {"t": unix time sent, "dt": seconds, "kind": "tenant"|"list"|"create",
   "gw": gateway tried last, "status": HTTP status or 0, "err": text,
   "lb": times the request was re-sent to the other gateway, "name": the
   project name (create), "id": the project id (acknowledged create)}

Like a load balancer in front of the gateways (nginx's default
proxy_next_upstream), a request whose connection could not be made goes to
the other gateway (nothing was sent, so this is safe for every method), and
an idempotent request whose connection broke before an answer is re-sent
to the other gateway once. A gateway that refused a connection is skipped
for 2 s. A non-idempotent request whose connection broke after it was sent
is not re-sent: it counts as failed and unacknowledged.
"""
import argparse
import http.client
import json
import os
import socket
import sys
import threading
import time

CONNECT_TIMEOUT = 1.0
READ_TIMEOUT = 10.0


class GatewaySet:
    """The gateways and when each may be tried again."""

    def __init__(self, gateways):
        self.gateways = gateways
        self.down_until = {g: 0.0 for g in gateways}
        self.lock = threading.Lock()
        self.next = 0

    def order(self):
        """Gateways to try, round-robin, those marked down last."""
        with self.lock:
            i = self.next
            self.next += 1
        n = len(self.gateways)
        rr = [self.gateways[(i + k) % n] for k in range(n)]
        now = time.monotonic()
        return ([g for g in rr if self.down_until[g] <= now]
                + [g for g in rr if self.down_until[g] > now])

    def mark_down(self, gw):
        with self.lock:
            self.down_until[gw] = time.monotonic() + 2.0


def one(gw, method, path, host, key, body):
    """(phase, status, body bytes): phase 'connect' means nothing was sent."""
    h, p = gw.rsplit(":", 1)
    try:
        sock = socket.create_connection((h, int(p)), timeout=CONNECT_TIMEOUT)
    except OSError as e:
        return "connect", 0, str(e).encode()
    conn = http.client.HTTPConnection(h, int(p), timeout=READ_TIMEOUT)
    conn.sock = sock
    sock.settimeout(READ_TIMEOUT)
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Host": host, "Authorization": "Bearer " + key, "Connection": "close"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        return "done", r.status, r.read()
    except (OSError, http.client.HTTPException) as e:
        return "broken", 0, str(e).encode()
    finally:
        conn.close()


def worker(args, gws, tenants, out, out_lock, stop, counter, idx):
    period = args.threads / float(args.rate)
    next_t = time.monotonic() + (idx * period / args.threads)
    seq = 0
    while not stop.is_set():
        now = time.monotonic()
        if now < next_t:
            time.sleep(min(next_t - now, 0.2))
            continue
        next_t += period
        if next_t < now - 1.0:  # never burst to catch up after a stall
            next_t = now
        with out_lock:
            if counter[0] >= args.max_requests:
                stop.set()
                break
            counter[0] += 1
            n = counter[0]
        sub, key = tenants[n % len(tenants)]
        host = "%s.%s" % (sub, args.base_domain)
        kind = ("tenant", "list", "create")[n % 3]
        rec = {"t": time.time(), "kind": kind, "lb": 0}
        if kind == "tenant":
            method, path, body = "GET", "/api/v1/tenant", None
        elif kind == "list":
            method, path, body = "GET", "/api/v1/projects?page_size=5", None
        else:
            seq += 1
            rec["name"] = "mh-%d-%d-%d" % (os.getpid(), idx, seq)
            method, path, body = "POST", "/api/v1/projects", {"name": rec["name"]}
        t0 = time.monotonic()
        order = gws.order()
        status, err, resent = 0, "", False
        for i, gw in enumerate(order):
            rec["gw"] = gw
            phase, status, data = one(gw, method, path, host, key, body)
            if phase == "connect":
                gws.mark_down(gw)
                err = data.decode("utf-8", "replace")
                if i + 1 < len(order):
                    rec["lb"] += 1
                continue
            if phase == "broken":
                err = data.decode("utf-8", "replace")
                if method == "GET" and not resent and i + 1 < len(order):
                    resent = True
                    rec["lb"] += 1
                    continue
                break
            err = ""
            if status >= 300:
                err = data[:200].decode("utf-8", "replace")
            elif kind == "create":
                try:
                    rec["id"] = json.loads(data)["id"]
                except (ValueError, KeyError, TypeError):
                    err = "2xx without an id: %r" % data[:200]
            break
        rec["dt"] = round(time.monotonic() - t0, 4)
        rec["status"] = status
        rec["err"] = err
        with out_lock:
            out.write(json.dumps(rec) + "\n")


def run(args):
    with open(args.tenants) as f:
        tenants = [tuple(line.split()) for line in f if line.strip()]
    gws = GatewaySet(args.gateways.split(","))
    stop = threading.Event()
    out_lock = threading.Lock()
    counter = [0]
    deadline = time.monotonic() + args.max_seconds
    with open(args.out, "w", buffering=1) as out:
        threads = [threading.Thread(target=worker, daemon=True,
                                    args=(args, gws, tenants, out, out_lock, stop, counter, i))
                   for i in range(args.threads)]
        for t in threads:
            t.start()
        print("started %d threads" % args.threads, flush=True)
        while not stop.is_set():
            if time.monotonic() >= deadline or (args.stop_file and os.path.exists(args.stop_file)):
                stop.set()
                break
            time.sleep(0.1)
        for t in threads:
            t.join(READ_TIMEOUT + CONNECT_TIMEOUT * 3 + 5)
    print("sent %d requests" % counter[0], flush=True)


def get(url):
    import urllib.request
    with urllib.request.urlopen(url, timeout=3) as r:
        sys.stdout.write(r.read().decode("utf-8", "replace"))


def call(gw, method, path, host, token, body=None):
    """(status, parsed JSON or None) of one request."""
    phase, status, data = one(gw, method, path, host, token, body)
    if phase != "done":
        raise SystemExit("%s %s on %s: %s" % (method, path, gw, data.decode()))
    try:
        return status, json.loads(data) if data else None
    except ValueError:
        return status, None


def setup(args):
    """A plan with room for the run, N active tenants on it with one API key
    each ('subdomain key' lines in OUT), every tenant asked once through
    every gateway (caches warm)."""
    gws = args.gateways.split(",")
    host = args.base_domain
    plan = "mh%d" % os.getpid()
    limits = {"api_requests_per_minute": "600000", "max_projects": "100000",
              "max_api_keys": "5", "storage_mb": "1000"}
    st, body = call(gws[0], "POST", "/admin/v1/plans", host, args.admin_token,
                    {"name": plan, "features": ["basic"], "limits": limits})
    if st != 200:
        raise SystemExit("creating plan %s: %s %s" % (plan, st, body))
    lines = []
    for i in range(args.tenants):
        sub = "mh%d%c" % (os.getpid() % 100000, ord("a") + i)
        st, t = call(gws[0], "POST", "/admin/v1/tenants", host, args.admin_token,
                     {"subdomain": sub, "name": "Multihost " + sub, "plan": plan,
                      "status": "active"})
        if st not in (200, 201):
            raise SystemExit("creating tenant %s: %s %s" % (sub, st, t))
        st, k = call(gws[0], "POST", "/admin/v1/tenants/%s/api-keys" % t["id"], host,
                     args.admin_token, {"name": "multihost"})
        if st not in (200, 201):
            raise SystemExit("creating a key of %s: %s %s" % (sub, st, k))
        lines.append("%s %s\n" % (sub, k["secret"]))
    # Creation events reach the gateways asynchronously and drop cached
    # entries: ask twice, some time apart, through every gateway.
    for _ in range(2):
        for line in lines:
            sub, key = line.split()
            for gw in gws:
                st, b = call(gw, "GET", "/api/v1/projects?page_size=1",
                             "%s.%s" % (sub, args.base_domain), key)
                if st != 200:
                    raise SystemExit("warming %s on %s: %s %s" % (sub, gw, st, b))
        time.sleep(0.5)
    with open(args.out, "w") as f:
        f.writelines(lines)
    print("%d tenants on plan %s" % (len(lines), plan))


def plaincheck(endpoint):
    """A Health.Check without Curve keys: a Curve server must not answer."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import harness
    print("answered" if harness.health_check(endpoint, 1500) else "no answer")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--gateways", required=True)
    r.add_argument("--tenants", required=True, help="file of 'subdomain key' lines")
    r.add_argument("--base-domain", default="localhost")
    r.add_argument("--out", required=True)
    r.add_argument("--rate", type=float, default=60.0)
    r.add_argument("--threads", type=int, default=8)
    r.add_argument("--max-seconds", type=float, default=150.0)
    r.add_argument("--max-requests", type=int, default=20000)
    r.add_argument("--stop-file", default="")
    g = sub.add_parser("get")
    g.add_argument("url")
    s = sub.add_parser("setup")
    s.add_argument("--gateways", required=True)
    s.add_argument("--admin-token", required=True)
    s.add_argument("--base-domain", default="localhost")
    s.add_argument("--tenants", type=int, default=4)
    s.add_argument("--out", required=True)
    c = sub.add_parser("plaincheck")
    c.add_argument("endpoint")
    a = ap.parse_args()
    if a.cmd == "run":
        run(a)
    elif a.cmd == "setup":
        setup(a)
    elif a.cmd == "plaincheck":
        plaincheck(a.endpoint)
    else:
        get(a.url)


if __name__ == "__main__":
    main()
