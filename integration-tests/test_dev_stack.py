"""deploy/run.sh as a user runs it: started in a terminal-like session,
its printed "ready:" line awaited, every curl command it prints run as
printed (through bash) and its answer checked, then Ctrl-C (SIGINT to the
foreground process group, as a terminal sends it): exit status 0, every
process stopped, every port closed, no sanitizer report in any log.

What differs from a user's run, and why:
  * KOWLOON_DEV_DIR is a fresh temporary folder (not var/dev), and every
    port is a free one (KOWLOON_DEV_*_PORT, KOWLOON_HTTP_LISTEN), so the
    test shares nothing with a run on this machine;
  * KOWLOON_BUILD_DIR is the build under test and KOWLOON_DEV_SKIP_BUILD=1
    (the suite's build is made already; rebuilding it mid-suite would race
    the other tests using it).
"""

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

import harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_SH = os.path.join(ROOT, "deploy", "run.sh")
SERVICES = ("gateway", "tenant", "flags", "migration", "billing", "workspace",
            "stripe-standin")
READY_TIMEOUT_S = 240


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.3).close()
        return True
    except OSError:
        return False


class DevRun:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="kowloon-devstack-")
        self.dev = os.path.join(self.dir, "var-dev")
        self.ports = {k: harness.free_port() for k in
                      ("PG", "REDIS", "TENANT", "FLAGS", "WORKSPACE", "BILLING", "MIGRATION",
                       "STRIPE", "HTTP")}
        env = harness.base_env()
        for k in [k for k in env if k.startswith("KLTEST_")]:
            del env[k]
        env.update({"KOWLOON_DEV_DIR": self.dev,
                    "KOWLOON_BUILD_DIR": harness.env("KLTEST_BUILD_DIR"),
                    "KOWLOON_DEV_SKIP_BUILD": "1",
                    "KOWLOON_HTTP_LISTEN": "127.0.0.1:%d" % self.ports["HTTP"]})
        for k, v in self.ports.items():
            if k != "HTTP":
                env["KOWLOON_DEV_%s_PORT" % k] = str(v)
        self.env = env
        self.out_lines = []
        self.err_path = os.path.join(self.dir, "run.stderr")
        self.ready = threading.Event()
        self.popen = None
        self.pids = {}

    def start(self):
        self._err = open(self.err_path, "wb")
        # A session of its own, like a shell in a terminal: Ctrl-C is SIGINT
        # to its foreground process group.
        self.popen = subprocess.Popen(["bash", RUN_SH], cwd=ROOT, env=self.env,
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=self._err, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.ready.wait(0.2):
            if self.popen.poll() is not None:
                raise harness.HarnessError("deploy/run.sh exited with status %s before "
                                           "ready:\n%s" % (self.popen.returncode, self.stderr()))
            if time.monotonic() > deadline:
                raise harness.HarnessError("deploy/run.sh printed no ready line within "
                                           "%ds:\n%s" % (READY_TIMEOUT_S, self.stderr()))
        # The pids of what it started, while they run.
        for name in SERVICES:
            with open(os.path.join(self.dev, name + ".pid")) as f:
                self.pids[name] = int(f.read().strip())
        with open(os.path.join(self.dev, "pg", "data", "postmaster.pid")) as f:
            self.pids["postgres"] = int(f.readline().strip())
        with open(os.path.join(self.dev, "redis", "redis.pid")) as f:
            self.pids["redis"] = int(f.read().strip())
        return self

    def _read(self):
        for raw in self.popen.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.out_lines.append(line)
            if line.startswith("ready: "):
                self.ready.set()

    def stdout(self):
        return "\n".join(self.out_lines)

    def stderr(self):
        with open(self.err_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def commands(self):
        """[(comment above it, command line)] of the printed curl commands."""
        out, comment = [], ""
        for line in self.out_lines:
            s = line.strip()
            if s.startswith("#"):
                comment = s
            elif line.startswith("    curl "):
                out.append((comment, s))
        return out

    def interrupt(self):
        os.killpg(self.popen.pid, signal.SIGINT)

    def kill(self):
        if self.popen and self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(60)
            except (OSError, subprocess.TimeoutExpired):
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)


@pytest.fixture(scope="module")
def run():
    r = DevRun()
    try:
        r.start()
        yield r
    finally:
        r.kill()
        if getattr(r, "_err", None):
            r._err.close()
    # Kept on failure for the logs; removed when every test passed.
    if r.popen and r.popen.returncode == 0 and not getattr(r, "failed", False):
        shutil.rmtree(r.dir, ignore_errors=True)


def sh(cmd, timeout=30):
    """Runs one printed command as a user pasting it into bash; returns its
    output parsed as JSON (every printed command answers JSON)."""
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (cmd, r.returncode, r.stderr)
    try:
        return json.loads(r.stdout)
    except ValueError:
        raise AssertionError("not JSON from %s: %r" % (cmd, r.stdout[:500]))


def test_banner(run):
    out = run.stdout()
    assert "Stripe        SIMULATED" in out, out
    assert "KOWLOON_STRIPE_SECRET_KEY=sk_test_" in out, out
    for name in ("gateway", "tenant", "flags", "migration", "billing", "workspace"):
        assert name in out.split("Kowloon is running:", 1)[1].splitlines()[0], out
    # Demo data made by the run (stderr) and the migrations applied.
    err = run.stderr()
    assert "created demo tenant acme" in err and "on plan pro" in err, err
    assert "created demo tenant globex" in err, err
    assert "applying the product's migrations" in err, err
    assert "created acme's demo projects" in err, err


def test_printed_commands(run):
    cmds = run.commands()
    urls = [re.search(r"(https?://\S+)$", c).group(1) for _, c in cmds]
    port = run.ports["HTTP"]
    acme, globex, apex = ("http://acme.localhost:%d" % port, "http://globex.localhost:%d" % port,
                          "http://localhost:%d" % port)
    reports = "/api/advanced-reports"
    want = [acme + "/api/v1/tenant", acme + "/api/v1/entitlements", acme + "/api/v1/projects",
            acme + "/api/v1/projects", acme + reports, globex + reports,
            "http://127.0.0.1:%d/_standin/deliver" % run.ports["STRIPE"], globex + reports,
            apex + "/admin/v1/tenants", apex + "/admin/v1/tenants"]
    assert urls == want, "\n".join(c for _, c in cmds)
    seen_403 = False
    for comment, cmd in cmds:
        url = re.search(r"(https?://\S+)$", cmd).group(1)
        if url == acme + "/api/v1/tenant":
            j = sh(cmd)
            assert (j["subdomain"], j["plan"], j["status"]) == ("acme", "pro", "active"), j
        elif url == acme + "/api/v1/entitlements":
            j = sh(cmd)
            assert j["plan"] == "pro" and "advanced_reports" in j["features"], j
        elif url == acme + "/api/v1/projects" and " POST " not in cmd:
            j = sh(cmd)
            names = [p["name"] for p in j["projects"]]
            assert "Website relaunch" in names and "Mobile app" in names, j
        elif url == acme + "/api/v1/projects":
            j = sh(cmd)
            assert j["name"] == "Q3 roadmap" and j["id"], j
        elif url == acme + reports:
            j = sh(cmd)
            by_name = {p["name"]: p for p in j["projects"]}
            assert by_name["Website relaunch"]["tasks"] == "3", j
            assert by_name["Website relaunch"]["done"] == "2", j
            assert "Q3 roadmap" in by_name, j
        elif url == globex + reports and not seen_403:
            seen_403 = True
            j = sh(cmd)
            assert j["error"]["code"] == "PERMISSION_DENIED", j
            assert j["error"]["feature"] == "advanced_reports", j
            assert j["error"]["upgrade_url"] == "http://globex.localhost/upgrade", j
        elif "/_standin/deliver" in url:
            assert "simulated Stripe webhook" in "\n".join(run.out_lines), run.stdout()
            j = sh(cmd)
            assert j["status"] == 200 and json.loads(j["body"]) == {"received": True}, j
            assert j["id"].startswith("evt_"), j
        elif url == globex + reports:
            # After the webhook: globex is on pro (billing -> tenant service ->
            # change event -> gateway), within a second or so.
            deadline = time.monotonic() + 10
            while True:
                j = sh(cmd)
                if "error" not in j:
                    break
                assert time.monotonic() < deadline, ("globex still refused", j)
                time.sleep(0.2)
            assert j["projects"] == [] and j["tasks"] == "0", j
        elif url == apex + "/admin/v1/tenants" and " POST " not in cmd:
            j = sh(cmd)
            subs = {t["subdomain"]: t for t in j["tenants"]}
            assert subs["acme"]["plan"] == "pro", j
            assert (subs["globex"]["plan"], subs["globex"]["status"]) == ("pro", "active"), j
        elif url == apex + "/admin/v1/tenants":
            j = sh(cmd)
            assert j["subdomain"] == "initech" and j["id"], j
        else:
            raise AssertionError("unexpected command %s" % cmd)
    # The admin token and keys printed are the ones kept in the dev dir.
    with open(os.path.join(run.dev, "admin-token")) as f:
        assert f.read().strip() in run.stdout()
    assert oct(os.stat(os.path.join(run.dev, "admin-token")).st_mode & 0o777) == "0o600"


def test_printed_cli(run):
    """The printed operator CLI line works as printed: var/dev/kowloonctl
    reaches this stack's services (it lists the demo tenants, shows the
    migration run) and its owner URL (a backup of a schema tenant
    verifies)."""
    line = next((l for l in run.out_lines if "Operator CLI" in l), None)
    assert line, run.stdout()
    ctl = os.path.join(run.dev, "kowloonctl")
    assert (ctl + " tenants list") in line, line
    assert os.access(ctl, os.X_OK)
    r = subprocess.run([ctl, "--json", "tenants", "list"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    subs = {t["subdomain"] for t in json.loads(r.stdout)}
    assert {"acme", "globex"} <= subs, r.stdout
    r = subprocess.run([ctl, "migrate", "status"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "finished" in r.stdout, (r.stdout, r.stderr)
    r = subprocess.run([ctl, "--json", "tenants", "create", "devcli", "--name", "Dev CLI",
                        "--isolation", "schema"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.stdout, r.stderr)
    tid = json.loads(r.stdout)["id"]
    dump = os.path.join(run.dir, "devcli.dump")
    for args in (["tenant", "backup", tid, dump], ["tenant", "verify", tid, dump]):
        r = subprocess.run([ctl] + args, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (args, r.stdout, r.stderr)


def test_roles(run):
    """The workspace service serves as the application role, which owns
    nothing and has neither SUPERUSER nor BYPASSRLS."""
    url = "postgresql://postgres@127.0.0.1:%d/kowloon" % run.ports["PG"]
    out = harness.psql("SELECT rolname, rolsuper, rolbypassrls FROM pg_roles WHERE rolname IN "
                       "('kowloon', 'kowloon_app') ORDER BY 1", url=url).split()
    assert out == ["kowloon|f|f", "kowloon_app|f|f"], out
    out = harness.psql("SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class c JOIN "
                       "pg_namespace n ON n.oid = c.relnamespace WHERE nspname = 'workspace' "
                       "AND relkind = 'r'", url=url).split()
    assert out == ["kowloon"], out
    out = harness.psql("SELECT DISTINCT usename FROM pg_stat_activity WHERE application_name "
                       "<> 'psql' AND usename LIKE 'kowloon%'", url=url).split()
    assert "kowloon_app" in out, out


def test_ctrl_c_stops_everything(run):
    pids = dict(run.pids)
    run.interrupt()
    try:
        rc = run.popen.wait(90)
    except subprocess.TimeoutExpired:
        run.failed = True
        raise AssertionError("deploy/run.sh still runs 90 s after SIGINT:\n" + run.stderr())
    err = run.stderr()
    if rc != 0:
        run.failed = True
    assert rc == 0, err
    for name in SERVICES:
        assert "kowloon: %s stopped" % name in err, err
    assert "exited with status" not in err, err
    assert "Redis stopped" in err and "PostgreSQL stopped" in err, err
    for name, pid in pids.items():
        alive = os.path.exists("/proc/%d" % pid)
        if alive:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode()
            # The pid may have been reused by now; it is ours only if it
            # names our folder, our Redis port, a Kowloon binary or the stand-in.
            ours = (run.dev in cmdline or "kowloon-" in cmdline or "standin.py" in cmdline
                    or "127.0.0.1:%d" % run.ports["REDIS"] in cmdline)
            assert not ours, (name, pid, cmdline)
    for k, port in run.ports.items():
        assert not port_open(port), "port %d (%s) still open after Ctrl-C" % (port, k)
    # No process anywhere still names the run's folder (postgres -D ...).
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open("/proc/%s/cmdline" % p, "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                continue
            assert run.dev not in cmdline, (p, cmdline)
    # Every process log of the run is free of sanitizer reports.
    for name in SERVICES:
        with open(os.path.join(run.dev, name + ".log"), "rb") as f:
            text = f.read().decode("utf-8", "replace")
        assert not harness.sanitizer_report(text), (name, text[-3000:])
