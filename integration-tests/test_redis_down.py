"""Redis stopped mid-test (this module's own redis-server, so other tests
are unaffected): requests keep succeeding from the gateways' caches, the
TTL bounds staleness while the event channel is down, the flags service
going down too is ridden out with the last entitlements (stale-if-error),
and when Redis comes back events flow again."""

import os
import socket
import tempfile
import time

import pytest

import harness


class PrivateRedis:
    def __init__(self):
        self.port = harness.free_port()
        self.dir = tempfile.mkdtemp(prefix="redis-", dir=harness.log_dir())
        self.url = "redis://127.0.0.1:%d/0" % self.port

    def start(self):
        harness.lib_sh("kl_redis_start", self.dir, str(self.port))

    def stop(self):
        harness.lib_sh("kl_redis_stop", self.dir)

        def closed():
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return False
            except OSError:
                return True
        harness.wait_until(closed, 10, what="private Redis to stop")


@pytest.fixture(scope="module")
def st():
    redis = PrivateRedis()
    redis.start()
    try:
        # Gateway A relies on events (30 s TTL); gateway B (1 s TTL) shows
        # the TTL bound and stale-if-error.
        s = harness.product_stack_fixture({"KOWLOON_ENTITLEMENTS_TTL_MS": "30000"},
                                          redis_url=redis.url)
    except BaseException:
        redis.stop()
        raise
    s.redis = redis
    s.gateway_b = s.start_gateway({"KOWLOON_ENTITLEMENTS_TTL_MS": "1000",
                                   "KOWLOON_TENANT_CACHE_TTL_MS": "1000"},
                                  name="gateway-b")
    yield s
    try:
        s.stop()
    finally:
        redis.stop()


def test_redis_down_then_back(st):
    a, b = st.http_port, st.gateway_b.port
    t, key = st.tenant_with_key("rda", plan="pro")
    sub = t["subdomain"]
    for port in (a, b):
        assert st.api(sub, key, "GET", "/api/advanced-reports", port=port).status == 200
        assert st.api(sub, key, "GET", "/api/v1/tenant", port=port).status == 200

    st.redis.stop()
    # Requests keep succeeding, past B's TTL (B refreshes from the services).
    t_end = time.monotonic() + 2.5
    while time.monotonic() < t_end:
        for port in (a, b):
            r = st.api(sub, key, "GET", "/api/advanced-reports", port=port)
            assert r.status == 200, (port, r)
            assert st.api(sub, key, "GET", "/api/v1/tenant", port=port).status == 200
        time.sleep(0.1)

    # A change with no event channel: B (1 s TTL) sees it within its TTL.
    r = st.admin("PUT", "/admin/v1/tenants/%s/overrides/advanced_reports" % t["id"],
                 {"enabled": False})
    assert r.status == 200, r
    t0 = time.monotonic()
    harness.wait_until(lambda: st.api(sub, key, "GET", "/api/advanced-reports",
                                      port=b).status == 403, 5, what="TTL expiry on B")
    assert time.monotonic() - t0 < 2.5
    r = st.admin("DELETE", "/admin/v1/tenants/%s/overrides/advanced_reports" % t["id"])
    assert r.status == 200, r
    harness.wait_until(lambda: st.api(sub, key, "GET", "/api/advanced-reports",
                                      port=b).status == 200, 5, what="TTL expiry on B")

    # The flags service goes down too: the last entitlements keep serving,
    # on B well past their TTL.
    new, nkey = st.tenant_with_key("rdn", plan="pro")
    st.flags.kill()
    time.sleep(1.5)
    for _ in range(5):
        r = st.api(sub, key, "GET", "/api/advanced-reports", port=b)
        assert r.status == 200, r
    assert "serving the last known ones" in st.gateway_b.log()
    # A tenant never loaded: routes without a feature are served (no rate
    # limit can be known), feature routes are 503.
    r = st.api(new["subdomain"], nkey, "GET", "/api/v1/tenant", port=b)
    assert r.status == 200, r
    r = st.api(new["subdomain"], nkey, "GET", "/api/advanced-reports", port=b)
    assert r.status == 503, r
    assert r.json["error"]["code"] == "UNAVAILABLE", r
    r = st.api(new["subdomain"], nkey, "GET", "/api/v1/entitlements", port=b)
    assert r.status == 503, r
    st.flags = st.start_flags(name="flags-2")
    harness.wait_until(lambda: st.api(new["subdomain"], nkey, "GET", "/api/advanced-reports",
                                      port=b).status == 200, 10, what="flags back")

    # Redis back: the gateways resubscribe, and events flow again. Gateway A
    # (30 s TTL) sees a change within about 1 s only through an event.
    subscribed_before = st.gateway.log().count("event subscription (re)started")
    st.redis.start()
    harness.wait_until(lambda: st.gateway.log().count("event subscription (re)started")
                       > subscribed_before, 15, what="gateway A resubscribed")
    assert st.api(sub, key, "GET", "/api/advanced-reports", port=a).status == 200

    def off_on_a():
        # The publisher may need a first write to reconnect: repeat the write.
        st.admin("PUT", "/admin/v1/tenants/%s/overrides/advanced_reports" % t["id"],
                 {"enabled": False})
        return st.api(sub, key, "GET", "/api/advanced-reports", port=a).status == 403
    harness.wait_until(off_on_a, 10, interval=0.5, what="event after Redis came back")
    r = st.admin("DELETE", "/admin/v1/tenants/%s/overrides/advanced_reports" % t["id"])
    assert r.status == 200, r
    t0 = time.monotonic()
    harness.wait_until(lambda: st.api(sub, key, "GET", "/api/advanced-reports",
                                      port=a).status == 200, 5, interval=0.01,
                       what="event on A")
    assert time.monotonic() - t0 < 1.0
