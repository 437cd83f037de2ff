"""Faults: the tenant service dying and coming back, calls past their
deadline, garbage on the service's ZeroMQ port and the gateway's HTTP port;
and the health, readiness and metrics endpoints."""

import os
import socket
import time

import harness
from harness import (TENANT_SERVICE, pb_field_bytes, pb_request, pb_response, pb_strings,
                     rpc_call, unique)

T = "/admin/v1/tenants"
RPC_TIMEOUT_MS = 1500
MAX_MSG = 65536
GATEWAY_ENV = {"KOWLOON_RPC_TIMEOUT_MS": str(RPC_TIMEOUT_MS)}
TENANT_ENV = {"KOWLOON_RPC_MAX_MESSAGE_BYTES": str(MAX_MSG)}


def create_req(sub, name="Late", **kw):
    return pb_request(TENANT_SERVICE, "Create",
                      pb_field_bytes(1, sub) + pb_field_bytes(2, name), **kw)


def get_by_sub(stack, sub):
    reply = rpc_call(stack.tenant_endpoint,
                     pb_request(TENANT_SERVICE, "GetBySubdomain", pb_field_bytes(1, sub),
                                correlation_id=99))
    assert reply and len(reply) == 1, reply
    return pb_response(reply[0])


def test_health_ready_metrics(stack):
    r = stack.req("GET", "/healthz")
    assert r.status == 200 and r.json == {"status": "ok"}, r
    r = stack.req("GET", "/readyz")
    assert r.status == 200 and r.json == {"status": "ready"}, r
    # On any host, even a malformed one or none.
    assert stack.req("GET", "/healthz", host="whoever.example.com").status == 200
    assert harness.raw(stack.http_port, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n"
                       ).status == 200
    # A call or two so the request series have samples.
    stack.admin("GET", T)
    stack.req("GET", "/api/v1/tenant", host="%s.localhost" % unique("nob"))
    r = stack.req("GET", "/metrics")
    assert r.status == 200, r
    assert r.header("Content-Type").startswith("text/plain"), r.headers
    text = r.text
    assert "# TYPE " in text, text[:2000]
    for series in METRIC_SERIES:
        assert series in text, (series, text[:3000])


# The series docs/api.md ("Health and metrics") documents for /metrics.
METRIC_SERIES = [
    "kowloon_http_requests_total",
    "kowloon_http_request_duration_seconds_bucket",
    "kowloon_http_request_duration_seconds_count",
    "kowloon_rpc_calls_total",
    "kowloon_rpc_failures_total",
    "kowloon_rpc_retries_total",
    "kowloon_rpc_timeouts_total",
    "kowloon_tenant_cache_hits_total",
    "kowloon_tenant_cache_misses_total",
    "kowloon_tenant_cache_evictions_total",
    "kowloon_tenant_cache_invalidations_total",
    "kowloon_tenant_cache_entries",
]


def test_direct_rpc_encoder_works(stack):
    """Control for the deadline test: the same hand-made Create with a live
    deadline creates the tenant, so the encoder is right."""
    sub = unique("ok")
    reply = rpc_call(stack.tenant_endpoint, create_req(sub, correlation_id=1234))
    assert reply and len(reply) == 1, reply
    corr, code, msg, payload = pb_response(reply[0])
    assert corr == 1234 and code == "OK", (corr, code, msg)
    assert pb_strings(payload)[2] == sub
    assert get_by_sub(stack, sub)[1] == "OK"


def test_deadline_in_the_past_not_executed(stack):
    sub = unique("late")
    past = int(time.time() * 1000) - 60000
    reply = rpc_call(stack.tenant_endpoint, create_req(sub, correlation_id=555,
                                                       deadline_unix_ms=past))
    assert reply and len(reply) == 1, reply
    corr, code, msg, payload = pb_response(reply[0])
    assert corr == 555, corr
    assert code == "DEADLINE_EXCEEDED", (code, msg)
    assert payload == b""
    time.sleep(0.2)
    assert get_by_sub(stack, sub)[1] == "NOT_FOUND"
    r = stack.req("GET", "/api/v1/tenant", host="%s.localhost" % sub)
    assert r.status == 404, r


def test_garbage_on_service_port(stack):
    port = stack.tenant_port
    # Random bytes over raw TCP (not even a ZMTP greeting).
    for n in (1, 64, 4096):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            s.sendall(os.urandom(n))
            time.sleep(0.05)
        except OSError:
            pass
        s.close()
    # A ZMTP 3.0 greeting followed by junk.
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(b"\xff" + b"\x00" * 8 + b"\x7f\x03\x00NULL" + b"\x00" * 16
                  + b"\x00" * 32 + os.urandom(512))
        time.sleep(0.05)
    except OSError:
        pass
    s.close()

    # An oversized frame: refused unparsed, no answer.
    big = pb_request(TENANT_SERVICE, "GetBySubdomain",
                     pb_field_bytes(1, "x" * (MAX_MSG * 2)), correlation_id=3)
    assert rpc_call(stack.tenant_endpoint, big, timeout_ms=1000) is None
    # A payload just over the cap, within the envelope allowance: refused
    # with RESOURCE_EXHAUSTED, unparsed.
    over = pb_request(TENANT_SERVICE, "GetBySubdomain",
                      pb_field_bytes(1, "x" * (MAX_MSG + 100)), correlation_id=4)
    reply = rpc_call(stack.tenant_endpoint, over, timeout_ms=2000)
    assert reply and pb_response(reply[0])[:2] == (4, "RESOURCE_EXHAUSTED"), reply

    # Garbage envelopes: dropped or answered with an error, never OK.
    for junk in (os.urandom(200), b"\x0a\xff\xff\xff\xff\x0f", b"\x08" * 50):
        reply = rpc_call(stack.tenant_endpoint, junk, timeout_ms=1000)
        if reply is not None:
            assert len(reply) == 1, reply
            assert pb_response(reply[0])[1] != "OK", reply

    # Two frames: dropped.
    import zmq
    ctx = zmq.Context.instance()
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.connect(stack.tenant_endpoint)
    d.send_multipart([create_req(unique("two")), b"second"])
    assert not d.poll(1000, zmq.POLLIN)
    d.close()

    # Wrong version, unknown service and method, malformed payload.
    cases = [
        (pb_request(TENANT_SERVICE, "GetBySubdomain", pb_field_bytes(1, "abc"), version=99),
         {"FAILED_PRECONDITION"}),
        # Malformed envelope whose correlation id can be read: answered.
        (b"\x10\x2a\x1a\xff\xff", {"INVALID_ARGUMENT"}),
        (pb_request("kowloon.nope.Nope", "Get", b""), {"UNIMPLEMENTED", "NOT_FOUND"}),
        (pb_request(TENANT_SERVICE, "Nope", b""), {"UNIMPLEMENTED", "NOT_FOUND"}),
        (pb_request(TENANT_SERVICE, "GetBySubdomain", b"\x0a\xff\xff\xff"),
         {"INVALID_ARGUMENT"}),
    ]
    for req, want in cases:
        reply = rpc_call(stack.tenant_endpoint, req, timeout_ms=1500)
        if want is None:
            if reply is not None:
                assert pb_response(reply[0])[1] != "OK", reply
            continue
        assert reply and len(reply) == 1, (req, reply)
        assert pb_response(reply[0])[1] in want, (pb_response(reply[0]), want)

    # Still alive and serving, directly and through the gateway.
    assert stack.tenant.alive(), stack.tenant.tail()
    assert harness.health_check(stack.tenant_endpoint) == "SERVING"
    t = stack.create_tenant(unique("aft"))
    key = stack.create_key(t["id"])["secret"]
    assert stack.tenant_get(t["subdomain"], key).status == 200


def test_garbage_on_gateway_port(stack):
    port = stack.http_port
    for data in (os.urandom(2048), b"GET / HTTP/9.9\r\n\r\n",
                 b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n",
                 b"POST /admin/v1/tenants HTTP/1.1\r\nHost: localhost\r\n"
                 b"Content-Length: -5\r\n\r\n",
                 b"\r\n\r\n\r\n"):
        try:
            harness.raw(port, data, timeout=5)
        except OSError:
            pass
    assert stack.gateway.alive(), stack.gateway.tail()
    assert stack.req("GET", "/healthz").status == 200
    assert stack.admin("GET", T).status == 200


def test_tenant_service_down_then_back(stack):
    t = stack.create_tenant(unique("down"), status="active")
    key = stack.create_key(t["id"])["secret"]
    assert stack.tenant_get(t["subdomain"], key).status == 200

    stack.tenant.kill()
    limit = RPC_TIMEOUT_MS / 1000.0 + 1.0
    # A cache miss needs the tenant service: 503 within the deadline.
    r = stack.tenant_get(unique("miss"), key, timeout=RPC_TIMEOUT_MS / 1000.0 + 10)
    assert r.status == 503, r
    assert r.elapsed < limit, "503 took %.2fs (limit %.2fs)" % (r.elapsed, limit)
    # The admin API needs it too.
    r = stack.admin("GET", T, timeout=RPC_TIMEOUT_MS / 1000.0 + 10)
    assert r.status == 503, r
    assert r.elapsed < limit, r.elapsed
    # Not ready while the service is down; still alive.
    harness.wait_until(lambda: stack.req("GET", "/readyz").status == 503,
                       RPC_TIMEOUT_MS / 1000.0 + 5, what="/readyz 503")
    assert stack.req("GET", "/healthz").status == 200

    # Back on the same endpoint: served again.
    stack.tenant = stack.start_tenant(name="tenant-restarted")
    harness.wait_until(lambda: stack.req("GET", "/readyz").status == 200, 15,
                       what="/readyz 200 after restart")
    r = stack.tenant_get(t["subdomain"], key)
    assert r.status == 200, r
    # /readyz asks through its own Health client, whose socket may reconnect
    # a moment before the tenant client's (ZeroMQ retries every 100 ms): a
    # cache miss is served within a few reconnect intervals.
    harness.wait_until(lambda: stack.tenant_get(unique("miss"), key).status == 404, 3,
                       what="a cache miss answered 404 after the restart")
    assert stack.admin("GET", T).status == 200


def test_tenant_service_hung_answers_within_deadline(stack):
    """A tenant service that is alive but stuck (SIGSTOP) keeps its
    connection up: the gateway must give up at KOWLOON_RPC_TIMEOUT_MS, not
    hang."""
    import signal
    t = stack.create_tenant(unique("hung"), status="active")
    key = stack.create_key(t["id"])["secret"]
    stack.warm(t["subdomain"], key)
    os.kill(stack.tenant.popen.pid, signal.SIGSTOP)
    try:
        limit = RPC_TIMEOUT_MS / 1000.0 + 1.0
        r = stack.tenant_get(unique("miss"), key, timeout=RPC_TIMEOUT_MS / 1000.0 + 10)
        assert r.status in (503, 504), r
        assert r.elapsed < limit, "answered after %.2fs (limit %.2fs)" % (r.elapsed, limit)
        assert r.elapsed >= RPC_TIMEOUT_MS / 1000.0 * 0.5, \
            "answered in %.2fs: was the call really waiting?" % r.elapsed
        # The cached tenant is still served from the cache meanwhile.
        assert stack.tenant_get(t["subdomain"], key).status == 200
    finally:
        os.kill(stack.tenant.popen.pid, signal.SIGCONT)
    harness.wait_until(lambda: stack.tenant_get(unique("miss"), key).status == 404, 5,
                       what="served again after SIGCONT")


def test_metrics_exposition_valid(stack):
    """Every sample line of /metrics is unique (name + label set): Prometheus
    refuses a scrape with duplicate samples. Routes that share a pattern
    (GET and POST /admin/v1/tenants) must differ in a label."""
    stack.admin("GET", T)
    stack.admin("POST", T, {"subdomain": unique("met"), "name": "Metrics"})
    text = stack.req("GET", "/metrics").text
    seen, dups = set(), []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series = line.rsplit(" ", 1)[0]
        if series in seen:
            dups.append(series)
        seen.add(series)
    assert not dups, "duplicate series in /metrics: %s" % dups[:5]
