"""Entitlements at the edge: the feature gate (exact 403 body), overrides on
and off, flag rollout and kill switch visible in /api/v1/entitlements, a flag
gating a route, usage of the caller's own tenant only, tenant fields
overwritten by the gateway. Real kowloon-tenant, -flags, -workspace and
-gateway."""

import time

import pytest

import harness

EXPECT_403 = {"error": {"code": "PERMISSION_DENIED",
                        "message": "Feature not available on your plan",
                        "feature": "advanced_reports",
                        "upgrade_url": None}}


@pytest.fixture(scope="module")
def st():
    s = harness.product_stack_fixture()
    yield s
    s.stop()


def ents(st, sub, key):
    r = st.api(sub, key, "GET", "/api/v1/entitlements")
    assert r.status == 200, r
    return r.json


def wait_ents(st, sub, key, pred, timeout=5):
    last = {}

    def ok():
        last["v"] = ents(st, sub, key)
        return pred(last["v"])
    harness.wait_until(ok, timeout, interval=0.05, what="entitlements change")
    return last["v"]


def test_feature_allowed_on_pro_denied_on_starter(st):
    pro, pkey = st.tenant_with_key("entpro", plan="pro")
    r = st.api(pro["subdomain"], pkey, "GET", "/api/advanced-reports")
    assert r.status == 200, r
    assert "projects" in r.json and "doneRatio" in r.json, r

    starter, skey = st.tenant_with_key("entst", plan="starter")
    sub = starter["subdomain"]
    r = st.api(sub, skey, "GET", "/api/advanced-reports")
    assert r.status == 403, r
    want = dict(EXPECT_403)
    want["error"] = dict(want["error"],
                         upgrade_url="http://%s.localhost/upgrade" % sub)
    assert r.json == want, r
    # Byte for byte: the key order the issue fixed.
    assert r.text == ('{"error":{"code":"PERMISSION_DENIED","message":"Feature not '
                      'available on your plan","feature":"advanced_reports",'
                      '"upgrade_url":"http://%s.localhost/upgrade"}}' % sub), r.text
    r = st.api(sub, skey, "GET", "/api/export")
    assert r.status == 403 and r.json["error"]["feature"] == "data_export", r

    # The upgrade link never comes from the request's Host.
    r = st.req("GET", "/api/advanced-reports", host="%s.localhost:9999" % sub,
               headers=[("Authorization", "Bearer " + skey)])
    assert r.status == 403, r
    assert r.json["error"]["upgrade_url"] == "http://%s.localhost/upgrade" % sub

    # Without a key: 401, never the 403 that would tell the plan.
    r = st.api(sub, None, "GET", "/api/advanced-reports")
    assert r.status == 401, r


def test_entitlements_route_is_the_tenants(st):
    t, key = st.tenant_with_key("entme", plan="pro")
    e = ents(st, t["subdomain"], key)
    assert e["tenantId"] == t["id"]
    assert e["plan"] == "pro"
    assert "advanced_reports" in e["features"]
    assert e["limits"]["api_requests_per_minute"] == "3000"
    assert int(e["version"]) >= 0


def test_override_on_and_off(st):
    t, key = st.tenant_with_key("entov", plan="starter")
    sub = t["subdomain"]
    assert st.api(sub, key, "GET", "/api/advanced-reports").status == 403
    r = st.admin("PUT", "/admin/v1/tenants/%s/overrides/advanced_reports" % t["id"],
                 {"enabled": True})
    assert r.status == 200, r
    wait_ents(st, sub, key, lambda e: "advanced_reports" in e["features"])
    r = st.api(sub, key, "GET", "/api/advanced-reports")
    assert r.status == 200, r
    r = st.admin("GET", "/admin/v1/tenants/%s/overrides" % t["id"])
    assert r.status == 200 and any(o["key"] == "advanced_reports"
                                   for o in r.json["overrides"]), r

    r = st.admin("DELETE", "/admin/v1/tenants/%s/overrides/advanced_reports" % t["id"])
    assert r.status == 200, r
    wait_ents(st, sub, key, lambda e: "advanced_reports" not in e["features"])
    assert st.api(sub, key, "GET", "/api/advanced-reports").status == 403

    # An override turning a plan feature off.
    p, pkey = st.tenant_with_key("entov2", plan="pro")
    r = st.admin("PUT", "/admin/v1/tenants/%s/overrides/data_export" % p["id"],
                 {"enabled": False})
    assert r.status == 200, r
    wait_ents(st, p["subdomain"], pkey, lambda e: "data_export" not in e["features"])
    assert st.api(p["subdomain"], pkey, "GET", "/api/export").status == 403


def test_flag_rollout_and_kill_switch(st):
    t, key = st.tenant_with_key("entfl", plan="starter")
    sub = t["subdomain"]
    flag = harness.unique("newui").replace("-", "_")
    r = st.admin("POST", "/admin/v1/flags", {"key": flag, "rolloutPercent": 100})
    assert r.status == 200, r
    wait_ents(st, sub, key, lambda e: flag in e["flags"])
    r = st.admin("GET", "/admin/v1/flags/%s" % flag)
    assert r.status == 200 and r.json["rolloutPercent"] == 100, r

    # Kill switch: off for everyone at once.
    r = st.admin("PATCH", "/admin/v1/flags/%s" % flag,
                 {"killed": True, "rolloutPercent": 100})
    assert r.status == 200, r
    wait_ents(st, sub, key, lambda e: flag not in e["flags"])

    # Rollout 0 with the tenant on the allow list.
    r = st.admin("PATCH", "/admin/v1/flags/%s" % flag,
                 {"killed": False, "rolloutPercent": 0, "allowTenants": [t["id"]]})
    assert r.status == 200, r
    wait_ents(st, sub, key, lambda e: flag in e["flags"])
    r = st.admin("DELETE", "/admin/v1/flags/%s" % flag)
    assert r.status == 200, r
    wait_ents(st, sub, key, lambda e: flag not in e["flags"])


LIMITS = {"api_requests_per_minute": "1000", "max_projects": "10",
          "max_api_keys": "5", "storage_mb": "100"}


def test_plan_change_and_plan_admin(st):
    name = harness.unique("gold").replace("-", "_")
    r = st.admin("POST", "/admin/v1/plans",
                 {"name": name, "displayName": "Gold", "features": ["data_export"],
                  "limits": LIMITS})
    assert r.status == 200, r
    r = st.admin("GET", "/admin/v1/plans")
    assert r.status == 200 and any(p["name"] == name for p in r.json["plans"]), r
    t, key = st.tenant_with_key("entpl", plan=name)
    sub = t["subdomain"]
    assert st.api(sub, key, "GET", "/api/advanced-reports").status == 403
    r = st.admin("PATCH", "/admin/v1/plans/%s" % name,
                 {"displayName": "Gold", "features": ["data_export", "advanced_reports"],
                  "limits": LIMITS})
    assert r.status == 200, r
    wait_ents(st, sub, key, lambda e: "advanced_reports" in e["features"])
    assert st.api(sub, key, "GET", "/api/advanced-reports").status == 200
    # Moving the tenant to another plan is seen at once too.
    r = st.admin("PATCH", "/admin/v1/tenants/%s" % t["id"], {"plan": "starter"})
    assert r.status == 200, r
    wait_ents(st, sub, key, lambda e: e["plan"] == "starter")
    assert st.api(sub, key, "GET", "/api/advanced-reports").status == 403
    r = st.admin("GET", "/admin/v1/plans/%s" % name)
    assert r.status == 200 and r.json["name"] == name, r


def test_usage_is_always_the_callers(st):
    a, akey = st.tenant_with_key("entua", plan="starter")
    b, bkey = st.tenant_with_key("entub", plan="starter")
    r = st.api(b["subdomain"], bkey, "POST", "/api/v1/projects", {"name": "b1"})
    assert r.status == 200, r
    # A names B in the query and in a body: the gateway overwrites both.
    for path, body in (("/api/v1/usage?tenant_id=%s&plan=pro" % b["id"], None),
                       ("/api/v1/usage", {"tenantId": b["id"], "plan": "pro"})):
        r = st.api(a["subdomain"], akey, "GET", path, body)
        assert r.status == 200, r
        usage = {u["limit"]: u for u in r.json["usage"]}
        assert usage["max_projects"]["used"] == "0", r
        assert usage["max_projects"]["max"] == "3", r  # starter, not pro
    r = st.api(b["subdomain"], bkey, "GET", "/api/v1/usage")
    usage = {u["limit"]: u for u in r.json["usage"]}
    assert usage["max_projects"]["used"] == "1", r
