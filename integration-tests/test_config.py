"""Each binary refuses to start on a missing or malformed KOWLOON_* setting,
exits non-zero, and names the variable (never printing a secret's value)."""

import subprocess

import harness
import pytest

TIMEOUT = 30


def good_env(kind):
    redis = harness.env("KLTEST_REDIS_URL")
    if kind == "tenant":
        return {"KOWLOON_DATABASE_URL": harness.env("KLTEST_PG_URL"),
                "KOWLOON_REDIS_URL": redis,
                "KOWLOON_TENANT_BIND": "tcp://127.0.0.1:%d" % harness.free_port()}
    return {"KOWLOON_REDIS_URL": redis,
            "KOWLOON_ADMIN_TOKEN": harness.ADMIN_TOKEN,
            "KOWLOON_TENANT_ENDPOINTS": "tcp://127.0.0.1:%d" % harness.free_port(),
            "KOWLOON_HTTP_LISTEN": "127.0.0.1:%d" % harness.free_port(),
            "KOWLOON_BASE_DOMAIN": "localhost"}


def run(kind, set_vars=None, unset=()):
    e = harness.base_env()
    e.update(good_env(kind))
    e.update(set_vars or {})
    for name in unset:
        e.pop(name, None)
    try:
        r = subprocess.run([harness.binary(kind)], env=e, stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail("%s with %s / without %s kept running for %ds instead of refusing to start"
                    % (kind, set_vars, list(unset), TIMEOUT))
    return r.returncode, (r.stdout + r.stderr).decode("utf-8", "replace")


CASES = [
    ("tenant", {"KOWLOON_WORKERS": "abc"}, (), "KOWLOON_WORKERS"),
    ("tenant", {"KOWLOON_WORKERS": "0"}, (), "KOWLOON_WORKERS"),
    ("tenant", {"KOWLOON_WORKERS": "100000"}, (), "KOWLOON_WORKERS"),
    ("tenant", {}, ("KOWLOON_DATABASE_URL",), "KOWLOON_DATABASE_URL"),
    ("tenant", {"KOWLOON_DATABASE_URL": ""}, (), "KOWLOON_DATABASE_URL"),
    ("tenant", {"KOWLOON_DEFAULT_ISOLATION": "sideways"}, (), "KOWLOON_DEFAULT_ISOLATION"),
    ("tenant", {"KOWLOON_RPC_MAX_MESSAGE_BYTES": "12"}, (), "KOWLOON_RPC_MAX_MESSAGE_BYTES"),
    ("tenant", {"KOWLOON_LOG_LEVEL": "loud"}, (), "KOWLOON_LOG_LEVEL"),
    ("gateway", {}, ("KOWLOON_ADMIN_TOKEN",), "KOWLOON_ADMIN_TOKEN"),
    ("gateway", {"KOWLOON_HTTP_THREADS": "abc"}, (), "KOWLOON_HTTP_THREADS"),
    ("gateway", {"KOWLOON_RPC_TIMEOUT_MS": "5"}, (), "KOWLOON_RPC_TIMEOUT_MS"),
    ("gateway", {"KOWLOON_PUBLIC_SCHEME": "ftp"}, (), "KOWLOON_PUBLIC_SCHEME"),
    ("gateway", {"KOWLOON_TENANT_CACHE_TTL_MS": "-1"}, (), "KOWLOON_TENANT_CACHE_TTL_MS"),
    ("gateway", {"KOWLOON_HTTP_MAX_BODY_BYTES": "1e6"}, (), "KOWLOON_HTTP_MAX_BODY_BYTES"),
    ("gateway", {"KOWLOON_TRUSTED_PROXIES": "10.0.0.0/99"}, (), "KOWLOON_TRUSTED_PROXIES"),
    ("gateway", {"KOWLOON_TENANT_ENDPOINTS": ""}, (), "KOWLOON_TENANT_ENDPOINTS"),
]


@pytest.mark.parametrize("kind,set_vars,unset,name", CASES,
                         ids=["%s-%s" % (c[0], c[3]) for c in CASES])
def test_bad_setting_refused(kind, set_vars, unset, name):
    set_vars = {k: v for k, v in set_vars.items() if v is not None}
    rc, out = run(kind, set_vars, unset)
    assert rc != 0, "%s started with a bad %s:\n%s" % (kind, name, out[-3000:])
    assert name in out, "%s's message does not name %s:\n%s" % (kind, name, out[-3000:])
    assert not harness.sanitizer_report(out), out[-5000:]


def test_secret_value_never_printed():
    # Too short (< 16 characters) and secret: named, but its value not shown.
    value = "sh0rt-s3cret"
    rc, out = run("gateway", {"KOWLOON_ADMIN_TOKEN": value})
    assert rc != 0, out[-3000:]
    assert "KOWLOON_ADMIN_TOKEN" in out, out[-3000:]
    assert value not in out, out[-3000:]
    assert not harness.sanitizer_report(out), out[-5000:]
    secret_url = "postgresql://postgres:pa55w0rd-x@127.0.0.1:1/postgres"
    rc, out = run("tenant", {"KOWLOON_DATABASE_URL": secret_url, "KOWLOON_WORKERS": "abc"})
    assert rc != 0
    assert "pa55w0rd-x" not in out, out[-3000:]
