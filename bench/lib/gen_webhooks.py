#!/usr/bin/env python3
"""Writes pre-signed Stripe webhook deliveries for bench/webhooks.sh.

  gen_webhooks.py --secret whsec_... --out FILE [--count 10000]
                  [--tenants 1000] [--id-prefix evt_x] [--created-base T]
                  [--kind cycle|succeeded] [--expect-out FILE]

One line per event, "<Stripe-Signature>\\t<body>", signed now (t = now)
with HMAC-SHA256 over "t.body" keyed by the whole secret, as Stripe does.
Event j (0-based) is for tenant n = j % TENANTS + 1 (customer cus_<n>,
subscription sub_<n>) and is that tenant's k-th event, k = j // TENANTS, so
one tenant's events are TENANTS lines apart. Its `created` is
created-base + k (per tenant, later events are later).

--kind cycle: invoice.payment_failed when (k + n) is even, else
invoice.payment_succeeded, so every event of an even tenant changes its
subscription (active -> past_due -> active ...) and the last one of each
tenant is succeeded for even n, failed for odd n (with 10 events each).
--kind succeeded: every event is invoice.payment_succeeded (the warm-up).

--expect-out: "cus_<n> <type of the tenant's last event>" per tenant.
"""
import argparse
import hashlib
import hmac
import json
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--tenants", type=int, default=1000)
    ap.add_argument("--id-prefix", default="evt_bench")
    ap.add_argument("--created-base", type=int, default=None)
    ap.add_argument("--kind", choices=("cycle", "succeeded"), default="cycle")
    ap.add_argument("--expect-out")
    a = ap.parse_args()
    if a.count < 1 or a.tenants < 1:
        ap.error("--count and --tenants must be >= 1")
    now = int(time.time())
    base = a.created_base if a.created_base is not None else now - 60
    key = a.secret.encode()
    last = {}
    with open(a.out, "w") as f:
        for j in range(a.count):
            n = j % a.tenants + 1
            k = j // a.tenants
            if a.kind == "cycle":
                typ = "invoice.payment_failed" if (k + n) % 2 == 0 else "invoice.payment_succeeded"
            else:
                typ = "invoice.payment_succeeded"
            paid = typ == "invoice.payment_succeeded"
            ev = {
                "id": "%s_%06d" % (a.id_prefix, j),
                "object": "event",
                "api_version": "2024-06-20",
                "created": base + k,
                "livemode": False,
                "pending_webhooks": 1,
                "request": {"id": None, "idempotency_key": None},
                "type": typ,
                "data": {"object": {
                    "id": "in_%s_%06d" % (a.id_prefix[4:] or "x", j),
                    "object": "invoice",
                    "customer": "cus_%d" % n,
                    "subscription": "sub_%d" % n,
                    "status": "paid" if paid else "open",
                    "amount_due": 2900,
                    "amount_paid": 2900 if paid else 0,
                    "amount_remaining": 0 if paid else 2900,
                    "attempt_count": 1,
                    "billing_reason": "subscription_cycle",
                    "currency": "usd",
                    "paid": paid,
                    "period_start": base - 30 * 86400,
                    "period_end": base,
                }},
            }
            body = json.dumps(ev, separators=(",", ":"))
            mac = hmac.new(key, ("%d.%s" % (now, body)).encode(), hashlib.sha256).hexdigest()
            f.write("t=%d,v1=%s\t%s\n" % (now, mac, body))
            last[n] = typ
    if a.expect_out:
        with open(a.expect_out, "w") as f:
            for n in sorted(last):
                f.write("cus_%d %s\n" % (n, last[n]))
    print(json.dumps({"events": a.count, "tenants": a.tenants, "t": now,
                      "created_base": base}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
