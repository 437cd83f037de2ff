"""PostgreSQL and Redis going away and coming back under the running
services. kltest: run_serial (this file stops the run's shared servers, so
CTest runs it alone)."""

import time

import harness
from harness import unique

T = "/admin/v1/tenants"
RPC_TIMEOUT_MS = 2000
GATEWAY_ENV = {"KOWLOON_RPC_TIMEOUT_MS": str(RPC_TIMEOUT_MS),
               "KOWLOON_TENANT_CACHE_TTL_MS": "600000"}


def test_postgres_restart(stack):
    t = stack.create_tenant(unique("pgr"), status="active")
    key = stack.create_key(t["id"])["secret"]
    stack.warm(t["subdomain"], key)
    limit = RPC_TIMEOUT_MS / 1000.0 + 1.0
    harness.pg_stop()
    try:
        # The cached tenant is still served: no database on the hot path.
        r = stack.tenant_get(t["subdomain"], key)
        assert r.status == 200, r
        # A cache miss needs the database: a prompt 503, not a hang.
        r = stack.tenant_get(unique("miss"), key, timeout=limit + 10)
        assert r.status == 503, r
        assert r.elapsed < limit, r.elapsed
        r = stack.admin("POST", T, {"subdomain": unique("pgr"), "name": "x"},
                        timeout=limit + 10)
        assert r.status == 503, r
        harness.wait_until(lambda: stack.req("GET", "/readyz").status == 503, limit + 5,
                           what="/readyz 503 while PostgreSQL is down")
        assert stack.tenant.alive(), stack.tenant.tail()
    finally:
        harness.pg_start()
    # The tenant service reconnects by itself.
    harness.wait_until(lambda: stack.tenant_get(unique("miss"), key).status == 404, 15,
                       what="a cache miss answered again after PostgreSQL came back")
    assert stack.req("GET", "/readyz").status == 200
    t2 = stack.create_tenant(unique("pgr"))
    assert stack.admin("GET", "%s/%s" % (T, t2["id"])).status == 200


def test_redis_restart(stack):
    t = stack.create_tenant(unique("rdr"), status="active")
    key = stack.create_key(t["id"])["secret"]
    stack.warm(t["subdomain"], key)
    harness.redis_stop()
    try:
        # Redis down: everything still works, more slowly if at all.
        assert stack.tenant_get(t["subdomain"], key).status == 200
        t2 = stack.create_tenant(unique("rdr"), status="active")
        k2 = stack.create_key(t2["id"])["secret"]
        assert stack.tenant_get(t2["subdomain"], k2).status == 200
        r = stack.admin("PATCH", "%s/%s" % (T, t["id"]), {"name": "During outage"})
        assert r.status == 200, r
    finally:
        harness.redis_start()
    # Once Redis is back, the gateway subscribes again, and a change is
    # again seen at once. Each round: the tenant is active in the cache;
    # suspend and resume must each show within a second.
    def seen_within(want, seconds=1.0):
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            if stack.tenant_get(t["subdomain"], key).status == want:
                return True
            time.sleep(0.05)
        return False

    def round_trip():
        if not seen_within(200):
            assert stack.admin("POST", "%s/%s:resume" % (T, t["id"])).status == 200
            return False
        assert stack.admin("POST", "%s/%s:suspend" % (T, t["id"])).status == 200
        suspended = seen_within(402)
        assert stack.admin("POST", "%s/%s:resume" % (T, t["id"])).status == 200
        return suspended and seen_within(200)

    harness.wait_until(round_trip, 20, interval=0.2,
                       what="suspend/resume seen at once after Redis came back")
    assert round_trip(), "changes seen once after the Redis restart, then lost again"
