"""The admin API (Host = the base domain, Bearer KOWLOON_ADMIN_TOKEN),
driven over HTTP through the real gateway and tenant service."""

import harness
from harness import unique

T = "/admin/v1/tenants"


def test_auth_required(stack):
    r = stack.admin("GET", T, token=None)
    assert r.status == 401, r
    assert "missing bearer token" in r.text, r
    assert (r.header("WWW-Authenticate") or "").startswith("Bearer"), r.headers
    r = stack.admin("GET", T, token="wrong-token-0123456789abcdef")
    assert r.status == 403, r
    assert r.json["error"]["code"] == "PERMISSION_DENIED", r
    # A prefix or an extension of the right token is just as wrong.
    assert stack.admin("GET", T, token=harness.ADMIN_TOKEN[:-1]).status == 403
    assert stack.admin("GET", T, token=harness.ADMIN_TOKEN + "x").status == 403
    r = stack.req("GET", T, headers=[("Authorization", "Basic Zm9vOmJhcg==")])
    assert r.status in (401, 403), r


def test_admin_not_on_tenant_host(stack):
    sub = unique("adm")
    stack.create_tenant(sub)
    r = stack.req("GET", T, host="%s.localhost" % sub,
                  headers=[("Authorization", "Bearer " + harness.ADMIN_TOKEN)])
    assert r.status == 404, r


def test_create_get_defaults(stack):
    sub = unique("crt")
    t = stack.create_tenant(sub, name="Create Co")
    for field in ("id", "subdomain", "name", "plan", "status", "isolation", "createdAt",
                  "updatedAt"):
        assert t.get(field), (field, t)
    assert t["name"] == "Create Co"
    assert t["plan"] == "starter"          # KOWLOON_DEFAULT_PLAN
    assert t["isolation"] == "row"         # KOWLOON_DEFAULT_ISOLATION
    assert t["status"] == "trialing"
    r = stack.admin("GET", "%s/%s" % (T, t["id"]))
    assert r.status == 200, r
    assert r.json["id"] == t["id"] and r.json["subdomain"] == sub
    r = stack.admin("GET", "%s/00000000-0000-0000-0000-000000000000" % T)
    assert r.status == 404, r


def test_create_explicit_fields(stack):
    sub = unique("exp")
    t = stack.create_tenant(sub, plan="pro", isolation="schema", status="active")
    assert (t["plan"], t["isolation"], t["status"]) == ("pro", "schema", "active"), t


def test_validation_errors(stack):
    cases = [
        ({"subdomain": "Bad_Name", "name": "x"}, "subdomain"),
        ({"subdomain": "ab", "name": "x"}, "subdomain"),
        ({"subdomain": "-lead", "name": "x"}, "subdomain"),
        ({"subdomain": "x" * 64, "name": "x"}, "subdomain"),
        ({"name": "no subdomain"}, "subdomain"),
        ({"subdomain": unique("val"), "name": "x", "isolation": "bogus"}, "isolation"),
        ({"subdomain": unique("val"), "name": "x", "status": "suspended"}, "status"),
    ]
    for body, word in cases:
        r = stack.admin("POST", T, body)
        assert r.status == 400, (body, r)
        assert r.json is not None, r
        assert word in r.text.lower(), (body, r)


def test_reserved_subdomain(stack):
    for sub in ("admin", "www", "api"):
        r = stack.admin("POST", T, {"subdomain": sub, "name": "Reserved"})
        assert r.status == 400, (sub, r)
        assert "reserved" in r.text.lower(), r


def test_taken_subdomain(stack):
    sub = unique("dup")
    stack.create_tenant(sub)
    r = stack.admin("POST", T, {"subdomain": sub, "name": "Second"})
    assert r.status == 409, r
    assert sub in r.text, r


def test_patch(stack):
    t = stack.create_tenant(unique("pat"))
    r = stack.admin("PATCH", "%s/%s" % (T, t["id"]), {"name": "Renamed", "plan": "pro"})
    assert r.status == 200, r
    assert r.json["name"] == "Renamed" and r.json["plan"] == "pro", r
    assert r.json["subdomain"] == t["subdomain"]
    r = stack.admin("GET", "%s/%s" % (T, t["id"]))
    assert r.json["name"] == "Renamed", r
    r = stack.admin("PATCH", "%s/%s" % (T, t["id"]), {"name": ""})
    assert r.status == 400, r
    r = stack.admin("PATCH", "%s/00000000-0000-0000-0000-000000000000" % T, {"name": "x"})
    assert r.status == 404, r


def test_suspend_resume(stack):
    t = stack.create_tenant(unique("sus"), status="active")
    r = stack.admin("POST", "%s/%s:suspend" % (T, t["id"]))
    assert r.status == 200, r
    assert r.json["status"] == "suspended", r
    r = stack.admin("POST", "%s/%s:resume" % (T, t["id"]))
    assert r.status == 200, r
    assert r.json["status"] == "active", r


def test_delete(stack):
    t = stack.create_tenant(unique("del"))
    r = stack.admin("DELETE", "%s/%s" % (T, t["id"]))
    assert r.status == 200, r
    assert r.json["status"] == "deleted", r
    ids = [x["id"] for x in list_all(stack, "")]
    assert t["id"] not in ids
    ids = [x["id"] for x in list_all(stack, "deleted")]
    assert t["id"] in ids
    # Its subdomain now answers like an unknown one.
    r = stack.tenant_get(t["subdomain"], None)
    assert r.status == 404, r


def list_all(stack, status, page_size=2):
    out, token, pages = [], "", 0
    while True:
        q = "?page_size=%d" % page_size
        if token:
            q += "&page_token=" + token
        if status:
            q += "&status=" + status
        r = stack.admin("GET", T + q)
        assert r.status == 200, r
        page = r.json.get("tenants", [])
        assert len(page) <= page_size, r
        out += page
        token = r.json.get("nextPageToken", "")
        pages += 1
        assert pages < 1000
        if not token:
            return out


def test_list_paging_and_filter(stack):
    made = [stack.create_tenant(unique("lst")) for _ in range(5)]
    susp = made[0]
    r = stack.admin("POST", "%s/%s:suspend" % (T, susp["id"]))
    assert r.status == 200, r
    everyone = list_all(stack, "")
    ids = [x["id"] for x in everyone]
    assert len(ids) == len(set(ids)), "a tenant appeared on two pages"
    for t in made:
        assert t["id"] in ids
    suspended = list_all(stack, "suspended")
    assert susp["id"] in [x["id"] for x in suspended]
    assert all(x["status"] == "suspended" for x in suspended), suspended
    trialing = list_all(stack, "trialing", page_size=500)
    assert susp["id"] not in [x["id"] for x in trialing]
    r = stack.admin("GET", T + "?page_size=-1")
    assert r.status == 400, r
    r = stack.admin("GET", T + "?page_size=501")
    assert r.status == 400, r
    r = stack.admin("GET", T + "?status=bogus")
    assert r.status == 400, r


def test_api_keys_lifecycle(stack):
    t = stack.create_tenant(unique("key"))
    k = stack.create_key(t["id"], "ci deploy")
    assert k["name"] == "ci deploy" and k["id"] and k["tenantId"] == t["id"], k
    assert k["secret"].startswith("kl_"), k
    r = stack.admin("GET", "%s/%s/api-keys" % (T, t["id"]))
    assert r.status == 200, r
    keys = r.json["keys"]
    assert [x["id"] for x in keys] == [k["id"]], r
    assert not keys[0].get("secret"), "the secret is shown only once"
    assert k["secret"] not in r.text
    r = stack.admin("DELETE", "%s/%s/api-keys/%s" % (T, t["id"], k["id"]))
    assert r.status == 200, r
    r = stack.admin("GET", "%s/%s/api-keys" % (T, t["id"]))
    assert r.status == 200 and not r.json.get("keys"), r
    r = stack.admin("DELETE", "%s/%s/api-keys/%s" % (T, t["id"], k["id"]))
    assert r.status == 404, r
    r = stack.admin("POST", "%s/00000000-0000-0000-0000-000000000000/api-keys" % T,
                    {"name": "x"})
    assert r.status == 404, r


def test_routing_errors(stack):
    t = stack.create_tenant(unique("rte"))
    r = stack.admin("PUT", "%s/%s" % (T, t["id"]), {"name": "x"})
    assert r.status == 405, r
    allow = {m.strip() for m in (r.header("Allow") or "").split(",")}
    assert {"GET", "PATCH", "DELETE"} <= allow, r.headers
    r = stack.admin("GET", "/admin/v1/nothing-here")
    assert r.status == 404, r
    # /api/... on the apex is no route either.
    r = stack.req("GET", "/api/v1/tenant")
    assert r.status == 404, r
    # The path's id wins only if the body agrees.
    r = stack.admin("PATCH", "%s/%s" % (T, t["id"]),
                    {"id": "00000000-0000-0000-0000-000000000000", "name": "x"})
    assert r.status == 400 and "differs from the path" in r.text, r
    r = stack.admin("PATCH", "%s/%s" % (T, t["id"]), {"id": t["id"], "name": "Same id"})
    assert r.status == 200 and r.json["name"] == "Same id", r
    # A query parameter given twice.
    r = stack.admin("GET", T + "?status=active&status=trialing")
    assert r.status == 400, r
    r = stack.admin("GET", T + "?page_size=abc")
    assert r.status == 400 and "page_size" in r.text, r
