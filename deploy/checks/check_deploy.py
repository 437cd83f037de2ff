#!/usr/bin/env python3
"""Checks the shipped deployment files against the code and the tools.

    deploy/checks/check_deploy.py --build-dir build [compose|systemd|stages|nginx|all]

  compose  docker-compose config validates docker-compose.yml (with
           .env.example, every profile); every Kowloon binary it runs is an
           add_executable() of the CMake build and built in --build-dir;
           every KOWLOON_* variable it or .env.example sets is in the
           settings table (kowloon-config --names), and each Kowloon
           service's environment passes `kowloon-config --check <process>`.
  systemd  every unit in deploy/systemd/ passes `systemd-analyze verify`
           (with ExecStart pointed at the built binary, since nothing is
           installed here) and `systemd-analyze security --offline` scores at
           most 2.0; the binaries they run exist as above; they read only
           /etc/kowloon/*.env.
  stages   every env file of deploy/stages/ is KEY=VALUE lines of known
           KOWLOON_* variables; each host's files, installed by
           deploy/stages/install.sh into a temporary folder, give every
           instance (per the units' EnvironmentFile= lines) a configuration
           `kowloon-config --check` accepts, while the gateway's files as
           shipped (admin token placeholder) are refused; every host runs
           the gateway and every service (SERVICES); each KOWLOON_<SVC>_ENDPOINTS
           written inline lists exactly the host's <svc> binds (lists kept in
           @files, between hosts, are the operator's), and a non-loopback
           bind comes with Curve keys; the gateway's KOWLOON_HTTP_THREADS is
           above nginx's keepalive pool (GATEWAY_THREADS_RULE); no file is
           left unread.
  nginx    `nginx -t` on deploy/nginx/kowloon.conf with each upstream file,
           in a private prefix with a self-signed wildcard certificate.

Exit status 0 when everything holds; otherwise every problem is printed.
Needs: docker-compose (Debian's package validates without a Docker engine),
python3-yaml, systemd (systemd-analyze), nginx-light, openssl.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ETC = "/etc/kowloon/"
PLACEHOLDER = "CHANGE_ME"
# Where the units expect the binaries (docs/operations/install.md).
UNIT_BIN_DIR = "/usr/local/bin/"
# Every Kowloon service a stage host runs besides the gateway.
SERVICES = ("tenant", "flags", "workspace", "billing", "migration")
# civetweb holds one gateway thread per keep-alive connection: a gateway
# needs more threads than nginx may keep idle connections to it, which is
# `keepalive` (of the upstream file the stage uses) per nginx worker
# process, plus room for new connections (docs/operations/logs-metrics.md).
NGINX_WORKERS = 4
THREADS_HEADROOM = 32
STAGE_UPSTREAM = {"launch": "upstream-single.conf", "early-growth": "upstream-single.conf",
                  "scaling/app": "upstream-scaling.conf", "growth/app": "upstream-scaling.conf"}


class Checker:
    def __init__(self, build_dir, root=ROOT):
        self.root = root
        self.build_dir = os.path.abspath(build_dir)
        self.problems = []
        self._names = None

    # ----------------------------------------------------------- helpers
    def fail(self, where, what):
        self.problems.append("%s: %s" % (os.path.relpath(where, self.root)
                                         if os.path.isabs(where) else where, what))

    def cmake_binaries(self):
        """Names given to add_executable() in the repository's CMakeLists."""
        names = set()
        for d, dirs, files in os.walk(self.root):
            dirs[:] = [x for x in dirs if not (x.startswith("build") or x.startswith(".")
                                               or x in ("var", "node_modules"))]
            if "CMakeLists.txt" in files:
                with open(os.path.join(d, "CMakeLists.txt")) as f:
                    text = re.sub(r"#.*", "", f.read())
                names.update(re.findall(r"add_executable\s*\(\s*([A-Za-z0-9_.+-]+)", text))
        return names

    def built(self, name):
        """Path of the executable `name` in the build directory, or None."""
        for d, dirs, files in os.walk(self.build_dir):
            dirs[:] = [x for x in dirs if x != "CMakeFiles"]
            if name in files:
                p = os.path.join(d, name)
                if os.access(p, os.X_OK):
                    return p
        return None

    def check_binary(self, where, name):
        """A Kowloon binary named by a deploy file must be built by CMake."""
        if name not in self.cmake_binaries():
            self.fail(where, "runs %s, which no CMakeLists.txt builds (add_executable)" % name)
            return None
        path = self.built(name)
        if not path:
            self.fail(where, "runs %s, which is not in the build directory %s (build it first)"
                      % (name, self.build_dir))
        return path

    def kowloon_config(self):
        return self.built("kowloon-config")

    def names(self):
        if self._names is None:
            tool = self.kowloon_config()
            if not tool:
                raise SystemExit("kowloon-config is not built in %s" % self.build_dir)
            out = subprocess.run([tool, "--names"], capture_output=True, text=True,
                                 check=True, env=self.tool_env({})).stdout
            self._names = set(out.split())
        return self._names

    @staticmethod
    def tool_env(vars_):
        e = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
            if k in os.environ:
                e[k] = os.environ[k]
        e.update(vars_)
        return e

    def config_check(self, process, vars_):
        """(ok, message) of `kowloon-config --check process` under vars_."""
        r = subprocess.run([self.kowloon_config(), "--check", process], capture_output=True,
                           text=True, env=self.tool_env(vars_), timeout=60)
        if r.returncode == 2:
            return False, "kowloon-config --check does not know the process %r" % process
        return r.returncode == 0, (r.stderr or r.stdout).strip()

    def check_names(self, where, keys):
        for k in keys:
            if k.startswith("KOWLOON_") and k not in self.names():
                self.fail(where, "sets %s, which is not in lib/kl_config_table.h" % k)

    def upstream_keepalive(self, name):
        """keepalive N of deploy/nginx/<name>, or None."""
        path = os.path.join(self.root, "deploy", "nginx", name)
        try:
            m = re.search(r"^\s*keepalive\s+(\d+)\s*;", open(path).read(), re.M)
        except OSError:
            return None
        return int(m.group(1)) if m else None

    def check_threads(self, where, threads, upstream):
        keepalive = self.upstream_keepalive(upstream)
        if keepalive is None:
            self.fail(where, "deploy/nginx/%s has no keepalive line" % upstream)
            return
        need = keepalive * NGINX_WORKERS + THREADS_HEADROOM
        try:
            n = int(threads)
        except (TypeError, ValueError):
            n = 32  # the table's default
        if n < need:
            self.fail(where, "KOWLOON_HTTP_THREADS=%d is below nginx's keepalive pool: %s keeps "
                             "up to %d idle connections per worker x %d workers, + %d: want at "
                             "least %d" % (n, upstream, keepalive, NGINX_WORKERS,
                                           THREADS_HEADROOM, need))

    @staticmethod
    def process_of(binary):
        return binary[len("kowloon-"):] if binary.startswith("kowloon-") else None

    # ------------------------------------------------------------ env files
    def parse_env(self, path):
        """{key: value} of a systemd EnvironmentFile, strictly KEY=VALUE."""
        out = {}
        with open(path) as f:
            for n, line in enumerate(f, 1):
                s = line.rstrip("\n")
                if not s.strip() or s.lstrip().startswith("#"):
                    continue
                m = re.fullmatch(r"([A-Z][A-Z0-9_]*)=(\S*)", s)
                if not m:
                    self.fail(path, "line %d is not KEY=VALUE without spaces or quotes: %r"
                              % (n, s))
                    continue
                k, v = m.groups()
                if v[:1] in ("'", '"'):
                    self.fail(path, "line %d: %s is quoted; write the bare value" % (n, k))
                if k in out:
                    self.fail(path, "line %d sets %s a second time" % (n, k))
                out[k] = v
        self.check_names(path, out)
        return out

    # -------------------------------------------------------------- compose
    def check_compose(self):
        import yaml  # Debian's python3-yaml (docker-compose depends on it)
        compose = os.path.join(self.root, "docker-compose.yml")
        example = os.path.join(self.root, ".env.example")
        if not shutil.which("docker-compose"):
            self.fail(compose, "docker-compose is not installed (Debian package docker-compose)")
            return
        r = subprocess.run(["docker-compose", "--env-file", example, "--profile", "tls",
                            "-f", compose, "config"], capture_output=True, text=True,
                           cwd=self.root, timeout=120)
        if r.returncode != 0:
            self.fail(compose, "docker-compose config failed: %s" % r.stderr.strip())
            return
        cfg = yaml.safe_load(r.stdout)
        self.check_names(example, self.parse_env(example))
        services = cfg.get("services", {})
        kowloon_services = 0
        binds, endpoints = set(), set()
        for name, svc in services.items():
            where = "docker-compose.yml services.%s" % name
            env = svc.get("environment") or {}
            if isinstance(env, list):
                env = dict(x.split("=", 1) for x in env)
            env = {k: "" if v is None else str(v) for k, v in env.items()}
            self.check_names(where, env)
            cmd = svc.get("command") or []
            if isinstance(cmd, str):
                cmd = cmd.split()
            if not cmd or not cmd[0].startswith("kowloon-"):
                continue
            kowloon_services += 1
            if svc.get("image") != "kowloon:dev" or "build" not in svc:
                self.fail(where, "a Kowloon binary runs from the image built by Dockerfile "
                                 "(image kowloon:dev, build: .)")
            if not self.check_binary(where, cmd[0]):
                continue
            if cmd[0] == "kowloon-config":
                continue
            others = sorted(k for k in env if not k.startswith("KOWLOON_"))
            if others:
                self.fail(where, "sets variables Kowloon does not read: %s" % ", ".join(others))
            ok, msg = self.config_check(self.process_of(cmd[0]), env)
            if not ok:
                self.fail(where, "kowloon-config --check %s refuses its environment: %s"
                          % (self.process_of(cmd[0]), msg))
            if cmd[0] == "kowloon-gateway":
                self.check_threads(where, env.get("KOWLOON_HTTP_THREADS"),
                                   "upstream-compose.conf")
            if "KOWLOON_TENANT_BIND" in env:
                binds.add(env["KOWLOON_TENANT_BIND"])
            if "KOWLOON_TENANT_ENDPOINTS" in env:
                endpoints.update(x.strip() for x in env["KOWLOON_TENANT_ENDPOINTS"].split(",")
                                 if x.strip())
        if kowloon_services == 0:
            self.fail(compose, "runs no Kowloon binary")
        if binds and endpoints and binds != endpoints:
            self.fail(compose, "the gateway's KOWLOON_TENANT_ENDPOINTS %s do not match the "
                               "tenant services' KOWLOON_TENANT_BIND %s"
                      % (sorted(endpoints), sorted(binds)))
        # Every Kowloon binary the build makes is available to compose: the
        # image installs every kowloon-* executable, so nothing to list here.

    # -------------------------------------------------------------- systemd
    def units(self):
        d = os.path.join(self.root, "deploy", "systemd")
        return sorted(os.path.join(d, f) for f in os.listdir(d)
                      if f.endswith((".service", ".target", ".timer", ".socket")))

    @staticmethod
    def unit_values(path, key):
        vals = []
        with open(path) as f:
            for line in f:
                m = re.match(r"\s*%s\s*=\s*(.*?)\s*$" % re.escape(key), line)
                if m:
                    vals.append(m.group(1))
        return vals

    def unit_binary(self, path):
        execs = self.unit_values(path, "ExecStart")
        if not execs:
            return None
        return os.path.basename(execs[-1].lstrip("-@:+!").split()[0])

    def check_systemd(self):
        tmp = tempfile.mkdtemp(prefix="kl-systemd-check-")
        try:
            copies = []
            for unit in self.units():
                text = open(unit).read()
                if unit.endswith(".service"):
                    execs = self.unit_values(unit, "ExecStart")
                    if len(execs) != 1:
                        self.fail(unit, "wants exactly one ExecStart=, has %d" % len(execs))
                        continue
                    exe = execs[0].split()[0]
                    if not exe.startswith(UNIT_BIN_DIR + "kowloon-"):
                        self.fail(unit, "ExecStart= runs %s, not %skowloon-*" % (exe, UNIT_BIN_DIR))
                        continue
                    built = self.check_binary(unit, os.path.basename(exe))
                    for ef in self.unit_values(unit, "EnvironmentFile"):
                        if not re.fullmatch(re.escape(ETC) + r"[a-z0-9%-]+\.env", ef):
                            self.fail(unit, "EnvironmentFile=%s is not an %s*.env file" % (ef, ETC))
                    for env_line in self.unit_values(unit, "Environment"):
                        self.check_names(unit, re.findall(r"([A-Z][A-Z0-9_]*)=", env_line))
                    for key, want in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                                      ("Restart", "on-failure")):
                        if want not in self.unit_values(unit, key):
                            self.fail(unit, "wants %s=%s" % (key, want))
                    if not (self.unit_values(unit, "DynamicUser") == ["yes"]
                            or self.unit_values(unit, "User")):
                        self.fail(unit, "wants DynamicUser=yes or a dedicated User=")
                    if "@" not in os.path.basename(unit):
                        self.fail(unit, "a Kowloon service unit is a template (name@.service)")
                    if built:
                        text = text.replace(exe, built)
                out = os.path.join(tmp, os.path.basename(unit))
                with open(out, "w") as f:
                    f.write(text)
                copies.append(out)
            if not shutil.which("systemd-analyze"):
                self.fail("deploy/systemd", "systemd-analyze is not installed (Debian package systemd)")
                return
            for c in copies:
                r = subprocess.run(["systemd-analyze", "verify", c], capture_output=True,
                                   text=True, timeout=120, cwd=tmp)
                msg = (r.stdout + r.stderr).strip()
                if r.returncode != 0 or msg:
                    self.fail("deploy/systemd/" + os.path.basename(c),
                              "systemd-analyze verify: %s" % (msg or "exit %d" % r.returncode))
                if c.endswith(".service"):
                    r = subprocess.run(["systemd-analyze", "security", "--offline=yes",
                                        "--threshold=20", "--no-pager", c],
                                       capture_output=True, text=True, timeout=120, cwd=tmp)
                    if r.returncode != 0:
                        m = re.search(r"Overall exposure level for \S+: (.*)", r.stdout)
                        self.fail("deploy/systemd/" + os.path.basename(c),
                                  "systemd-analyze security: exposure %s, want at most 2.0"
                                  % (m.group(1) if m else r.stderr.strip()))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # --------------------------------------------------------------- stages
    def stage_hosts(self):
        """Every folder of deploy/stages holding a common.env: one host role."""
        base = os.path.join(self.root, "deploy", "stages")
        hosts = []
        for d, dirs, files in os.walk(base):
            dirs.sort()
            if "common.env" in files:
                hosts.append(os.path.relpath(d, base))
        return sorted(hosts)

    def unit_env_files(self):
        """[(unit path, binary, [EnvironmentFile names relative to /etc/kowloon])]"""
        out = []
        for unit in self.units():
            if not unit.endswith("@.service"):
                continue
            files = [ef[len(ETC):] for ef in self.unit_values(unit, "EnvironmentFile")
                     if ef.startswith(ETC)]
            out.append((unit, self.unit_binary(unit), files))
        return out

    def instances(self, folder, files):
        """Instance names %i for which every EnvironmentFile exists in folder."""
        pattern = [f for f in files if "%i" in f]
        if not pattern:
            return []
        rx = re.compile("^" + re.escape(pattern[0]).replace("%i", "([A-Za-z0-9_.-]+)") + "$")
        found = sorted(m.group(1) for m in (rx.match(f) for f in os.listdir(folder)) if m)
        return found

    def instance_env(self, folder, files, inst):
        env = {}
        for f in files:
            env.update(self.parse_env(os.path.join(folder, f.replace("%i", inst))))
        return env

    def check_stages(self):
        base = os.path.join(self.root, "deploy", "stages")
        install = os.path.join(base, "install.sh")
        hosts = self.stage_hosts()
        for want in ("launch", "early-growth", "scaling/app", "growth/app"):
            if want not in hosts:
                self.fail(base, "has no stage %s (no %s/common.env)" % (want, want))
        for d, _, files in os.walk(base):
            for f in files:
                if f.endswith(".env"):
                    self.parse_env(os.path.join(d, f))
        units = self.unit_env_files()
        for host in hosts:
            shipped = os.path.join(base, host)
            tmp = tempfile.mkdtemp(prefix="kl-stage-check-")
            try:
                etc = os.path.join(tmp, "etc-kowloon")
                r = subprocess.run(["bash", install, host, "--etc", etc,
                                    "--stripe-key", "sk_test_check_deploy",
                                    "--stripe-webhook-secret", "whsec_check_deploy"],
                                   capture_output=True, text=True, timeout=60)
                if r.returncode != 0:
                    self.fail(shipped, "deploy/stages/install.sh %s failed: %s"
                              % (host, r.stderr.strip()))
                    continue
                used = set()
                binds = {svc: {} for svc in SERVICES}
                endpoints = {svc: [] for svc in SERVICES}
                listens = {}
                for unit, binary, files in units:
                    proc = self.process_of(binary or "")
                    insts = self.instances(etc, files)
                    if not insts:
                        continue
                    for inst in insts:
                        names = [f.replace("%i", inst) for f in files]
                        missing = [n for n in names if not os.path.exists(os.path.join(etc, n))]
                        if missing:
                            self.fail(shipped, "%s instance %s lacks %s"
                                      % (os.path.basename(unit), inst, ", ".join(missing)))
                            continue
                        used.update(names)
                        env = self.instance_env(etc, files, inst)
                        ok, msg = self.config_check(proc, env)
                        if not ok:
                            self.fail(shipped, "%s@%s: kowloon-config --check %s refuses the "
                                               "installed files: %s" % (binary, inst, proc, msg))
                        if proc == "gateway":
                            # No secret ships: as shipped, the admin token is
                            # a placeholder the gateway refuses.
                            raw = self.instance_env(shipped, files, inst)
                            ok, _ = self.config_check(proc, raw)
                            if ok:
                                self.fail(shipped, "%s@%s starts with the files as shipped; "
                                                   "KOWLOON_ADMIN_TOKEN must be the refused "
                                                   "placeholder %s" % (binary, inst, PLACEHOLDER))
                        if proc in SERVICES:
                            b = env.get("KOWLOON_%s_BIND" % proc.upper(), "")
                            if b in binds[proc]:
                                self.fail(shipped, "%s instances %s and %s both bind %s"
                                          % (proc, binds[proc][b], inst, b))
                            binds[proc][b] = inst
                            loopback = re.match(r"tcp://(127\.|localhost:|\[::1\])", b)
                            if b and not loopback and not env.get("KOWLOON_CURVE_SECRET_KEY_FILE"):
                                self.fail(shipped, "%s@%s binds %s without Curve keys "
                                                   "(KOWLOON_CURVE_SECRET_KEY_FILE)"
                                          % (binary, inst, b))
                        for svc in SERVICES:
                            items = [x.strip() for x in
                                     env.get("KOWLOON_%s_ENDPOINTS" % svc.upper(), "").split(",")
                                     if x.strip()]
                            if items and not any(x.startswith("@") for x in items):
                                endpoints[svc].append(set(items))
                        if proc == "gateway":
                            self.check_threads("%s: %s@%s" % (os.path.relpath(shipped, self.root),
                                                              binary, inst),
                                               env.get("KOWLOON_HTTP_THREADS"),
                                               STAGE_UPSTREAM.get(host, "upstream-single.conf"))
                        if "KOWLOON_HTTP_LISTEN" in env:
                            h = env["KOWLOON_HTTP_LISTEN"]
                            if h in listens:
                                self.fail(shipped, "gateway instances %s and %s both listen on %s"
                                          % (listens[h], inst, h))
                            listens[h] = inst
                for svc in SERVICES:
                    for e in endpoints[svc]:
                        if e != set(binds[svc]):
                            self.fail(shipped, "KOWLOON_%s_ENDPOINTS %s is not the set of this "
                                               "host's %s binds %s"
                                      % (svc.upper(), sorted(e), svc, sorted(binds[svc])))
                unused = sorted(set(f for f in os.listdir(etc) if f.endswith(".env")) - used)
                if unused:
                    self.fail(shipped, "files no unit reads: %s" % ", ".join(unused))
                if not listens:
                    self.fail(shipped, "starts no gateway")
                for svc in SERVICES:
                    if not binds[svc]:
                        self.fail(shipped, "starts no %s service" % svc)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    # ---------------------------------------------------------------- nginx
    def check_nginx(self):
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(nginx):
            self.fail("deploy/nginx", "nginx is not installed (Debian package nginx-light)")
            return
        d = os.path.join(self.root, "deploy", "nginx")
        site = open(os.path.join(d, "kowloon.conf")).read()
        for upstream in ("upstream-single.conf", "upstream-scaling.conf"):
            tmp = tempfile.mkdtemp(prefix="kl-nginx-check-")
            try:
                certs = os.path.join(tmp, "live")
                subprocess.run(["bash", os.path.join(d, "make-self-signed.sh"), certs,
                                "yoursaas.com"], check=True, capture_output=True, timeout=60)
                conf = site.replace("/etc/letsencrypt/live/yoursaas.com", certs)
                if conf == site:
                    self.fail("deploy/nginx/kowloon.conf", "does not name "
                              "/etc/letsencrypt/live/yoursaas.com")
                with open(os.path.join(tmp, "kowloon.conf"), "w") as f:
                    f.write(conf)
                shutil.copy(os.path.join(d, upstream), os.path.join(tmp, "upstream.conf"))
                main = os.path.join(tmp, "nginx.conf")
                with open(main, "w") as f:
                    f.write(debian_like_main(tmp))
                r = subprocess.run([nginx, "-t", "-p", tmp, "-c", main,
                                    "-g", "error_log %s/error.log;" % tmp],
                                   capture_output=True, text=True, timeout=60)
                if r.returncode != 0:
                    self.fail("deploy/nginx/kowloon.conf + " + upstream,
                              "nginx -t: %s" % r.stderr.strip())
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    def run(self, what):
        steps = {"compose": self.check_compose, "systemd": self.check_systemd,
                 "stages": self.check_stages, "nginx": self.check_nginx}
        for w in (steps if what == "all" else [what]):
            steps[w]()
        return self.problems


def debian_like_main(prefix):
    """The http{} settings of Debian 12's /etc/nginx/nginx.conf, with every
    path in prefix; conf.d (upstream) then sites-enabled (kowloon.conf)."""
    return """
pid {p}/nginx.pid;
worker_processes 1;
events {{ worker_connections 256; }}
http {{
    sendfile on;
    tcp_nopush on;
    types_hash_max_size 2048;
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    ssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3;
    ssl_prefer_server_ciphers on;
    access_log {p}/access.log;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    gzip on;
    include {p}/upstream.conf;
    include {p}/kowloon.conf;
}}
""".format(p=prefix)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build-dir", required=True, help="CMake build directory with the binaries")
    ap.add_argument("what", nargs="?", default="all",
                    choices=["compose", "systemd", "stages", "nginx", "all"])
    args = ap.parse_args()
    problems = Checker(args.build_dir).run(args.what)
    for p in problems:
        print("FAIL " + p)
    print("%s: %d problem(s)" % (args.what, len(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
