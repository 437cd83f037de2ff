"""Kowloon integration-test harness: the real processes on loopback.

Python 3 standard library plus Debian's python3-zmq. Reads the environment
that integration-tests/run.sh exports:

  KLTEST_PG_URL      superuser libpq URL, postgresql://postgres@127.0.0.1:P/postgres
  KLTEST_REDIS_URL   redis://127.0.0.1:P/0
  KLTEST_BUILD_DIR   the CMake build directory holding the binaries
  KLTEST_PG_DIR      the private PostgreSQL's directory (deploy/local/lib.sh)
  KLTEST_REDIS_PORT  the private Redis's port
  KLTEST_LOG_DIR     optional: where process logs go (default: a temp dir)

What it offers:
  * new_database(): a fresh database in KLTEST_PG_URL, dropped at the end;
  * Proc / Stack: kowloon-tenant and kowloon-gateway started as real
    processes on free ports, stderr captured to files, readiness awaited,
    stopped with SIGTERM and checked (exit 0, no sanitizer report);
  * http(): an HTTP/1.1 client over http.client that can set Host, send
    duplicate headers and bind the SOURCE address (127.0.0.2 = untrusted);
    raw(): send raw bytes and parse what comes back;
  * pb_*: a tiny protobuf encoder/decoder for the RPC envelope, and rpc_call()
    over a ZeroMQ DEALER socket.
"""

import http.client as hc
import json
import os
import random
import re
import signal
import socket
import string
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "deploy", "local"))
import free_port as _free_port  # noqa: E402

# ---------------------------------------------------------------- environment

REQUIRED_ENV = {
    "KLTEST_PG_URL": "a superuser libpq URL such as postgresql://postgres@127.0.0.1:PORT/postgres",
    "KLTEST_REDIS_URL": "a Redis URL such as redis://127.0.0.1:PORT/0",
    "KLTEST_BUILD_DIR": "the CMake build directory (set by CTest)",
}

#: Patterns that mark a sanitizer report in a process's stderr.
SANITIZER_PATTERNS = [
    "ERROR: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "WARNING: ThreadSanitizer",
    "runtime error:",  # UBSan
    "AddressSanitizer:DEADLYSIGNAL",
]


class HarnessError(Exception):
    """The environment or a process is not what the tests need."""


def env(name):
    """Value of a required KLTEST_* variable, or a clear failure."""
    value = os.environ.get(name)
    if not value:
        raise HarnessError(
            "%s is not set: set it to %s, or run the suite with "
            "integration-tests/run.sh, which starts PostgreSQL and Redis and sets it"
            % (name, REQUIRED_ENV.get(name, "a value")))
    return value


def check_env():
    for name in REQUIRED_ENV:
        env(name)


def binary(name):
    """Path of a built binary: 'tenant' or 'gateway'."""
    rel = {"tenant": "services/tenant/kowloon-tenant",
           "gateway": "gateway/kowloon-gateway"}[name]
    path = os.path.join(env("KLTEST_BUILD_DIR"), rel)
    if not os.access(path, os.X_OK):
        raise HarnessError("%s is not built (looked for %s)" % (name, path))
    return path


def free_port():
    """A TCP port nobody listens on now, on 127.0.0.1, below the ephemeral
    range (deploy/local/free_port.py says why)."""
    return _free_port.free_port()


def unique(prefix):
    """A name unlikely to clash between test modules running in parallel:
    lowercase letters and digits, valid as a subdomain part."""
    tail = "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(6))
    return "%s%d%s" % (prefix, os.getpid() % 100000, tail)


# ------------------------------------------------------------------ databases

def _pg_url_with_db(url, dbname):
    p = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((p.scheme, p.netloc, "/" + dbname, p.query, p.fragment))


def psql(sql, url=None):
    """Runs sql with psql against url (default KLTEST_PG_URL); returns stdout."""
    url = url or env("KLTEST_PG_URL")
    r = subprocess.run(["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1",
                        "-d", url, "-c", sql],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise HarnessError("psql %r failed: %s" % (sql, r.stderr.strip()))
    return r.stdout


class Database:
    """A fresh database in KLTEST_PG_URL's server; drop() removes it."""

    def __init__(self, prefix="kltest"):
        self.name = unique(prefix + "_").replace("-", "_")
        psql('CREATE DATABASE "%s"' % self.name)
        self.url = _pg_url_with_db(env("KLTEST_PG_URL"), self.name)

    def drop(self):
        psql('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % self.name)


# ------------------------------------- the run's PostgreSQL and Redis themselves

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lib_sh(*cmd, timeout=120):
    """Runs one deploy/local/lib.sh function (e.g. "kl_pg_stop", dir)."""
    # A server started here outlives the test: it must not carry the run's
    # marker, or run.sh would take it for a leftover test process.
    e = {k: v for k, v in os.environ.items() if k != "KLTEST_RUN_ID"}
    r = subprocess.run(["bash", "-c", '. "$0/deploy/local/lib.sh" && "$@"', ROOT] + list(cmd),
                       env=e, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise HarnessError("%s failed: %s" % (" ".join(cmd), (r.stdout + r.stderr).strip()))


def pg_stop():
    """Stops the run's PostgreSQL (KLTEST_PG_DIR). Only in a test file marked
    "kltest: run_serial": every other test uses the same server."""
    lib_sh("kl_pg_stop", env("KLTEST_PG_DIR"))


def pg_start():
    port = urllib.parse.urlsplit(env("KLTEST_PG_URL")).port
    lib_sh("kl_pg_start", env("KLTEST_PG_DIR"), str(port))


def redis_stop():
    """Stops the run's Redis (KLTEST_REDIS_DIR); run_serial files only."""
    lib_sh("kl_redis_stop", env("KLTEST_REDIS_DIR"))
    port = int(env("KLTEST_REDIS_PORT"))
    # kl_redis_stop signals and returns: wait until the port is closed.
    def closed():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return False
        except OSError:
            return True
    wait_until(closed, 10, what="Redis to stop")


def redis_start():
    lib_sh("kl_redis_start", env("KLTEST_REDIS_DIR"), env("KLTEST_REDIS_PORT"))


# ------------------------------------------------------------------ processes

def base_env():
    """The parent environment without any KOWLOON_* variable, with sanitizer
    options defaulted the way run.sh sets them."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("KOWLOON_")}
    e.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    e.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    return e


_log_dir = None
#: Every Proc started in this Python process, for failure reports.
ALL_PROCS = []
#: Name of the test module running now (set by conftest.py).
CURRENT_MODULE = None


def log_dir():
    global _log_dir
    if _log_dir is None:
        base = os.environ.get("KLTEST_LOG_DIR")
        if base:
            os.makedirs(base, exist_ok=True)
            _log_dir = tempfile.mkdtemp(prefix="it-", dir=base)
        else:
            _log_dir = tempfile.mkdtemp(prefix="kowloon-it-")
    return _log_dir


def sanitizer_report(text):
    """The first sanitizer pattern found in text, or None."""
    for pat in SANITIZER_PATTERNS:
        if pat in text:
            return pat
    return None


class Proc:
    """One Kowloon process with its stderr in a file."""

    def __init__(self, kind, envvars, name=None):
        self.kind = kind
        self.name = name or kind
        self.env = dict(envvars)
        self.log_path = os.path.join(log_dir(), "%s-%d.log" % (self.name, len(ALL_PROCS)))
        self.popen = None
        self.expected_dead = False  # set when a test kills it on purpose
        self.module = CURRENT_MODULE  # the test module that started it
        ALL_PROCS.append(self)

    def start(self):
        full = base_env()
        full.update(self.env)
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen([binary(self.kind)], env=full,
                                      stdin=subprocess.DEVNULL,
                                      stdout=self._log, stderr=self._log)
        return self

    def alive(self):
        return self.popen is not None and self.popen.poll() is None

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def tail(self, n=60):
        lines = self.log().splitlines()
        return "\n".join(lines[-n:])

    def kill(self):
        """SIGKILL, on purpose (not a failure)."""
        self.expected_dead = True
        if self.alive():
            self.popen.kill()
            self.popen.wait(10)

    def stop(self, timeout=20):
        """SIGTERM and wait; returns the exit status (None if never started)."""
        if self.popen is None:
            return None
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
                self._log.close()
                raise HarnessError("%s did not exit within %ds of SIGTERM\n%s"
                                   % (self.name, timeout, self.tail()))
        self._log.close()
        return self.popen.returncode

    def problems(self, rc):
        """What is wrong with how this process ended (list of strings)."""
        out = []
        if not self.expected_dead and rc != 0:
            out.append("%s exited with status %s (wanted 0 after SIGTERM)" % (self.name, rc))
        pat = sanitizer_report(self.log())
        if pat:
            out.append("%s: sanitizer report (%r) in its log" % (self.name, pat))
        return out


def wait_until(pred, timeout, interval=0.05, what="condition"):
    """Polls pred() until true; returns its value or raises HarnessError."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except (OSError, hc.HTTPException) as e:
            last_exc = e
        time.sleep(interval)
    raise HarnessError("timed out after %.1fs waiting for %s%s"
                       % (timeout, what, " (last error: %s)" % last_exc if last_exc else ""))


# ------------------------------------------------------------------ protobuf

def pb_varint(n):
    n &= (1 << 64) - 1  # negative int64 -> two's complement, 10 bytes
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pb_field_varint(num, value):
    return pb_varint(num << 3 | 0) + pb_varint(value) if value else b""


def pb_field_bytes(num, value):
    if isinstance(value, str):
        value = value.encode()
    return pb_varint(num << 3 | 2) + pb_varint(len(value)) + value if value else b""


def pb_decode(data):
    """{field number: [values]}: ints for varints, bytes for length-delimited."""
    fields = {}
    i = 0

    def varint():
        nonlocal i
        shift = result = 0
        while True:
            if i >= len(data):
                raise ValueError("truncated varint")
            b = data[i]
            i += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    while i < len(data):
        key = varint()
        num, wt = key >> 3, key & 7
        if wt == 0:
            v = varint()
        elif wt == 2:
            ln = varint()
            v = data[i:i + ln]
            if len(v) != ln:
                raise ValueError("truncated field")
            i += ln
        elif wt == 1:
            v = struct.unpack("<Q", data[i:i + 8])[0]
            i += 8
        elif wt == 5:
            v = struct.unpack("<I", data[i:i + 4])[0]
            i += 4
        else:
            raise ValueError("wire type %d" % wt)
        fields.setdefault(num, []).append(v)
    return fields


# kowloon.rpc.Code numbers (gRPC's).
CODES = {0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED",
         5: "NOT_FOUND", 6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED",
         9: "FAILED_PRECONDITION", 10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED",
         13: "INTERNAL", 14: "UNAVAILABLE", 15: "DATA_LOSS", 16: "UNAUTHENTICATED"}


def pb_request(service, method, payload=b"", correlation_id=1, deadline_unix_ms=None,
               request_id="it-test", principal="admin", version=1):
    """A packed kowloon.rpc.Request."""
    if deadline_unix_ms is None:
        deadline_unix_ms = int(time.time() * 1000) + 5000
    ctx = pb_field_bytes(1, request_id) + pb_field_bytes(5, principal)
    return (pb_field_varint(1, version) + pb_field_varint(2, correlation_id)
            + pb_field_bytes(3, service) + pb_field_bytes(4, method)
            + pb_field_varint(5, deadline_unix_ms) + pb_field_bytes(6, ctx)
            + pb_field_bytes(7, payload))


def pb_response(data):
    """(correlation_id, code name, message, payload bytes) of a packed Response."""
    f = pb_decode(data)
    status = pb_decode(f.get(3, [b""])[0])
    code = status.get(1, [0])[0]
    msg = status.get(2, [b""])[0].decode("utf-8", "replace")
    return f.get(2, [0])[0], CODES.get(code, str(code)), msg, f.get(4, [b""])[0]


def pb_strings(data):
    """{field: first string} of a flat message of strings (e.g. Tenant)."""
    return {k: v[0].decode("utf-8", "replace") for k, v in pb_decode(data).items()
            if isinstance(v[0], bytes)}


TENANT_SERVICE = "kowloon.tenant.TenantService"
HEALTH_SERVICE = "kowloon.rpc.Health"


def rpc_call(endpoint, request_bytes, timeout_ms=3000):
    """Sends one frame on a fresh DEALER; returns the reply frames (list of
    bytes) or None when nothing came back within timeout_ms."""
    import zmq  # Debian's python3-zmq
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    try:
        s.connect(endpoint)
        s.send(request_bytes)
        if s.poll(timeout_ms, zmq.POLLIN):
            return s.recv_multipart()
        return None
    finally:
        s.close()


def health_check(endpoint, timeout_ms=1000):
    """'SERVING' / 'NOT_SERVING' / 'UNKNOWN', or None (no answer / error)."""
    reply = rpc_call(endpoint, pb_request(HEALTH_SERVICE, "Check", correlation_id=7),
                     timeout_ms)
    if not reply or len(reply) != 1:
        return None
    _, code, _, payload = pb_response(reply[0])
    if code != "OK":
        return None
    st = pb_decode(payload).get(1, [0])[0]
    return {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING"}.get(st, str(st))


# ---------------------------------------------------------------------- HTTP

class Response:
    def __init__(self, status, headers, body, elapsed):
        self.status = status
        self.headers = headers  # list of (name, value)
        self.body = body
        self.elapsed = elapsed
        try:
            self.json = json.loads(body.decode("utf-8")) if body else None
        except (ValueError, UnicodeDecodeError):
            self.json = None

    def header(self, name):
        """First value of header name (case-insensitive) or None."""
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def __repr__(self):
        return "<HTTP %s %s>" % (self.status, self.text[:500])


def http(port, method, path, host="localhost", headers=None, body=None,
         source="127.0.0.1", timeout=15):
    """One request to 127.0.0.1:port. host None sends no Host header; headers
    is a dict or a list of (name, value) (duplicates allowed); body: bytes,
    str, or an object sent as JSON."""
    if isinstance(headers, dict):
        headers = list(headers.items())
    headers = list(headers or [])
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
        if not any(k.lower() == "content-type" for k, _ in headers):
            headers.append(("Content-Type", "application/json"))
    if isinstance(body, str):
        body = body.encode()
    conn = hc.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                      source_address=(source, 0))
    t0 = time.monotonic()
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", host)
        for k, v in headers:
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        data = r.read()
        return Response(r.status, r.getheaders(), data, time.monotonic() - t0)
    finally:
        conn.close()


def raw(port, data, source="127.0.0.1", timeout=15):
    """Sends raw bytes, reads until the server closes (or one full response
    with Content-Length arrives); returns a Response (status 0 if nothing
    parseable came back)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                 source_address=(source, 0))
    t0 = time.monotonic()
    buf = b""
    try:
        s.sendall(data)
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            buf += chunk
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if sep:
                m = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
                if m and len(rest) >= int(m.group(1)):
                    break
    finally:
        s.close()
    elapsed = time.monotonic() - t0
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    m = re.match(rb"HTTP/1\.[01] (\d{3})", lines[0] if lines else b"")
    if not m:
        return Response(0, [], buf, elapsed)
    hdrs = []
    for ln in lines[1:]:
        k, _, v = ln.partition(b":")
        hdrs.append((k.decode("latin-1").strip(), v.decode("latin-1").strip()))
    return Response(int(m.group(1)), hdrs, rest, elapsed)


# --------------------------------------------------------------------- stack

ADMIN_TOKEN = "it-admin-token-0123456789abcdef"


class Stack:
    """A database, a tenant service and a gateway (more can be added)."""

    def __init__(self, db=None, tenant_env=None, gateway_env=None):
        check_env()
        self.db = db or Database()
        self.events_channel = "kltest:%s:events" % self.db.name
        self.tenant_port = free_port()
        self.tenant_endpoint = "tcp://127.0.0.1:%d" % self.tenant_port
        self.tenant_env = tenant_env or {}
        self.gateway_env = gateway_env or {}
        self.procs = []
        self.tenant = None
        self.gateway = None
        self.http_port = None

    # -- environment of each process
    def common_env(self):
        return {"KOWLOON_REDIS_URL": env("KLTEST_REDIS_URL"),
                "KOWLOON_EVENTS_CHANNEL": self.events_channel,
                "KOWLOON_LOG_LEVEL": "debug"}

    def tenant_envvars(self, extra=None):
        e = self.common_env()
        e.update({"KOWLOON_DATABASE_URL": self.db.url,
                  "KOWLOON_TENANT_BIND": self.tenant_endpoint,
                  "KOWLOON_WORKERS": "2"})
        e.update(self.tenant_env)
        e.update(extra or {})
        return e

    def gateway_envvars(self, port, extra=None):
        e = self.common_env()
        e.update({"KOWLOON_TENANT_ENDPOINTS": self.tenant_endpoint,
                  "KOWLOON_HTTP_LISTEN": "127.0.0.1:%d" % port,
                  "KOWLOON_ADMIN_TOKEN": ADMIN_TOKEN,
                  "KOWLOON_BASE_DOMAIN": "localhost",
                  "KOWLOON_PUBLIC_SCHEME": "http",
                  "KOWLOON_HTTP_THREADS": "8"})
        # Services this Stack does not start get endpoints where nobody
        # listens, so that a service someone runs on a default port is never
        # reached by a test (ProductStack sets its own).
        for svc in ("FLAGS", "WORKSPACE", "BILLING", "MIGRATION"):
            e["KOWLOON_%s_ENDPOINTS" % svc] = "tcp://127.0.0.1:%d" % free_port()
        e.update(self.gateway_env)
        e.update(extra or {})
        return e

    # -- starting
    def start_tenant(self, extra=None, name="tenant", wait=True):
        p = Proc("tenant", self.tenant_envvars(extra), name=name).start()
        self.procs.append(p)
        if wait:
            self.wait_tenant_ready(p)
        return p

    def wait_tenant_ready(self, p, timeout=60):
        def ready():
            if not p.alive():
                raise HarnessError("%s exited with status %s at start:\n%s"
                                   % (p.name, p.popen.returncode, p.tail()))
            return health_check(self.tenant_endpoint, 500) == "SERVING"
        wait_until(ready, timeout, interval=0.1, what="%s Health.Check SERVING" % p.name)

    def start_gateway(self, extra=None, name="gateway", wait=True):
        port = free_port()
        p = Proc("gateway", self.gateway_envvars(port, extra), name=name).start()
        p.port = port
        self.procs.append(p)
        if wait:
            self.wait_gateway_ready(p)
        return p

    def wait_gateway_ready(self, p, timeout=60):
        def ready():
            if not p.alive():
                raise HarnessError("%s exited with status %s at start:\n%s"
                                   % (p.name, p.popen.returncode, p.tail()))
            try:
                return http(p.port, "GET", "/readyz", timeout=2).status == 200
            except OSError:
                return False
        wait_until(ready, timeout, interval=0.1, what="%s /readyz 200" % p.name)

    def start(self):
        self.tenant = self.start_tenant()
        self.gateway = self.start_gateway()
        self.http_port = self.gateway.port
        return self

    # -- stopping
    def stop_proc(self, p):
        """Stops one process; returns the problems found (list)."""
        try:
            rc = p.stop()
        except HarnessError as e:
            return [str(e)]
        if rc is None:
            return []
        return p.problems(rc)

    def stop(self, drop_db=True):
        """Stops gateways first, then services; raises with every problem."""
        problems = []
        order = ([p for p in self.procs if p.kind == "gateway"]
                 + [p for p in self.procs if p.kind != "gateway"])
        for p in order:
            problems += self.stop_proc(p)
        if drop_db:
            try:
                self.db.drop()
            except HarnessError as e:
                problems.append(str(e))
        if problems:
            details = "\n\n".join("--- %s (%s)\n%s" % (p.name, p.log_path, p.tail(80))
                                  for p in order)
            raise HarnessError("\n".join(problems) + "\n\n" + details)

    # -- HTTP shortcuts
    def req(self, method, path, host="localhost", port=None, **kw):
        return http(port or self.http_port, method, path, host=host, **kw)

    def admin(self, method, path, body=None, token=ADMIN_TOKEN, port=None, **kw):
        headers = list(kw.pop("headers", []) or [])
        if token is not None:
            headers.append(("Authorization", "Bearer " + token))
        return self.req(method, path, host="localhost", port=port, body=body,
                        headers=headers, **kw)

    def create_tenant(self, subdomain, name=None, **fields):
        body = {"subdomain": subdomain, "name": name or ("Tenant " + subdomain)}
        body.update(fields)
        r = self.admin("POST", "/admin/v1/tenants", body)
        assert r.status in (200, 201), r
        assert r.json["subdomain"] == subdomain, r
        return r.json

    def create_key(self, tenant_id, name="it key"):
        r = self.admin("POST", "/admin/v1/tenants/%s/api-keys" % tenant_id, {"name": name})
        assert r.status in (200, 201), r
        assert r.json.get("secret"), r
        return r.json

    def warm(self, subdomain, key, port=None):
        """Puts the tenant and its key in the gateway's cache. The change
        events of their creation arrive asynchronously and drop entries, so
        ask again once they have surely been handled."""
        for _ in range(2):
            r = self.tenant_get(subdomain, key, port=port)
            assert r.status == 200, r
            time.sleep(0.3)

    def tenant_get(self, subdomain, key, port=None, **kw):
        """GET /api/v1/tenant as subdomain with an API key."""
        headers = list(kw.pop("headers", []) or [])
        if key is not None:
            headers.append(("Authorization", "Bearer " + key))
        return self.req("GET", "/api/v1/tenant", host="%s.localhost" % subdomain,
                        port=port, headers=headers, **kw)


def strip_request_ids(obj):
    """obj with every request id member removed, to compare two error bodies."""
    if isinstance(obj, dict):
        return {k: strip_request_ids(v) for k, v in obj.items()
                if k.lower().replace("-", "_") not in ("request_id", "requestid")}
    if isinstance(obj, list):
        return [strip_request_ids(v) for v in obj]
    return obj


# ------------------------------------------- flags + workspace (issue #3 gateway)
# Added by the gateway tests (test_entitlements.py, test_rate_limit.py,
# test_workspace_api.py, test_two_gateways.py, test_redis_down.py): a Stack
# that also runs kowloon-flags and kowloon-workspace, the latter with two
# database roles (the owner runs the DDL, the application role has neither
# SUPERUSER nor BYPASSRLS, as SECURITY.md requires).

_EXTRA_BINARIES = {"flags": "services/flags/kowloon-flags",
                   "workspace": "services/workspace/kowloon-workspace"}


def apply_product_migrations(url, schema="workspace"):
    """Stand-in for kowloon-migration until the harness runs it: applies
    services/workspace/migrations/V*.sql to the row model's shared schema
    once (the workspace service no longer creates its tables itself; see
    docs/isolation.md)."""
    if psql("SELECT to_regclass('%s.projects') IS NOT NULL" % schema, url).strip() == "t":
        return
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    mdir = os.path.join(root, "services", "workspace", "migrations")
    psql("CREATE SCHEMA IF NOT EXISTS %s" % schema, url)
    for f in sorted(x for x in os.listdir(mdir) if re.match(r"V\d+__.*\.sql$", x)):
        with open(os.path.join(mdir, f)) as fh:
            psql("SET search_path = %s;\n%s" % (schema, fh.read()), url)


class ExtraProc(Proc):
    """A Proc for a binary binary() does not know (flags, workspace)."""

    def start(self):
        path = os.path.join(env("KLTEST_BUILD_DIR"), _EXTRA_BINARIES[self.kind])
        if not os.access(path, os.X_OK):
            raise HarnessError("%s is not built (looked for %s)" % (self.kind, path))
        full = base_env()
        full.update(self.env)
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen([path], env=full, stdin=subprocess.DEVNULL,
                                      stdout=self._log, stderr=self._log)
        return self


class ProductStack(Stack):
    """Database, tenant, flags, workspace and one gateway (more with
    start_gateway). redis_url overrides KLTEST_REDIS_URL for every process
    (a test that stops Redis runs its own)."""

    def __init__(self, redis_url=None, gateway_env=None, **kw):
        super().__init__(gateway_env=gateway_env, **kw)
        self.redis_url = redis_url
        self.flags_endpoint = "tcp://127.0.0.1:%d" % free_port()
        self.workspace_endpoint = "tcp://127.0.0.1:%d" % free_port()
        self.app_role = unique("klapp")
        psql("CREATE ROLE %s LOGIN NOSUPERUSER NOBYPASSRLS" % self.app_role)
        p = urllib.parse.urlsplit(self.db.url)
        host = p.netloc.split("@", 1)[-1]
        self.app_url = urllib.parse.urlunsplit(
            (p.scheme, "%s@%s" % (self.app_role, host), p.path, p.query, p.fragment))
        self.flags = None
        self.workspace = None

    def common_env(self):
        e = super().common_env()
        if self.redis_url is not None:
            e["KOWLOON_REDIS_URL"] = self.redis_url
        return e

    def gateway_envvars(self, port, extra=None):
        e = super().gateway_envvars(port)
        e.update({"KOWLOON_FLAGS_ENDPOINTS": self.flags_endpoint,
                  "KOWLOON_WORKSPACE_ENDPOINTS": self.workspace_endpoint})
        e.update(self.gateway_env)
        e.update(extra or {})
        return e

    def _start_service(self, kind, endpoint, envvars, name):
        e = self.common_env()
        e.update(envvars)
        p = ExtraProc(kind, e, name=name).start()
        self.procs.append(p)

        def ready():
            if not p.alive():
                raise HarnessError("%s exited with status %s at start:\n%s"
                                   % (p.name, p.popen.returncode, p.tail()))
            return health_check(endpoint, 500) == "SERVING"
        wait_until(ready, 60, interval=0.1, what="%s Health.Check SERVING" % name)
        return p

    def start_flags(self, name="flags"):
        return self._start_service("flags", self.flags_endpoint, {
            "KOWLOON_DATABASE_URL": self.db.url,
            "KOWLOON_FLAGS_BIND": self.flags_endpoint,
            "KOWLOON_WORKERS": "2"}, name)

    def start_workspace(self, name="workspace"):
        apply_product_migrations(self.db.url)
        return self._start_service("workspace", self.workspace_endpoint, {
            "KOWLOON_DATABASE_URL": self.app_url,
            "KOWLOON_DATA_OWNER_URL": self.db.url,
            "KOWLOON_WORKSPACE_BIND": self.workspace_endpoint,
            "KOWLOON_FLAGS_ENDPOINTS": self.flags_endpoint,
            "KOWLOON_WORKERS": "4"}, name)

    def start(self):
        self.tenant = self.start_tenant()
        self.flags = self.start_flags()
        self.workspace = self.start_workspace()
        self.gateway = self.start_gateway()
        self.http_port = self.gateway.port
        return self

    def stop(self, drop_db=True):
        try:
            super().stop(drop_db=drop_db)
        finally:
            if drop_db:
                try:
                    psql("DROP ROLE IF EXISTS %s" % self.app_role)
                except HarnessError:
                    pass

    # -- tenant API shortcuts
    def api(self, subdomain, key, method, path, body=None, port=None, **kw):
        headers = list(kw.pop("headers", []) or [])
        if key is not None:
            headers.append(("Authorization", "Bearer " + key))
        return self.req(method, path, host="%s.localhost" % subdomain, port=port,
                        body=body, headers=headers, **kw)

    def tenant_with_key(self, prefix, plan=None):
        """A new active tenant (plan if given) and its API key secret."""
        fields = {"status": "active"}
        if plan:
            fields["plan"] = plan
        t = self.create_tenant(unique(prefix), **fields)
        return t, self.create_key(t["id"])["secret"]


def product_stack_fixture(mod_env=None, **kw):
    """For a module-scoped pytest fixture: a started ProductStack."""
    st = ProductStack(gateway_env=mod_env, **kw)
    try:
        st.start()
    except BaseException:
        try:
            st.stop()
        except HarnessError as e:
            import sys
            sys.stderr.write(str(e) + "\n")
        raise
    return st


# ------------------------------------------ billing + Stripe stand-in (gateway)
# Added by the gateway's billing tests (test_billing_gateway.py): the billing
# binary and the Stripe stand-in (integration-tests/stripe_standin) started
# on a free port, as test_billing.py starts it.

_EXTRA_BINARIES.setdefault("billing", "services/billing/kowloon-billing")
STRIPE_STANDIN = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                              "stripe_standin", "standin.py")


def start_stripe_standin(secret_key):
    """Starts the Stripe stand-in on a free port. Returns (popen, base URL);
    stop it with popen.terminate() and popen.wait()."""
    p = subprocess.Popen(["/usr/bin/python3", STRIPE_STANDIN, "--port", "0",
                          "--secret-key", secret_key],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = p.stdout.readline().decode()
    if not line.startswith("listening on "):
        p.kill()
        p.wait(10)
        raise HarnessError("the Stripe stand-in did not start: %r" % line)
    return p, "http://127.0.0.1:%d" % int(line.split()[2])
