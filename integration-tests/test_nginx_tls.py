"""Debian's real nginx with the shipped deploy/nginx/ configuration and a
self-signed wildcard certificate, driven over HTTPS with curl --resolve.

Part 1, nginx alone in front of small Python upstreams that echo what they
receive: which headers nginx overwrites (a client's X-Tenant-Subdomain,
X-Forwarded-For and X-Forwarded-Host never pass), HTTP -> HTTPS, hosts
outside the domain refused, the WebSocket upgrade tunnel, the body limit,
and the scaling upstream spreading over several gateways and skipping a dead
one.

Part 2, nginx in front of the real gateway (harness.Stack, base domain
yoursaas.com, nginx on 127.0.0.1 = a trusted proxy): tenants resolved by
subdomain through the X-Tenant-Subdomain header nginx sets, and a client's
own X-Tenant-Subdomain cannot pick another tenant.
"""

import http.server
import json
import os
import shutil
import tempfile
import socket
import ssl
import sys
import threading

import pytest

import harness

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "deploy", "checks"))
import nginx_runner  # noqa: E402

DOMAIN = "yoursaas.com"


# ------------------------------------------------------------ echo upstreams

class _Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def setup(self):
        super().setup()
        self.server.conns.add(self.connection)

    def _reply(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            # Echo raw bytes until the peer closes: the tunnel.
            self.connection.settimeout(10)
            try:
                while True:
                    data = self.connection.recv(4096)
                    if not data:
                        break
                    self.connection.sendall(data)
            except OSError:
                pass
            self.close_connection = True
            return
        out = json.dumps({"name": self.server.name, "method": self.command, "path": self.path,
                          "headers": [[k, v] for k, v in self.headers.items()],
                          "body_len": len(body)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = _reply


class EchoServer:
    def __init__(self, name):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
        self.server.daemon_threads = True
        self.server.name = name
        self.server.conns = set()
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        """Down for real: no listener and no open (keep-alive) connection."""
        self.server.shutdown()
        self.server.server_close()
        for c in list(self.server.conns):
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass


def got(body):
    """(upstream name, {header lowercase: [values]}) from an echo reply."""
    j = json.loads(body)
    hdrs = {}
    for k, v in j["headers"]:
        hdrs.setdefault(k.lower(), []).append(v)
    return j, hdrs


def scratch(name):
    """A private folder (not pytest's tmp_path: its numbered folders race
    when several pytest processes run at once)."""
    return tempfile.mkdtemp(prefix="kowloon-%s-" % name)


@pytest.fixture(scope="module")
def echo_nginx():
    echo = EchoServer("echo-1")
    d = scratch("nginx-echo")
    ng = nginx_runner.Nginx([echo.port], workdir=d)
    try:
        ng.start()
        yield ng, echo
    finally:
        ng.stop()
        echo.stop()
        shutil.rmtree(d, ignore_errors=True)


def test_headers_set_by_nginx_win(echo_nginx):
    ng, _ = echo_nginx
    status, _, body = ng.curl("acme.%s" % DOMAIN, "/api/v1/tenant?x=1", headers=[
        "X-Tenant-Subdomain: globex", "X-Tenant-Subdomain: globex.%s" % DOMAIN,
        "X-Forwarded-For: 203.0.113.9", "X-Forwarded-Host: globex.%s" % DOMAIN,
        "X-Real-IP: 203.0.113.9", "X-Forwarded-Proto: http"])
    assert status == 200, ng.logs()
    j, h = got(body)
    assert j["path"] == "/api/v1/tenant?x=1"
    # Exactly one value each, the one nginx set.
    assert h["x-tenant-subdomain"] == ["acme.%s" % DOMAIN], h
    assert h["host"] == ["acme.%s" % DOMAIN], h
    assert h["x-forwarded-host"] == ["acme.%s" % DOMAIN], h
    assert h["x-forwarded-for"] == ["127.0.0.1"], h
    assert h["x-real-ip"] == ["127.0.0.1"], h
    assert h["x-forwarded-proto"] == ["https"], h
    # No upgrade asked: no Upgrade header, and an empty Connection (keep-alive
    # to the upstream) rather than "upgrade".
    assert "upgrade" not in h, h
    assert h.get("connection", [""]) in ([""], ["keep-alive"]) or "connection" not in h, h


def test_host_is_lowercased_and_port_stripped(echo_nginx):
    ng, _ = echo_nginx
    status, _, body = ng.curl("ACME.%s" % DOMAIN.upper(), "/")
    assert status == 200
    _, h = got(body)
    assert h["x-tenant-subdomain"] == ["acme.%s" % DOMAIN], h
    assert h["host"] == ["acme.%s" % DOMAIN], h


def test_apex_is_served(echo_nginx):
    ng, _ = echo_nginx
    status, _, body = ng.curl(DOMAIN, "/admin/v1/tenants")
    assert status == 200
    _, h = got(body)
    assert h["x-tenant-subdomain"] == [DOMAIN], h


def test_http_redirects_to_https(echo_nginx):
    ng, _ = echo_nginx
    status, h, _ = ng.curl("acme.%s" % DOMAIN, "/api/v1/tenant?a=b", scheme="http")
    assert status == 301, h
    assert h["location"] == ["https://acme.%s/api/v1/tenant?a=b" % DOMAIN], h


def test_other_hosts_never_reach_the_upstream(echo_nginx):
    ng, _ = echo_nginx
    # TLS for a name outside the domain: the handshake is refused.
    status, h, _ = ng.curl("acme.evil.example", "/", extra=["-k"])
    assert status == 0 and "curl-error" in h, h
    # Plain HTTP for a name outside the domain: closed without an answer.
    status, h, _ = ng.curl("acme.evil.example", "/", scheme="http")
    assert status == 0, h
    # Our TLS name but a Host outside the domain: 421 from the default
    # server, never forwarded.
    status, _, body = ng.curl("acme.%s" % DOMAIN, "/", headers=["Host: evil.example"])
    assert status == 421, (status, body)


def test_body_limit(echo_nginx):
    ng, _ = echo_nginx
    status, _, _ = ng.curl("acme.%s" % DOMAIN, "/upload", method="POST",
                           data=b"x" * (1024 * 1024 + 1),
                           headers=["Content-Type: application/octet-stream"])
    assert status == 413
    status, _, body = ng.curl("acme.%s" % DOMAIN, "/upload", method="POST",
                              data=b"x" * 1000, headers=["Content-Type: text/plain"])
    assert status == 200 and got(body)[0]["body_len"] == 1000


def test_websocket_upgrade_tunnel(echo_nginx):
    ng, _ = echo_nginx
    ctx = ssl.create_default_context(cafile=ng.cert)
    raw = socket.create_connection(("127.0.0.1", ng.https_port), timeout=10)
    s = ctx.wrap_socket(raw, server_hostname="acme.%s" % DOMAIN)
    try:
        s.sendall(("GET /ws HTTP/1.1\r\nHost: acme.%s\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n" % DOMAIN).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        assert b"upgrade: websocket" in head.lower(), head
        s.sendall(b"ping through the tunnel")
        echoed = b""
        while len(echoed) < len(b"ping through the tunnel"):
            chunk = s.recv(4096)
            assert chunk, echoed
            echoed += chunk
        assert echoed == b"ping through the tunnel"
    finally:
        s.close()


def test_scaling_upstream_spreads_and_skips_a_dead_gateway():
    a, b = EchoServer("gw-a"), EchoServer("gw-b")
    d = scratch("nginx-scaling")
    ng = nginx_runner.Nginx([a.port, b.port], upstream_file="upstream-scaling.conf",
                            workdir=d)
    try:
        ng.start()
        seen = set()
        for _ in range(8):
            status, _, body = ng.curl("acme.%s" % DOMAIN, "/")
            assert status == 200, ng.logs()
            seen.add(got(body)[0]["name"])
        assert seen == {"gw-a", "gw-b"}, seen
        b.stop()  # one gateway down (an upgrade restarting it, a crash)
        for _ in range(6):
            status, _, body = ng.curl("acme.%s" % DOMAIN, "/")
            assert status == 200, ng.logs()
            assert got(body)[0]["name"] == "gw-a"
    finally:
        ng.stop()
        a.stop()
        try:
            b.stop()
        except OSError:
            pass
        shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------ in front of the gateway

@pytest.fixture(scope="module")
def gw_nginx():
    st = harness.Stack(gateway_env={"KOWLOON_BASE_DOMAIN": DOMAIN,
                                    "KOWLOON_PUBLIC_SCHEME": "https",
                                    "KOWLOON_TRUSTED_PROXIES": "127.0.0.1/32"})
    ng = None
    d = scratch("nginx-gw")
    try:
        st.start()
        ng = nginx_runner.Nginx([st.gateway.port], workdir=d)
        ng.start()
        yield st, ng
    finally:
        if ng:
            ng.stop()
        shutil.rmtree(d, ignore_errors=True)
        st.stop()


def admin(ng, method, path, body=None):
    status, _, out = ng.curl(DOMAIN, path, method=method,
                             headers=["Authorization: Bearer " + harness.ADMIN_TOKEN,
                                      "Content-Type: application/json"],
                             data=json.dumps(body) if body is not None else None)
    return status, (json.loads(out) if out else None)


def make_tenant(ng, prefix):
    sub = harness.unique(prefix)
    status, t = admin(ng, "POST", "/admin/v1/tenants",
                      {"subdomain": sub, "name": "T " + sub, "status": "active"})
    assert status in (200, 201), (status, t, ng.logs())
    status, k = admin(ng, "POST", "/admin/v1/tenants/%s/api-keys" % t["id"], {"name": "nginx"})
    assert status in (200, 201), (status, k)
    t["key"] = k["secret"]
    return t


def tenant_get(ng, sub, key, headers=()):
    status, h, body = ng.curl("%s.%s" % (sub, DOMAIN), "/api/v1/tenant",
                              headers=["Authorization: Bearer " + key] + list(headers))
    return status, (json.loads(body) if body else None)


def test_tenants_resolved_through_nginx(gw_nginx):
    _, ng = gw_nginx
    tenants = [make_tenant(ng, p) for p in ("ngxa", "ngxb", "ngxc")]
    for t in tenants:
        status, j = tenant_get(ng, t["subdomain"], t["key"])
        assert status == 200, (status, j)
        assert j["id"] == t["id"] and j["subdomain"] == t["subdomain"], j


def test_client_header_cannot_pick_another_tenant(gw_nginx):
    _, ng = gw_nginx
    a, b = make_tenant(ng, "ngxv"), make_tenant(ng, "ngxw")
    for forged in (b["subdomain"], "%s.%s" % (b["subdomain"], DOMAIN)):
        # On a's host with b's key and a forged header naming b: nginx
        # replaces the header with a's host, so b's key is refused.
        status, j = tenant_get(ng, a["subdomain"], b["key"],
                               headers=["X-Tenant-Subdomain: " + forged])
        assert status == 401, (forged, status, j)
        # With a's key the forged header changes nothing: a is served.
        status, j = tenant_get(ng, a["subdomain"], a["key"],
                               headers=["X-Tenant-Subdomain: " + forged,
                                        "X-Forwarded-Host: " + forged])
        assert status == 200 and j["id"] == a["id"], (forged, status, j)


def test_unknown_tenant_through_nginx(gw_nginx):
    _, ng = gw_nginx
    t = make_tenant(ng, "ngxu")
    status, j = tenant_get(ng, harness.unique("nobody"), t["key"])
    assert status == 404, (status, j)


def test_direct_untrusted_header_ignored(gw_nginx):
    """The same forged header sent to the gateway directly from an address
    outside KOWLOON_TRUSTED_PROXIES (127.0.0.2) is ignored too."""
    st, ng = gw_nginx
    a, b = make_tenant(ng, "ngxx"), make_tenant(ng, "ngxy")
    r = harness.http(st.gateway.port, "GET", "/api/v1/tenant",
                     host="%s.%s" % (a["subdomain"], DOMAIN),
                     headers=[("Authorization", "Bearer " + b["key"]),
                              ("X-Tenant-Subdomain", "%s.%s" % (b["subdomain"], DOMAIN))],
                     source="127.0.0.2")
    assert r.status == 401, r
