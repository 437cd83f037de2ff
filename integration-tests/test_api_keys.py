"""API keys at the tenant API: every way of not having the right key gets
the same 401; a good key gets the tenant."""

import time

import harness
from harness import unique

T = "/admin/v1/tenants"


def norm(r):
    return harness.strip_request_ids(r.json)


def test_keys(stack):
    a = stack.create_tenant(unique("kya"), status="active")
    b = stack.create_tenant(unique("kyb"), status="active")
    ka = stack.create_key(a["id"])
    kb = stack.create_key(b["id"])

    # Good key: 200 and the tenant.
    r = stack.tenant_get(a["subdomain"], ka["secret"])
    assert r.status == 200, r
    for field in ("id", "subdomain", "name", "plan", "status"):
        assert r.json[field] == a[field], (field, r)
    assert r.header("Content-Type").startswith("application/json"), r.headers

    # Missing: 401.
    missing = stack.tenant_get(a["subdomain"], None)
    assert missing.status == 401, missing
    assert missing.json == {"error": {"code": "UNAUTHENTICATED",
                                      "message": "missing API key"}}, missing
    assert (missing.header("WWW-Authenticate") or "").startswith("Bearer"), missing.headers

    # Wrong, in several shapes: one and the same 401 body (it may differ
    # from "missing", which reveals nothing).
    wrong = stack.tenant_get(a["subdomain"], "kl_0123456789abcdef_" + "A" * 43)
    assert wrong.status == 401, wrong
    assert wrong.json == {"error": {"code": "UNAUTHENTICATED",
                                    "message": "invalid API key"}}, wrong
    assert (wrong.header("WWW-Authenticate") or "").startswith("Bearer"), wrong.headers
    wrong_keys = [
        "kl_%s_%s" % (ka["id"], "0" * 43),                       # right id, wrong secret
        ka["secret"][:-1] + ("A" if ka["secret"][-1] != "A" else "B"),
        "kl_nosuchkey_" + "x" * 40,
        "not-a-kowloon-key",
        "x" * 5000,
    ]
    for k in wrong_keys:
        r = stack.tenant_get(a["subdomain"], k)
        assert r.status == 401, (k[:40], r)
        assert norm(r) == norm(wrong), (k[:40], r, wrong)
    r = stack.req("GET", "/api/v1/tenant", host="%s.localhost" % a["subdomain"],
                  headers=[("Authorization", "Basic Zm9vOmJhcg==")])
    assert r.status == 401, r

    # Another tenant's (valid) key: the identical 401.
    other = stack.tenant_get(a["subdomain"], kb["secret"])
    assert other.status == 401, other
    assert norm(other) == norm(wrong), (other, wrong)
    assert b["id"] not in other.text and b["subdomain"] not in other.text
    # ... while it still works for its own tenant.
    assert stack.tenant_get(b["subdomain"], kb["secret"]).status == 200

    # Revoked: 401 (the revocation event drops the gateway's cached key).
    r = stack.admin("DELETE", "%s/%s/api-keys/%s" % (T, a["id"], ka["id"]))
    assert r.status == 200, r
    t0 = time.monotonic()
    while True:
        r = stack.tenant_get(a["subdomain"], ka["secret"])
        if r.status == 401:
            break
        assert r.status == 200, r
        assert time.monotonic() - t0 < 3.0, "revoked key still accepted after 3s"
        time.sleep(0.05)
    assert norm(r) == norm(wrong), r

    # A second key of the same tenant is unaffected.
    ka2 = stack.create_key(a["id"], "second")
    assert stack.tenant_get(a["subdomain"], ka2["secret"]).status == 200
