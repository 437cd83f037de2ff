"""Host -> tenant resolution at the gateway: trusted proxy header, bad Host
headers, unknown/deleted/suspended tenants, and how fast a change is seen
(at once by event; within the TTL when events are lost)."""

import time

import pytest

import harness
from harness import unique

T = "/admin/v1/tenants"
# The module's main gateway caches for long, so only events can explain a
# change seen at once.
GATEWAY_ENV = {"KOWLOON_TENANT_CACHE_TTL_MS": "600000"}


def setup_tenant(stack, prefix, status="active"):
    t = stack.create_tenant(unique(prefix), status=status)
    t["key"] = stack.create_key(t["id"])["secret"]
    return t


def test_host_resolves_tenant(stack):
    t = setup_tenant(stack, "hst")
    for host in ("%s.localhost" % t["subdomain"],
                 "%s.localhost:%d" % (t["subdomain"], stack.http_port),
                 "%s.LOCALHOST." % t["subdomain"].upper()):
        r = stack.req("GET", "/api/v1/tenant", host=host,
                      headers=[("Authorization", "Bearer " + t["key"])])
        assert r.status == 200, (host, r)
        assert r.json["id"] == t["id"] and r.json["subdomain"] == t["subdomain"], r


def test_trusted_proxy_header(stack):
    a = setup_tenant(stack, "pxa")
    b = setup_tenant(stack, "pxb")
    hdr = ("X-Tenant-Subdomain", a["subdomain"])
    # From 127.0.0.1 (in KOWLOON_TRUSTED_PROXIES) the header names the tenant.
    r = stack.tenant_get(b["subdomain"], a["key"], headers=[hdr])
    assert r.status == 200, r
    assert r.json["id"] == a["id"], r
    # From 127.0.0.2 it is ignored: the Host decides.
    r = stack.tenant_get(b["subdomain"], b["key"], headers=[hdr], source="127.0.0.2")
    assert r.status == 200, r
    assert r.json["id"] == b["id"], r
    r = stack.tenant_get(b["subdomain"], a["key"], headers=[hdr], source="127.0.0.2")
    assert r.status == 401, r
    # The header may also be a full host; a malformed one from a trusted
    # peer is a 400, from an untrusted one it is ignored.
    r = stack.tenant_get(b["subdomain"], a["key"],
                         headers=[("X-Tenant-Subdomain", "%s.localhost" % a["subdomain"])])
    assert r.status == 200 and r.json["id"] == a["id"], r
    bad = ("X-Tenant-Subdomain", "bad host!")
    r = stack.tenant_get(b["subdomain"], b["key"], headers=[bad])
    assert r.status == 400, r
    r = stack.tenant_get(b["subdomain"], b["key"], headers=[bad], source="127.0.0.2")
    assert r.status == 200 and r.json["id"] == b["id"], r


def test_missing_duplicate_malformed_host(stack):
    t = setup_tenant(stack, "bad")
    port = stack.http_port
    auth = "Authorization: Bearer %s\r\n" % t["key"]
    r = harness.raw(port, ("GET /api/v1/tenant HTTP/1.1\r\n%sConnection: close\r\n\r\n"
                           % auth).encode())
    assert r.status == 400, ("no Host", r)
    assert "missing Host header" in r.text, r
    r = harness.raw(port, ("GET /api/v1/tenant HTTP/1.1\r\nHost: %s.localhost\r\n"
                           "Host: %s.localhost\r\n%sConnection: close\r\n\r\n"
                           % (t["subdomain"], t["subdomain"], auth)).encode())
    assert r.status == 400, ("two Host headers", r)
    assert "more than one Host header" in r.text, r
    for host in ("%s.localhost:99999" % t["subdomain"], "%s.localhost:x" % t["subdomain"],
                 "bad host.localhost", "a..localhost", "%s.localhost:" % t["subdomain"]):
        r = stack.req("GET", "/api/v1/tenant", host=host,
                      headers=[("Authorization", "Bearer " + t["key"])])
        assert r.status == 400, (host, r)
        assert r.json["error"]["code"] == "INVALID_ARGUMENT", r


def test_unknown_and_deleted_same_404(stack):
    t = setup_tenant(stack, "gon")
    r_unknown = stack.tenant_get(unique("nobody"), t["key"])
    assert r_unknown.status == 404, r_unknown
    r = stack.admin("DELETE", "%s/%s" % (T, t["id"]))
    assert r.status == 200, r
    r_deleted = stack.tenant_get(t["subdomain"], t["key"])
    assert r_deleted.status == 404, r_deleted
    assert r_unknown.json == {"error": {"code": "NOT_FOUND", "message": "tenant not found"}}, \
        r_unknown
    assert r_deleted.body == r_unknown.body, (r_deleted, r_unknown)  # byte for byte
    # A host under another domain is no tenant either.
    r = stack.req("GET", "/api/v1/tenant", host="%s.example.com" % t["subdomain"],
                  headers=[("Authorization", "Bearer " + t["key"])])
    assert r.status == 404, r


def test_suspended_402_resumed_200(stack):
    t = setup_tenant(stack, "pay")
    assert stack.tenant_get(t["subdomain"], t["key"]).status == 200
    r = stack.admin("POST", "%s/%s:suspend" % (T, t["id"]))
    assert r.status == 200, r
    # The change event reaches the gateway a moment after the admin answer.
    poll_status(stack, t, stack.http_port, 402, timeout=1.0)
    r = stack.tenant_get(t["subdomain"], t["key"])
    assert r.status == 402, r
    assert r.json["error"]["code"] == "FAILED_PRECONDITION", r
    assert "suspended" in r.json["error"]["message"], r
    # Without a key the answer is the same 402: status is checked first.
    assert stack.tenant_get(t["subdomain"], None).status == 402
    r = stack.admin("POST", "%s/%s:resume" % (T, t["id"]))
    assert r.status == 200, r
    poll_status(stack, t, stack.http_port, 200, timeout=1.0)


def poll_status(stack, t, port, want, timeout):
    """Seconds until GET /api/v1/tenant on the gateway at port answers want."""
    t0 = time.monotonic()
    while True:
        r = stack.tenant_get(t["subdomain"], t["key"], port=port)
        if r.status == want:
            return time.monotonic() - t0
        assert time.monotonic() - t0 < timeout, \
            "still %s after %.1fs, wanted %s" % (r.status, timeout, want)
        time.sleep(0.05)


def test_change_seen_at_once_by_event(stack):
    """A second gateway with a 10-minute TTL sees a suspension made through
    the first one within moments: only the event can tell it."""
    other = stack.start_gateway(name="gateway-events",
                                extra={"KOWLOON_TENANT_CACHE_TTL_MS": "600000"})
    try:
        t = setup_tenant(stack, "evt")
        assert stack.tenant_get(t["subdomain"], t["key"], port=other.port).status == 200
        r = stack.admin("POST", "%s/%s:suspend" % (T, t["id"]))
        assert r.status == 200, r
        took = poll_status(stack, t, other.port, 402, timeout=3.0)
        assert took < 3.0
        r = stack.admin("POST", "%s/%s:resume" % (T, t["id"]))
        assert r.status == 200, r
        poll_status(stack, t, other.port, 200, timeout=3.0)
    finally:
        problems = stack.stop_proc(other)
        stack.procs.remove(other)
        assert not problems, problems


@pytest.mark.parametrize("how", ["other-channel", "redis-down"])
def test_lost_events_bounded_by_ttl(stack, how):
    """A gateway that hears no events keeps its cached tenant until
    KOWLOON_TENANT_CACHE_TTL_MS, then sees the change. Events are lost either
    on another channel, or because its Redis is down (nobody listens on the
    port): the gateway must still start and serve."""
    ttl_ms = 2500
    extra = {"KOWLOON_TENANT_CACHE_TTL_MS": str(ttl_ms)}
    if how == "other-channel":
        extra["KOWLOON_EVENTS_CHANNEL"] = "kltest:nobody:listens"
    else:
        extra["KOWLOON_REDIS_URL"] = "redis://127.0.0.1:%d/0" % harness.free_port()
    deaf = stack.start_gateway(name="gateway-deaf-" + how, extra=extra)
    try:
        t = setup_tenant(stack, "ttl")
        warmed = time.monotonic()
        assert stack.tenant_get(t["subdomain"], t["key"], port=deaf.port).status == 200
        r = stack.admin("POST", "%s/%s:suspend" % (T, t["id"]))
        assert r.status == 200, r
        r = stack.tenant_get(t["subdomain"], t["key"], port=deaf.port)
        if time.monotonic() - warmed < ttl_ms / 1000.0 * 0.6:
            assert r.status == 200, ("the deaf gateway should still use its cache", r)
        poll_status(stack, t, deaf.port, 402, timeout=ttl_ms / 1000.0 + 2.0)
        assert time.monotonic() - warmed < ttl_ms / 1000.0 + 2.0
    finally:
        problems = stack.stop_proc(deaf)
        stack.procs.remove(deaf)
        assert not problems, problems


def test_new_tenant_served_at_once(stack):
    """An unknown subdomain is cached negatively (up to 2 s); creating the
    tenant drops that entry through the event, so it is served at once."""
    sub = unique("neo")
    assert stack.tenant_get(sub, None).status == 404
    t = stack.create_tenant(sub, status="active")
    key = stack.create_key(t["id"])["secret"]
    t0 = time.monotonic()
    while stack.tenant_get(sub, key).status != 200:
        assert time.monotonic() - t0 < 1.0, "new tenant still 404 after 1 s"
        time.sleep(0.02)
