"""Runs Debian's nginx privately with the shipped Kowloon configuration, for
the integration tests (integration-tests/test_nginx_tls.py and
test_stage_launch.py). Never touches the system nginx: its own prefix,
pid file and logs in a temporary folder, loopback ports chosen at run time,
`daemon off;` and stopped by its pid.

The shipped deploy/nginx/kowloon.conf is used as it is, except for what a
test on a shared machine must change, each asserted to have happened:
  * `listen 80` / `listen 443` -> 127.0.0.1:<free port> (IPv6 lines dropped),
  * /etc/letsencrypt/live/yoursaas.com -> a self-signed wildcard certificate
    made by deploy/nginx/make-self-signed.sh,
  * yoursaas.com -> another domain, when asked.
The upstream file (upstream-single.conf or upstream-scaling.conf) gets its
`server` lines pointed at the given loopback ports.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NGINX_DIR = os.path.join(ROOT, "deploy", "nginx")


sys.path.insert(0, os.path.join(ROOT, "deploy", "local"))
from free_port import free_port  # noqa: E402,F401  (below the ephemeral range)


def _sub(pattern, repl, text, want, what, flags=re.M):
    out, n = re.subn(pattern, repl, text, flags=flags)
    if n != want:
        raise AssertionError("expected %d %s in the shipped nginx config, found %d"
                             % (want, what, n))
    return out


class Nginx:
    def __init__(self, upstream_ports, upstream_file="upstream-single.conf",
                 domain="yoursaas.com", workdir=None):
        self.dir = workdir or tempfile.mkdtemp(prefix="kowloon-nginx-")
        os.makedirs(self.dir, exist_ok=True)
        self.domain = domain
        self.http_port = free_port()
        self.https_port = free_port()
        self.cert_dir = os.path.join(self.dir, "live")
        self.cert = os.path.join(self.cert_dir, "fullchain.pem")
        self.upstream_ports = list(upstream_ports)
        self.upstream_file = upstream_file
        self.proc = None
        self._log = None

    # ---------------------------------------------------------- configuration
    def site_conf(self):
        text = open(os.path.join(NGINX_DIR, "kowloon.conf")).read()
        text = _sub(r"^\s*listen \[::\]:(80|443)\b.*\n", "", text, 4, "IPv6 listen lines")
        text = _sub(r"(^\s*listen )80\b", r"\g<1>127.0.0.1:%d" % self.http_port, text, 2,
                    "'listen 80' lines")
        text = _sub(r"(^\s*listen )443\b", r"\g<1>127.0.0.1:%d" % self.https_port, text, 2,
                    "'listen 443' lines")
        text = _sub(re.escape("/etc/letsencrypt/live/yoursaas.com"), self.cert_dir, text, 2,
                    "certificate paths")
        if self.domain != "yoursaas.com":
            text = text.replace("yoursaas.com", self.domain)
        return text

    def upstream_conf(self):
        text = open(os.path.join(NGINX_DIR, self.upstream_file)).read()
        servers = re.findall(r"^\s*server\s+\S+", text, flags=re.M)
        if len(servers) < len(self.upstream_ports) and len(servers) != 1:
            raise AssertionError("%s has %d server lines, the test has %d gateways"
                                 % (self.upstream_file, len(servers), len(self.upstream_ports)))
        lines = text.split("\n")
        out, done = [], False
        for ln in lines:
            m = re.match(r"^(\s*)server\s+\S+(.*)$", ln)
            if m:
                if not done:
                    for p in self.upstream_ports:
                        out.append("%sserver 127.0.0.1:%d%s" % (m.group(1), p, m.group(2)))
                    done = True
                continue
            out.append(ln)
        return "\n".join(out)

    def main_conf(self):
        d = self.dir
        user = "user root;\n" if os.geteuid() == 0 else ""
        return """{user}pid {d}/nginx.pid;
error_log {d}/error.log info;
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
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    include {d}/conf.d/*.conf;
    include {d}/sites-enabled/*;
}}
""".format(user=user, d=d)

    def write(self):
        subprocess.run(["bash", os.path.join(NGINX_DIR, "make-self-signed.sh"), self.cert_dir,
                        self.domain], check=True, capture_output=True, timeout=60)
        for sub in ("conf.d", "sites-enabled"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        with open(os.path.join(self.dir, "conf.d", "kowloon-upstream.conf"), "w") as f:
            f.write(self.upstream_conf())
        with open(os.path.join(self.dir, "sites-enabled", "kowloon.conf"), "w") as f:
            f.write(self.site_conf())
        with open(os.path.join(self.dir, "nginx.conf"), "w") as f:
            f.write(self.main_conf())

    # -------------------------------------------------------------- process
    def nginx_bin(self):
        for p in ("/usr/sbin/nginx", "/usr/bin/nginx"):
            if os.access(p, os.X_OK):
                return p
        raise AssertionError("nginx is not installed (Debian package nginx-light)")

    def test_config(self):
        r = subprocess.run([self.nginx_bin(), "-t", "-p", self.dir, "-c",
                            os.path.join(self.dir, "nginx.conf")],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise AssertionError("nginx -t failed: %s" % r.stderr)
        return r.stderr

    def start(self):
        self.write()
        self.test_config()
        self._log = open(os.path.join(self.dir, "nginx.out"), "ab")
        self.proc = subprocess.Popen([self.nginx_bin(), "-p", self.dir, "-c",
                                      os.path.join(self.dir, "nginx.conf"),
                                      "-g", "daemon off;"],
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("nginx exited at start:\n%s" % self.logs())
            if all(_listening(p) for p in (self.http_port, self.https_port)):
                return self
            time.sleep(0.05)
        raise AssertionError("nginx did not listen within 20 s:\n%s" % self.logs())

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful shutdown
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log:
            self._log.close()
            self._log = None

    def logs(self):
        out = []
        for name in ("nginx.out", "error.log"):
            try:
                with open(os.path.join(self.dir, name), "rb") as f:
                    out.append("--- %s\n%s" % (name, f.read().decode("utf-8", "replace")[-4000:]))
            except OSError:
                pass
        return "\n".join(out)

    # ---------------------------------------------------------------- curl
    def curl(self, host, path="/", port=None, scheme="https", headers=(), method=None,
             data=None, extra=()):
        """curl --resolve host:port:127.0.0.1 with the test CA. Returns
        (status, {header lowercase: [values]}, body bytes)."""
        port = port or (self.https_port if scheme == "https" else self.http_port)
        hfile = os.path.join(self.dir, "curl-headers.txt")
        bfile = os.path.join(self.dir, "curl-body.bin")
        cmd = ["curl", "-sS", "--max-time", "20", "--resolve", "%s:%d:127.0.0.1" % (host, port),
               "--cacert", self.cert, "-D", hfile, "-o", bfile, "-w", "%{http_code}"]
        if method:
            cmd += ["-X", method]
        for h in headers:
            cmd += ["-H", h]
        if data is not None:
            cmd += ["--data-binary", "@-"]
        cmd += list(extra)
        cmd.append("%s://%s:%d%s" % (scheme, host, port, path))
        r = subprocess.run(cmd, input=data if isinstance(data, bytes) else
                           (data.encode() if data is not None else None),
                           capture_output=True, timeout=30)
        if r.returncode != 0:
            return 0, {"curl-error": [r.stderr.decode("utf-8", "replace").strip()]}, b""
        hdrs = {}
        with open(hfile, "rb") as f:
            for ln in f.read().decode("latin-1").split("\r\n")[1:]:
                k, sep, v = ln.partition(":")
                if sep:
                    hdrs.setdefault(k.strip().lower(), []).append(v.strip())
        with open(bfile, "rb") as f:
            body = f.read()
        return int(r.stdout.decode() or 0), hdrs, body


def _listening(port):
    s = socket.socket()
    s.settimeout(0.2)
    try:
        s.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()
