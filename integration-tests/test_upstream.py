"""HTTP upstream routes from KOWLOON_ROUTES_FILE, through the real gateway
(with kowloon-tenant and kowloon-flags) to a Python http.server
upstream: tenant, key and feature checks in front; X-Tenant-* and the
request id set by the gateway, spoofed ones and the API key dropped; 5 MB
bodies both ways; upstream connections kept alive; 502 and 504; a bad
route file refuses the start with its line number."""

import hashlib
import http.server
import os
import socketserver
import subprocess
import tempfile
import threading
import time

import pytest

import harness

BIG = 5 * 1024 * 1024


def pattern(n):
    block = bytes((i * 7 + 3) & 0xFF for i in range(4096))
    return (block * (n // len(block) + 1))[:n]


class Upstream:
    """A threading HTTP/1.1 server on 127.0.0.1:0 that records requests."""

    def __init__(self):
        self.requests = []
        self.connections = 0
        self.lock = threading.Lock()
        up = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                with up.lock:
                    up.connections += 1
                super().setup()

            def log_message(self, *args):
                pass

            def _serve(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                rec = {"method": self.command, "path": self.path,
                       "headers": list(self.headers.items()),
                       "body_len": len(body),
                       "body_sha": hashlib.sha256(body).hexdigest()}
                with up.lock:
                    up.requests.append(rec)
                if "/hang" in self.path:
                    time.sleep(3)
                    return self._send(200, b"late")
                if self.path.startswith("/app/big"):
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.send_header("X-Upstream", "big")
                    self.end_headers()
                    data = pattern(BIG)
                    for i in range(0, BIG, 65536):
                        chunk = data[i:i + 65536]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.write(b"0\r\n\r\n")
                    return None
                import json
                out = json.dumps({"method": rec["method"], "path": rec["path"],
                                  "body_len": rec["body_len"],
                                  "body_sha": rec["body_sha"]}).encode()
                return self._send(200, out, [("Content-Type", "application/json"),
                                             ("X-Request-Id", "upstream-made"),
                                             ("Connection", "keep-alive, X-Hop"),
                                             ("X-Hop", "1"),
                                             ("X-Upstream", "yes")])

            def _send(self, status, body, headers=()):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # the gateway hanging up on /hang is expected

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def last(self):
        with self.lock:
            return self.requests[-1] if self.requests else None

    def count(self):
        with self.lock:
            return len(self.requests)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


ROUTES = """\
# test routes (docs/routes.md)
GET   /app/{{rest...}}      http://127.0.0.1:{up}           auth=apikey timeout=5000
POST  /app/{{rest...}}      http://127.0.0.1:{up}           auth=apikey
GET   /reports/{{rest...}}  http://127.0.0.1:{up}/app       auth=apikey feature=advanced_reports
GET   /down                 http://127.0.0.1:{closed}       auth=apikey
GET   /slow                 http://127.0.0.1:{up}/app/hang  auth=apikey timeout=300
GET   /public/{{rest...}}   http://127.0.0.1:{up}           auth=none
"""


@pytest.fixture(scope="module")
def env():
    up = Upstream()
    tmp = tempfile.mkdtemp(prefix="kltest-routes-")
    path = os.path.join(tmp, "routes.conf")
    with open(path, "w") as f:
        f.write(ROUTES.format(up=up.port, closed=harness.free_port()))
    # Tenant and flags (entitlements for feature=) and the gateway; these
    # routes need no workspace service.
    st = harness.ProductStack(gateway_env={"KOWLOON_ROUTES_FILE": path})
    try:
        st.tenant = st.start_tenant()
        st.flags = st.start_flags()
        st.gateway = st.start_gateway()
        st.http_port = st.gateway.port
        yield st, up
    finally:
        st.stop()
        up.stop()
        os.unlink(path)
        os.rmdir(tmp)


def hdr(rec, name):
    return [v for k, v in rec["headers"] if k.lower() == name.lower()]


def test_headers_set_and_spoofs_dropped(env):
    st, up = env
    t, key = st.tenant_with_key("upa", plan="pro")
    # From 127.0.0.2, not a trusted proxy: its X-Tenant-Subdomain neither
    # selects the tenant nor reaches the upstream.
    r = st.api(t["subdomain"], key, "GET", "/app/hello/world?x=1&y=%2F",
               headers=[("X-Tenant-Id", "evil"), ("x-tenant-plan", "enterprise"),
                        ("X-Tenant-Subdomain", "other"), ("X-Tenant-Admin", "yes"),
                        ("X-Request-Id", "it-upstream-1"), ("X-Custom", "kept")],
               source="127.0.0.2")
    assert r.status == 200, r
    assert r.json["path"] == "/app/hello/world?x=1&y=%2F", r
    rec = up.last()
    assert hdr(rec, "X-Tenant-Id") == [t["id"]], rec
    assert hdr(rec, "X-Tenant-Subdomain") == [t["subdomain"]], rec
    assert hdr(rec, "X-Tenant-Plan") == ["pro"], rec
    assert sorted(k.lower() for k, _ in rec["headers"] if k.lower().startswith("x-tenant-")) == \
        ["x-tenant-id", "x-tenant-plan", "x-tenant-subdomain"], rec
    assert hdr(rec, "X-Request-Id") == ["it-upstream-1"], rec
    assert hdr(rec, "Authorization") == [], rec
    assert hdr(rec, "X-Custom") == ["kept"], rec
    assert hdr(rec, "X-Forwarded-For") == ["127.0.0.2"], rec
    # The answer: the upstream's headers minus hop-by-hop, our request id.
    assert r.header("X-Upstream") == "yes", r.headers
    assert r.header_all("X-Request-Id") == ["it-upstream-1"], r.headers
    assert r.header("X-Hop") is None, r.headers


def test_checks_in_front(env):
    st, up = env
    t, key = st.tenant_with_key("upb", plan="starter")
    sub = t["subdomain"]
    before = up.count()
    r = st.api(sub, None, "GET", "/app/x")
    assert r.status == 401, r
    r = st.api(sub, "kl_nosuchkey_" + "x" * 40, "GET", "/app/x")
    assert r.status == 401, r
    r = st.api(harness.unique("nosuch"), key, "GET", "/app/x")
    assert r.status == 404, r
    # The plan lacks advanced_reports: 403 at the edge.
    r = st.api(sub, key, "GET", "/reports/monthly")
    assert r.status == 403, r
    assert r.json["error"]["code"] == "PERMISSION_DENIED", r
    assert r.json["error"]["feature"] == "advanced_reports", r
    assert up.count() == before, "a refused request reached the upstream"
    # auth=none still resolves the tenant.
    r = st.api(sub, None, "GET", "/public/page")
    assert r.status == 200, r
    assert hdr(up.last(), "X-Tenant-Id") == [t["id"]]
    # A plan with the feature passes, prefix added before the path.
    p, pkey = st.tenant_with_key("upc", plan="pro")
    r = st.api(p["subdomain"], pkey, "GET", "/reports/monthly")
    assert r.status == 200, r
    assert r.json["path"] == "/app/reports/monthly", r


def test_big_bodies_both_ways(env):
    st, up = env
    t, key = st.tenant_with_key("upd", plan="pro")
    body = pattern(BIG)
    r = st.api(t["subdomain"], key, "POST", "/app/upload", body=body,
               headers=[("Content-Type", "application/octet-stream")], timeout=60)
    assert r.status == 200, r
    assert r.json["body_len"] == BIG, r
    assert r.json["body_sha"] == hashlib.sha256(body).hexdigest(), r
    r = st.api(t["subdomain"], key, "GET", "/app/big", timeout=60)
    assert r.status == 200, r
    assert r.header("X-Upstream") == "big", r.headers
    assert r.header("Transfer-Encoding") == "chunked", r.headers
    assert len(r.body) == BIG and r.body == body


def test_upstream_connections_kept_alive(env):
    st, up = env
    t, key = st.tenant_with_key("upe", plan="pro")
    st.api(t["subdomain"], key, "GET", "/app/warm")
    before = up.connections
    for i in range(20):
        r = st.api(t["subdomain"], key, "GET", "/app/ka/%d" % i)
        assert r.status == 200, r
    # Every client request here is a new client connection, possibly on
    # another worker thread; the upstream connection is reused from the
    # gateway's pool. (A request may occasionally beat the previous one's
    # return to the pool and open one more.)
    assert up.connections - before <= 2, up.connections - before


def test_unreachable_is_502(env):
    st, up = env
    t, key = st.tenant_with_key("upf", plan="pro")
    r = st.api(t["subdomain"], key, "GET", "/down")
    assert r.status == 502, r
    assert r.json == {"error": {"code": "UNAVAILABLE",
                                "message": "upstream unreachable"}}, r


def test_slow_is_504_at_the_route_timeout(env):
    st, up = env
    t, key = st.tenant_with_key("upg", plan="pro")
    t0 = time.monotonic()
    r = st.api(t["subdomain"], key, "GET", "/slow")
    took = time.monotonic() - t0
    assert r.status == 504, r
    assert r.json == {"error": {"code": "DEADLINE_EXCEEDED",
                                "message": "upstream timed out"}}, r
    assert 0.3 <= took < 2.5, took


def test_bad_route_file_refuses_start(tmp_path):
    path = tmp_path / "routes.conf"
    path.write_text("GET /app/{rest...} http://127.0.0.1:3000 auth=apikey\n"
                    "GET /x http://127.0.0.1:3000 auth=apikey timout=5\n")
    e = harness.base_env()
    e.update({"KOWLOON_REDIS_URL": harness.env("KLTEST_REDIS_URL"),
              "KOWLOON_ADMIN_TOKEN": harness.ADMIN_TOKEN,
              "KOWLOON_TENANT_ENDPOINTS": "tcp://127.0.0.1:%d" % harness.free_port(),
              "KOWLOON_HTTP_LISTEN": "127.0.0.1:%d" % harness.free_port(),
              "KOWLOON_BASE_DOMAIN": "localhost",
              "KOWLOON_ROUTES_FILE": str(path)})
    r = subprocess.run([harness.binary("gateway")], env=e, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=30)
    out = (r.stdout + r.stderr).decode("utf-8", "replace")
    assert r.returncode != 0, out
    assert 'KOWLOON_ROUTES_FILE: %s:2: unknown option \\"timout\\"' % path in out, out
