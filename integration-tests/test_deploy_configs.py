"""The shipped deployment files hold against the code and the real tools
(deploy/checks/check_deploy.py): docker-compose config and the
binary/variable cross-check, systemd-analyze verify (and security), the
stage env files through kowloon-config --check, nginx -t. Then the same
checks are shown to catch what they are for, on copies of the files with
one mistake each."""

import os
import pathlib
import shutil
import sys
import tempfile

import pytest

import harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "deploy", "checks"))
import check_deploy  # noqa: E402


def checker(root=ROOT):
    c = check_deploy.Checker(harness.env("KLTEST_BUILD_DIR"), root=root)
    if root != ROOT:
        # The copy holds only the deploy files; binaries come from the real tree.
        real = check_deploy.Checker(harness.env("KLTEST_BUILD_DIR"))
        c.cmake_binaries = real.cmake_binaries
    return c


@pytest.mark.parametrize("what", ["compose", "systemd", "stages", "nginx"])
def test_shipped_files(what):
    problems = checker().run(what)
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------ mutants

@pytest.fixture
def copy():
    """A copy of the deploy files in a scratch folder (the checks' root)."""
    scratch = tempfile.mkdtemp(prefix="kowloon-deploy-copy-")
    root = pathlib.Path(scratch) / "repo"
    root.mkdir()
    for f in ("docker-compose.yml", ".env.example", "Dockerfile"):
        shutil.copy(os.path.join(ROOT, f), root / f)
    shutil.copytree(os.path.join(ROOT, "deploy"), root / "deploy",
                    ignore=shutil.ignore_patterns("__pycache__", "local"))
    yield root
    shutil.rmtree(scratch, ignore_errors=True)


def edit(path, old, new, count=1):
    text = path.read_text()
    assert text.count(old) == count, (path, old, text.count(old))
    path.write_text(text.replace(old, new))


def problems_of(root, what):
    return "\n".join(checker(str(root)).run(what))


def test_compose_unknown_variable_caught(copy):
    edit(copy / "docker-compose.yml", '      KOWLOON_TENANT_BIND: tcp://127.0.0.1:7101\n',
         '      KOWLOON_TENANT_BIND: tcp://127.0.0.1:7101\n      KOWLOON_NO_SUCH_SETTING: "1"\n')
    p = problems_of(copy, "compose")
    assert "KOWLOON_NO_SUCH_SETTING, which is not in lib/kl_config_table.h" in p, p


def test_compose_missing_binary_caught(copy):
    edit(copy / "docker-compose.yml", 'command: ["kowloon-tenant"]',
         'command: ["kowloon-nosuch"]')
    p = problems_of(copy, "compose")
    assert "runs kowloon-nosuch, which no CMakeLists.txt builds" in p, p


def test_compose_bad_value_caught(copy):
    edit(copy / "docker-compose.yml", 'KOWLOON_TENANT_BIND: tcp://127.0.0.1:7101\n      KOWLOON_WORKERS: "4"',
         'KOWLOON_TENANT_BIND: tcp://127.0.0.1:7101\n      KOWLOON_WORKERS: "many"')
    p = problems_of(copy, "compose")
    assert "kowloon-config --check tenant refuses" in p and "KOWLOON_WORKERS" in p, p


def test_compose_invalid_file_caught(copy):
    edit(copy / "docker-compose.yml", "  init: true\n", "  init: true\n  bogus_key: 1\n")
    p = problems_of(copy, "compose")
    assert "docker-compose config failed" in p, p


def test_systemd_missing_binary_caught(copy):
    unit = copy / "deploy" / "systemd" / "kowloon-nosuch@.service"
    unit.write_text((copy / "deploy" / "systemd" / "kowloon-tenant@.service").read_text()
                    .replace("kowloon-tenant", "kowloon-nosuch").replace("tenant", "nosuch"))
    p = problems_of(copy, "systemd")
    assert "kowloon-nosuch@.service: runs kowloon-nosuch, which no CMakeLists.txt builds" in p, p


def test_systemd_bad_directive_caught(copy):
    unit = copy / "deploy" / "systemd" / "kowloon-gateway@.service"
    edit(unit, "Restart=on-failure", "Restart=sometimes")
    p = problems_of(copy, "systemd")
    assert "systemd-analyze verify" in p or "wants Restart=on-failure" in p, p


def test_systemd_unhardened_caught(copy):
    unit = copy / "deploy" / "systemd" / "kowloon-gateway@.service"
    edit(unit, "ProtectSystem=strict\n", "")
    edit(unit, "NoNewPrivileges=yes\n", "")
    p = problems_of(copy, "systemd")
    assert "wants ProtectSystem=strict" in p and "wants NoNewPrivileges=yes" in p, p


def test_stage_unknown_variable_caught(copy):
    f = copy / "deploy" / "stages" / "scaling" / "app" / "common.env"
    f.write_text(f.read_text() + "KOWLOON_CURVE_SECRET_KEY=abc\n")
    p = problems_of(copy, "stages")
    assert "KOWLOON_CURVE_SECRET_KEY, which is not in lib/kl_config_table.h" in p, p


def test_stage_endpoints_mismatch_caught(copy):
    f = copy / "deploy" / "stages" / "early-growth" / "common.env"
    edit(f, "tcp://127.0.0.1:7101,tcp://127.0.0.1:7111", "tcp://127.0.0.1:7101")
    edit(f, "tcp://127.0.0.1:7104,tcp://127.0.0.1:7114", "tcp://127.0.0.1:7104,tcp://127.0.0.1:7199")
    p = problems_of(copy, "stages")
    assert "is not the set of this host's tenant binds" in p, p
    assert "KOWLOON_BILLING_ENDPOINTS" in p and "is not the set of this host's billing binds" in p, p


def test_stage_threads_below_keepalive_caught(copy):
    """civetweb holds a thread per keep-alive connection: a gateway with
    fewer threads than nginx's idle pool leaves clients hanging."""
    edit(copy / "deploy" / "stages" / "launch" / "gateway.env", "KOWLOON_HTTP_THREADS=192",
         "KOWLOON_HTTP_THREADS=32")
    p = problems_of(copy, "stages")
    assert "KOWLOON_HTTP_THREADS=32 is below nginx's keepalive pool" in p, p


def test_stage_service_missing_and_plaintext_bind_caught(copy):
    d = copy / "deploy" / "stages" / "launch"
    for f in ("flags.env", "flags-1.env", "flags-2.env"):
        (d / f).unlink()
    edit(d / "tenant-1.env", "KOWLOON_TENANT_BIND=tcp://127.0.0.1:7101",
         "KOWLOON_TENANT_BIND=tcp://0.0.0.0:7101")
    p = problems_of(copy, "stages")
    assert "launch: starts no flags service" in p, p
    assert "binds tcp://0.0.0.0:7101 without Curve keys" in p, p


def test_stage_bad_value_and_orphan_file_caught(copy):
    d = copy / "deploy" / "stages" / "launch"
    edit(d / "tenant.env", "KOWLOON_WORKERS=2", "KOWLOON_WORKERS=0")
    (d / "reports.env").write_text("KOWLOON_LOG_LEVEL=info\n")
    p = problems_of(copy, "stages")
    assert "kowloon-config --check tenant refuses" in p and "KOWLOON_WORKERS" in p, p
    assert "files no unit reads: reports.env" in p, p


def test_stage_placeholder_must_be_refused(copy):
    d = copy / "deploy" / "stages" / "launch"
    edit(d / "gateway.env", "KOWLOON_ADMIN_TOKEN=CHANGE_ME\n",
         "KOWLOON_ADMIN_TOKEN=CHANGE_ME_0123456789abcdef\n")
    p = problems_of(copy, "stages")
    # A placeholder install.sh does not know is left in place.
    assert "placeholders left in" in p, p
    # A real-looking token shipped in a stage file would let the gateway
    # start with a secret everyone knows.
    d2 = copy / "deploy" / "stages" / "early-growth"
    edit(d2 / "gateway.env", "KOWLOON_ADMIN_TOKEN=CHANGE_ME\n",
         "KOWLOON_ADMIN_TOKEN=0123456789abcdef0123\n")
    p = problems_of(copy, "stages")
    assert "early-growth: kowloon-gateway@1 starts with the files as shipped" in p, p


def test_stage_env_syntax_caught(copy):
    d = copy / "deploy" / "stages" / "launch"
    edit(d / "common.env", "KOWLOON_LOG_LEVEL=info", 'KOWLOON_LOG_LEVEL="info"')
    p = problems_of(copy, "stages")
    assert "KOWLOON_LOG_LEVEL is quoted" in p, p


def test_nginx_broken_config_caught(copy):
    edit(copy / "deploy" / "nginx" / "kowloon.conf", "proxy_pass http://kowloon_gateway;",
         "proxy_pass http://kowloon_gateway")
    p = problems_of(copy, "nginx")
    assert "nginx -t" in p, p
