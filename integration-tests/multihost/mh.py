"""Multi-host harness: Kowloon on three "hosts" made of Linux network
namespaces, all on this machine and all created (and deleted) by the test.

  klmh<pid>-sw   the switch: a bridge br0 and one veth per host
  klmh<pid>-db   10.77.0.10  PostgreSQL :5432, Redis :6379
  klmh<pid>-a1   10.77.0.11  gateway :8080, tenant :7101, flags :7102,
                             workspace :7103, billing :7104, migration :7105
  klmh<pid>-a2   10.77.0.12  the same
  klmh<pid>-cl   10.77.0.20  the load generator (load.py)

The addresses exist only inside these namespaces: nothing is added to the
machine's own network namespace (each veth pair is created directly with
its ends in two of ours). Every app-host process runs with its host's Curve
key pair (kowloonctl keygen, or python3-zmq when kowloonctl is not built)
and an allow-list of both hosts' public certificates; every caller names
the servers of BOTH app hosts with "?key=". Net.down() kills what still
runs inside the namespaces and deletes them; leftovers of a run that was
killed (its pid gone) are removed by the next run (cleanup_stale), or by
integration-tests/multihost/cleanup.sh.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
LOAD = os.path.join(HERE, "load.py")
PREFIX = "klmh"
SUBNET = "10.77.0"
HOSTS = {"db": 10, "a1": 11, "a2": 12, "cl": 20}
APP_HOSTS = ("a1", "a2")
PORTS = {"tenant": 7101, "flags": 7102, "workspace": 7103, "billing": 7104,
         "migration": 7105}
HTTP_PORT = 8080
PG_PORT = 5432
REDIS_PORT = 6379
ADMIN_TOKEN = "multihost-admin-token-0123456789"

BINARIES = {"gateway": "gateway/kowloon-gateway",
            "tenant": "services/tenant/kowloon-tenant",
            "flags": "services/flags/kowloon-flags",
            "workspace": "services/workspace/kowloon-workspace",
            "billing": "services/billing/kowloon-billing",
            "migration": "services/migration/kowloon-migration"}


def sh(argv, timeout=60, check=True):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise harness.HarnessError("%s failed (%d): %s" % (" ".join(argv), r.returncode,
                                                          (r.stdout + r.stderr).strip()))
    return r


def netns_unavailable():
    """None when `ip netns add` works here, else why not (for the skip)."""
    if os.geteuid() != 0:
        return "network namespaces need root (euid %d)" % os.geteuid()
    if not shutil.which("ip"):
        return "the ip command (iproute2) is not installed"
    probe = "%sprobe%d" % (PREFIX, os.getpid())
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return "`ip netns add` failed: %s" % r.stderr.strip()
    r = subprocess.run(["ip", "-n", probe, "link", "add", "v0", "type", "veth", "peer",
                        "name", "v1"], capture_output=True, text=True)
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    if r.returncode != 0:
        return "veth pairs cannot be created: %s" % r.stderr.strip()
    return None


def _kill_ns_pids(ns):
    r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    for p in r.stdout.split():
        try:
            os.kill(int(p), signal.SIGCONT)
            os.kill(int(p), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def cleanup_stale():
    """Deletes namespaces of earlier runs whose process is gone."""
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(r"^%s(\d+)-[a-z0-9]+$" % PREFIX, name)
        if not m or os.path.exists("/proc/%s" % m.group(1)):
            continue
        _kill_ns_pids(name)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


class Net:
    """The namespaces, the bridge and the veth pairs."""

    def __init__(self):
        self.tag = "%s%d" % (PREFIX, os.getpid())
        self.created = []

    def ns(self, host):
        return "%s-%s" % (self.tag, host)

    @staticmethod
    def addr(host):
        return "%s.%d" % (SUBNET, HOSTS[host])

    def argv(self, host, cmd):
        return ["ip", "netns", "exec", self.ns(host)] + list(cmd)

    def up(self):
        sw = self.ns("sw")
        for h in ["sw"] + list(HOSTS):
            sh(["ip", "netns", "add", self.ns(h)])
            self.created.append(self.ns(h))
            sh(["ip", "-n", self.ns(h), "link", "set", "lo", "up"])
        sh(["ip", "-n", sw, "link", "add", "br0", "type", "bridge"])
        sh(["ip", "-n", sw, "link", "set", "br0", "up"])
        for h in HOSTS:
            sh(["ip", "link", "add", "eth0", "netns", self.ns(h), "type", "veth",
                "peer", "name", "p-" + h, "netns", sw])
            sh(["ip", "-n", sw, "link", "set", "p-" + h, "master", "br0", "up"])
            sh(["ip", "-n", self.ns(h), "addr", "add", self.addr(h) + "/24", "dev", "eth0"])
            sh(["ip", "-n", self.ns(h), "link", "set", "eth0", "up"])

    def set_link(self, host, up):
        """The host's cable: its port on the switch down or up."""
        sh(["ip", "-n", self.ns("sw"), "link", "set", "p-" + host, "up" if up else "down"])

    def down(self):
        """Kills whatever still runs in our namespaces, deletes them (their
        veths and the bridge go with them). Never raises."""
        for ns in reversed(self.created):
            _kill_ns_pids(ns)
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.created = []


# ------------------------------------------------------------------ keys

def _zcert(path, public, secret=None):
    lines = ["#   ZeroMQ CURVE %s Certificate" % ("Secret" if secret else "Public"),
             "#   Written by the Kowloon multi-host test", "", "metadata",
             "curve", '    public-key = "%s"' % public]
    if secret:
        lines.append('    secret-key = "%s"' % secret)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def keygen(keydir, name, build_dir):
    """Writes keydir/name.key and name.key_secret; returns the public key
    (Z85). kowloonctl keygen when built, else python3-zmq in zcert format."""
    ctl = os.path.join(build_dir, "tools", "kowloonctl", "kowloonctl")
    if os.access(ctl, os.X_OK):
        r = sh([ctl, "keygen", "--dir", keydir, name])
        return r.stdout.split()[-1]
    import zmq
    public, secret = zmq.curve_keypair()
    _zcert(os.path.join(keydir, name + ".key"), public.decode())
    _zcert(os.path.join(keydir, name + ".key_secret"), public.decode(), secret.decode())
    os.chmod(os.path.join(keydir, name + ".key_secret"), 0o600)
    return public.decode()


# ------------------------------------------------------------- processes

class NsProc(harness.Proc):
    """A Kowloon process inside one host's namespace (ip netns exec execs
    the binary, so popen.pid is the process itself)."""

    def __init__(self, kind, envvars, name, net, host, build_dir):
        super().__init__(kind, envvars, name=name)
        self.net, self.host, self.build_dir = net, host, build_dir

    def start(self):
        path = os.path.join(self.build_dir, BINARIES[self.kind])
        if not os.access(path, os.X_OK):
            raise harness.HarnessError("%s is not built (looked for %s)" % (self.kind, path))
        full = harness.base_env()
        full.update(self.env)
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(self.net.argv(self.host, [path]), env=full,
                                      stdin=subprocess.DEVNULL, stdout=self._log,
                                      stderr=self._log)
        return self


class Cluster:
    """The three hosts and everything on them."""

    def __init__(self, net, build_dir, workdir):
        self.net = net
        self.build = build_dir
        self.work = workdir
        self.pg_dir = os.path.join(workdir, "pg")
        self.redis_dir = os.path.join(workdir, "redis")
        self.keydir = os.path.join(workdir, "curve")
        self.allowed = os.path.join(self.keydir, "allowed")
        self.keys = {}
        self.procs = {}  # (host, kind) -> NsProc
        self.all_procs = []
        self.db_url = "postgresql://postgres@%s:%d/kowloon" % (Net.addr("db"), PG_PORT)
        self.app_url = "postgresql://klapp@%s:%d/kowloon" % (Net.addr("db"), PG_PORT)
        self.local_url = "postgresql:///kowloon?host=%s/run&port=%d&user=postgres" % (
            self.pg_dir, PG_PORT)

    # -- database host
    def db_sh(self, *cmd, timeout=120):
        e = " ".join("'%s'" % c for c in cmd)
        sh(self.net.argv("db", ["bash", "-c", '. "%s/deploy/local/lib.sh" && %s' % (ROOT, e)]),
           timeout=timeout)

    def pg_start(self):
        self.db_sh("kl_pg_start", self.pg_dir, str(PG_PORT), Net.addr("db"), SUBNET + ".0/24")

    def pg_stop(self):
        self.db_sh("kl_pg_stop", self.pg_dir)

    def redis_start(self):
        self.db_sh("kl_redis_start", self.redis_dir, str(REDIS_PORT), Net.addr("db"))
        with open(os.path.join(self.redis_dir, "redis.pid")) as f:
            self._redis_pid = f.read().strip()

    def redis_stop(self):
        self.db_sh("kl_redis_stop", self.redis_dir)
        harness.wait_until(lambda: not os.path.exists("/proc/%s" % self._redis_pid),
                           10, what="Redis to exit")

    def start_db_host(self):
        os.makedirs(self.work, exist_ok=True)
        self.pg_start()
        self.redis_start()
        harness.psql("CREATE DATABASE kowloon",
                     self.local_url.replace("/kowloon?", "/postgres?"))
        harness.psql("CREATE ROLE klapp LOGIN NOSUPERUSER NOBYPASSRLS", self.local_url)
        harness.apply_product_migrations(self.local_url)

    def stop_db_host(self):
        for f in (lambda: self.db_sh("kl_redis_stop", self.redis_dir),
                  lambda: self.db_sh("kl_pg_stop", self.pg_dir)):
            try:
                f()
            except (harness.HarnessError, subprocess.TimeoutExpired):
                pass

    # -- keys
    def make_keys(self):
        os.makedirs(self.allowed, exist_ok=True)
        for h in APP_HOSTS:
            self.keys[h] = keygen(self.keydir, h, self.build)
            shutil.copy(os.path.join(self.keydir, h + ".key"), self.allowed)

    # -- app hosts
    def endpoints(self, kind):
        return ",".join("tcp://%s:%d?key=%s" % (Net.addr(h), PORTS[kind], self.keys[h])
                        for h in APP_HOSTS)

    def env_of(self, host, kind):
        a = Net.addr(host)
        e = {"KOWLOON_REDIS_URL": "redis://%s:%d/0" % (Net.addr("db"), REDIS_PORT),
             "KOWLOON_EVENTS_CHANNEL": "kowloon:events",
             "KOWLOON_LOG_LEVEL": "info",
             "KOWLOON_CURVE_SECRET_KEY_FILE": os.path.join(self.keydir, host + ".key_secret")}
        if kind != "gateway":
            e.update({"KOWLOON_CURVE_ALLOWED_CLIENTS_DIR": self.allowed,
                      "KOWLOON_DATABASE_URL": self.db_url,
                      "KOWLOON_WORKERS": "2",
                      "KOWLOON_%s_BIND" % kind.upper(): "tcp://%s:%d" % (a, PORTS[kind])})
        if kind == "gateway":
            e.update({"KOWLOON_HTTP_LISTEN": "%s:%d" % (a, HTTP_PORT),
                      "KOWLOON_ADMIN_TOKEN": ADMIN_TOKEN,
                      "KOWLOON_BASE_DOMAIN": "localhost",
                      "KOWLOON_PUBLIC_SCHEME": "http",
                      "KOWLOON_HTTP_THREADS": "24",
                      "KOWLOON_GATEWAY_INSTANCES": "2"})
            for svc in ("tenant", "flags", "workspace", "billing"):
                e["KOWLOON_%s_ENDPOINTS" % svc.upper()] = self.endpoints(svc)
        elif kind == "workspace":
            e.update({"KOWLOON_DATABASE_URL": self.app_url,
                      "KOWLOON_DATA_OWNER_URL": self.db_url,
                      "KOWLOON_WORKERS": "4",
                      "KOWLOON_FLAGS_ENDPOINTS": self.endpoints("flags")})
        elif kind == "billing":
            e.update({"KOWLOON_TENANT_ENDPOINTS": self.endpoints("tenant"),
                      "KOWLOON_FLAGS_ENDPOINTS": self.endpoints("flags"),
                      # Not exercised by this test: nothing listens there.
                      "KOWLOON_STRIPE_API_BASE": "http://127.0.0.1:9",
                      "KOWLOON_STRIPE_SECRET_KEY": "sk_test_multihost",
                      "KOWLOON_STRIPE_WEBHOOK_SECRETS": "whsec_multihost"})
        elif kind == "migration":
            e.update({"KOWLOON_DATA_OWNER_URL": self.db_url,
                      "KOWLOON_MIGRATIONS_DIR": os.path.join(ROOT, "services", "workspace",
                                                             "migrations"),
                      "KOWLOON_TENANT_ENDPOINTS": self.endpoints("tenant")})
        return e

    def start_proc(self, host, kind):
        p = NsProc(kind, self.env_of(host, kind), "%s-%s" % (kind, host), self.net, host,
                   self.build).start()
        self.procs[(host, kind)] = p
        self.all_procs.append(p)
        return p

    def wait_ready(self, procs, timeout=90):
        def ready():
            for p in procs:
                if not p.alive():
                    raise harness.HarnessError("%s exited with status %s at start:\n%s"
                                               % (p.name, p.popen.returncode, p.tail()))
            return all(self._is_ready(p) for p in procs)
        harness.wait_until(ready, timeout, interval=0.2,
                           what="%s ready" % ", ".join(p.name for p in procs))

    def _is_ready(self, p):
        if p.kind == "gateway":
            try:
                return self.http_get(p.host, "/readyz", status_only=True) == 200
            except harness.HarnessError:
                return False
        return "serving kowloon." in p.log()

    def start_app_hosts(self, kinds=("tenant", "flags", "workspace", "billing", "migration")):
        started = [self.start_proc(h, k) for h in APP_HOSTS for k in kinds]
        self.wait_ready(started)
        gws = [self.start_proc(h, "gateway") for h in APP_HOSTS]
        self.wait_ready(gws)

    def restart(self, host, kind):
        p = self.start_proc(host, kind)
        self.wait_ready([p])
        return p

    def stop_all(self):
        """SIGTERM every live process (gateways first); returns problems."""
        problems = []
        order = ([p for p in self.all_procs if p.kind == "gateway"]
                 + [p for p in self.all_procs if p.kind != "gateway"])
        for p in order:
            if p.popen is not None and p.alive():
                try:
                    os.kill(p.popen.pid, signal.SIGCONT)
                except OSError:
                    pass
            try:
                rc = p.stop()
            except harness.HarnessError as e:
                problems.append(str(e))
                continue
            if rc is not None:
                problems += p.problems(rc)
        return problems

    # -- from the client host
    def http_get(self, host, path, status_only=False):
        url = "http://%s:%d%s" % (Net.addr(host), HTTP_PORT, path)
        args = ["-o", "/dev/null", "-w", "%{http_code}"] if status_only else []
        r = subprocess.run(self.net.argv("cl", ["curl", "-s", "--max-time", "3"] + args
                                         + [url]),
                           capture_output=True, text=True, timeout=10)
        if r.returncode != 0:
            raise harness.HarnessError("GET %s: curl status %d" % (url, r.returncode))
        return int(r.stdout) if status_only else r.stdout

    def metrics(self, host):
        """{(name, service): value} of the kowloon_rpc_* counters, or None
        when the gateway does not answer."""
        try:
            text = self.http_get(host, "/metrics")
        except (harness.HarnessError, subprocess.TimeoutExpired):
            return None
        out = {}
        for m in re.finditer(r'^(kowloon_rpc_\w+_total)\{service="([^"]+)"\} (\d+)', text, re.M):
            out[(m.group(1), m.group(2))] = int(m.group(3))
        return out

    def plaintext_answers(self, host, kind):
        r = sh(self.net.argv("cl", ["/usr/bin/python3", LOAD, "plaincheck",
                                    "tcp://%s:%d" % (Net.addr(host), PORTS[kind])]), timeout=20)
        return r.stdout.strip() == "answered"

    def setup_tenants(self, n, out):
        gws = ",".join("%s:%d" % (Net.addr(h), HTTP_PORT) for h in APP_HOSTS)
        sh(self.net.argv("cl", ["/usr/bin/python3", LOAD, "setup", "--gateways", gws,
                                "--admin-token", ADMIN_TOKEN, "--tenants", str(n),
                                "--out", out]), timeout=120)

    def start_load(self, tenants, out, stop_file, rate, max_seconds):
        gws = ",".join("%s:%d" % (Net.addr(h), HTTP_PORT) for h in APP_HOSTS)
        log = open(os.path.join(harness.log_dir(), "load.log"), "ab")
        return subprocess.Popen(self.net.argv("cl", [
            "/usr/bin/python3", LOAD, "run", "--gateways", gws, "--tenants", tenants,
            "--out", out, "--rate", str(rate), "--threads", "8",
            "--max-seconds", str(max_seconds), "--max-requests", str(int(rate * max_seconds)),
            "--stop-file", stop_file]), stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def projects_present(self, names):
        """The subset of project names present in the database."""
        if not names:
            return set()
        found = set()
        names = sorted(names)
        for i in range(0, len(names), 500):
            chunk = names[i:i + 500]
            arr = ",".join("'%s'" % n for n in chunk)  # names are [a-z0-9-]
            out = harness.psql("SELECT name FROM workspace.projects WHERE name = ANY(ARRAY[%s])"
                               % arr, self.local_url)
            found.update(x for x in out.split() if x)
        return found


def new_workdir():
    d = tempfile.mkdtemp(prefix="kowloon-multihost-")
    os.chmod(d, 0o755)
    return d


def read_records(path):
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    return out
