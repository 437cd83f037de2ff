#!/usr/bin/env python3
"""Asks GET PATH once as every tenant of a keys file (load_tenants.py's
"tenant<i> <key>" lines) with its key, and checks the answer by plan, as
the seed's setup.sql assigns plans: even i (pro) must get 200, odd i
(starter) 403 naming the feature (the edge's refusal). This also fills the
gateway's tenant, key and entitlements caches for every tenant.

  seed_warm.py --url URL --keys FILE [--path /api/advanced-reports]
               [--feature advanced_reports] [--concurrency 16]

The last stdout line is one JSON object with the figures; any other answer
stops the run with exit status 1.
"""
import argparse
import json
import os
import signal
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load_tenants import Client, Failure, run_parallel  # noqa: E402


def main():
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--keys", required=True)
    ap.add_argument("--base-domain", default="yoursaas.test")
    ap.add_argument("--path", default="/api/advanced-reports")
    ap.add_argument("--feature", default="advanced_reports")
    ap.add_argument("--concurrency", type=int, default=16)
    a = ap.parse_args()
    u = urllib.parse.urlsplit(a.url)
    pairs = []
    with open(a.keys) as f:
        for line in f:
            sub, key = line.split()
            pairs.append((sub, key, int(sub.lstrip("abcdefghijklmnopqrstuvwxyz"))))
    counts = {}
    lock = threading.Lock()

    def work(client, i):
        sub, key, n = pairs[i]
        hdr = {"Host": "%s.%s" % (sub, a.base_domain), "Authorization": "Bearer " + key}
        st, data = client.request("GET", a.path, hdr)
        want = 200 if n % 2 == 0 else 403
        if st != want:
            raise Failure("GET %s as %s: HTTP %d (want %d): %r" % (a.path, sub, st, want, data[:300]))
        if st == 403 and a.feature.encode() not in data:
            raise Failure("GET %s as %s: 403 without the feature: %r" % (a.path, sub, data[:300]))
        with lock:
            counts[st] = counts.get(st, 0) + 1

    t0 = time.monotonic()
    try:
        run_parallel(len(pairs), a.concurrency, lambda: Client(u.hostname, u.port, 30.0), work)
    except (Failure, OSError) as e:
        print("seed_warm.py: %s" % e, file=sys.stderr)
        return 1
    secs = time.monotonic() - t0
    print(json.dumps({"tenants": len(pairs), "status_200": counts.get(200, 0),
                      "status_403": counts.get(403, 0), "seconds": round(secs, 2),
                      "requests_per_s": round(len(pairs) / secs, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
