"""The workspace service through the gateway: CRUD of projects and tasks,
every route refusing another tenant's ids (404, nothing visible, nothing
changed), max_projects under concurrent creates (no overshoot), the streamed
export (one valid JSON document, chunked) and the advanced reports numbers."""

import concurrent.futures
import json
import socket

import pytest

import harness


@pytest.fixture(scope="module")
def st():
    s = harness.product_stack_fixture()
    yield s
    s.stop()


def test_crud(st):
    t, key = st.tenant_with_key("wsc", plan="pro")
    sub = t["subdomain"]
    r = st.api(sub, key, "POST", "/api/v1/projects", {"name": "Launch", "description": "d"})
    assert r.status == 200, r
    pid = r.json["id"]
    r = st.api(sub, key, "GET", "/api/v1/projects/%s" % pid)
    assert r.status == 200 and r.json["name"] == "Launch", r
    r = st.api(sub, key, "PATCH", "/api/v1/projects/%s" % pid, {"name": "Launch 2"})
    assert r.status == 200 and r.json["name"] == "Launch 2", r
    r = st.api(sub, key, "POST", "/api/v1/projects/%s/tasks" % pid, {"title": "t1"})
    assert r.status == 200 and r.json["projectId"] == pid, r
    tid = r.json["id"]
    r = st.api(sub, key, "PATCH", "/api/v1/projects/%s/tasks/%s" % (pid, tid), {"done": True})
    assert r.status == 200 and r.json["done"] is True, r
    r = st.api(sub, key, "GET", "/api/v1/projects/%s/tasks" % pid)
    assert r.status == 200 and [x["id"] for x in r.json["tasks"]] == [tid], r
    r = st.api(sub, key, "GET", "/api/v1/projects/%s/tasks/%s" % (pid, tid))
    assert r.status == 200 and r.json["title"] == "t1", r
    r = st.api(sub, key, "GET", "/api/v1/projects?page_size=10")
    assert r.status == 200 and [p["id"] for p in r.json["projects"]] == [pid], r
    r = st.api(sub, key, "DELETE", "/api/v1/projects/%s/tasks/%s" % (pid, tid))
    assert r.status == 200, r
    r = st.api(sub, key, "DELETE", "/api/v1/projects/%s" % pid)
    assert r.status == 200, r
    r = st.api(sub, key, "GET", "/api/v1/projects/%s" % pid)
    assert r.status == 404, r


def test_cross_tenant_forged_ids(st):
    a, akey = st.tenant_with_key("wsa", plan="pro")
    b, bkey = st.tenant_with_key("wsb", plan="pro")
    asub, bsub = a["subdomain"], b["subdomain"]
    pid = st.api(asub, akey, "POST", "/api/v1/projects", {"name": "secret"}).json["id"]
    tid = st.api(asub, akey, "POST", "/api/v1/projects/%s/tasks" % pid,
                 {"title": "secret task"}).json["id"]
    attempts = [
        ("GET", "/api/v1/projects/%s" % pid, None),
        ("PATCH", "/api/v1/projects/%s" % pid, {"name": "pwned"}),
        ("DELETE", "/api/v1/projects/%s" % pid, None),
        ("POST", "/api/v1/projects/%s/tasks" % pid, {"title": "planted"}),
        ("GET", "/api/v1/projects/%s/tasks/%s" % (pid, tid), None),
        ("PATCH", "/api/v1/projects/%s/tasks/%s" % (pid, tid), {"title": "pwned"}),
        ("DELETE", "/api/v1/projects/%s/tasks/%s" % (pid, tid), None),
    ]
    for method, path, body in attempts:
        r = st.api(bsub, bkey, method, path, body)
        assert r.status == 404, (method, path, r)
        assert "secret" not in r.text, r
    r = st.api(bsub, bkey, "GET", "/api/v1/projects/%s/tasks" % pid)
    assert r.status == 404 or (r.status == 200 and r.json["tasks"] == []), r
    # Naming the tenant in a body or query changes nothing.
    r = st.api(bsub, bkey, "GET", "/api/v1/projects?tenant_id=%s" % a["id"])
    assert r.status == 400 or (r.status == 200 and r.json["projects"] == []), r
    r = st.api(bsub, bkey, "POST", "/api/v1/projects", {"name": "x", "tenantId": a["id"]})
    assert r.status == 400, r
    # B's key on A's host: 401, one answer for every wrong key.
    r = st.api(asub, bkey, "GET", "/api/v1/projects/%s" % pid)
    assert r.status == 401, r
    # B sees nothing of A anywhere.
    assert st.api(bsub, bkey, "GET", "/api/v1/projects").json["projects"] == []
    r = st.api(bsub, bkey, "GET", "/api/export")
    assert r.status == 200 and r.json == {"tenant": bsub, "projects": []}, r
    # A's data is untouched.
    r = st.api(asub, akey, "GET", "/api/v1/projects/%s/tasks/%s" % (pid, tid))
    assert r.status == 200 and r.json["title"] == "secret task", r
    r = st.api(asub, akey, "GET", "/api/v1/projects/%s/tasks" % pid)
    assert [x["id"] for x in r.json["tasks"]] == [tid], r


def test_max_projects_concurrent_no_overshoot(st):
    t, key = st.tenant_with_key("wsm", plan="starter")  # max_projects 3
    sub = t["subdomain"]

    def create(i):
        return st.api(sub, key, "POST", "/api/v1/projects", {"name": "p%d" % i})
    with concurrent.futures.ThreadPoolExecutor(12) as ex:
        rs = list(ex.map(create, range(12)))
    statuses = sorted(r.status for r in rs)
    assert statuses.count(200) == 3, statuses
    assert statuses.count(429) == 9, statuses
    refused = [r for r in rs if r.status == 429][0]
    assert refused.json["error"]["code"] == "RESOURCE_EXHAUSTED", refused
    r = st.api(sub, key, "GET", "/api/v1/projects")
    assert len(r.json["projects"]) == 3, r
    usage = {u["limit"]: u for u in st.api(sub, key, "GET", "/api/v1/usage").json["usage"]}
    assert usage["max_projects"]["used"] == "3", usage
    # Deleting one frees one.
    st.api(sub, key, "DELETE", "/api/v1/projects/%s" % r.json["projects"][0]["id"])
    assert create(99).status == 200


def _raw_get(port, host, path, key):
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
               "Connection: close\r\n\r\n" % (path, host, key)).encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return data


def test_export_streams_one_document(st):
    t, key = st.tenant_with_key("wse", plan="pro")
    sub = t["subdomain"]
    names = []
    for i in range(45):  # more than two pages of 20
        r = st.api(sub, key, "POST", "/api/v1/projects", {"name": "proj %02d \"q\"" % i})
        assert r.status == 200, r
        names.append(r.json["name"])
        if i % 10 == 0:
            pid = r.json["id"]
            for j in range(3):
                st.api(sub, key, "POST", "/api/v1/projects/%s/tasks" % pid,
                       {"title": "task %d" % j})
    r = st.api(sub, key, "GET", "/api/export")
    assert r.status == 200, r
    assert r.header("Transfer-Encoding") == "chunked", r.headers
    assert r.header("Content-Length") is None
    doc = json.loads(r.body)
    assert doc["tenant"] == sub
    assert sorted(p["project"]["name"] for p in doc["projects"]) == sorted(names)
    with_tasks = [p for p in doc["projects"] if p["tasks"]]
    assert len(with_tasks) == 5 and all(len(p["tasks"]) == 3 for p in with_tasks)
    # On the wire: several chunks, ended by the zero chunk.
    raw = _raw_get(st.http_port, "%s.localhost" % sub, "/api/export", key)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body.endswith(b"\r\n0\r\n\r\n")
    assert body.count(b"\r\n") > 8


def test_advanced_reports_numbers(st):
    t, key = st.tenant_with_key("wsr", plan="pro")
    sub = t["subdomain"]
    p1 = st.api(sub, key, "POST", "/api/v1/projects", {"name": "one"}).json["id"]
    p2 = st.api(sub, key, "POST", "/api/v1/projects", {"name": "two"}).json["id"]
    tids = [st.api(sub, key, "POST", "/api/v1/projects/%s/tasks" % p1,
                   {"title": "t%d" % i}).json["id"] for i in range(4)]
    for tid in tids[:3]:
        r = st.api(sub, key, "PATCH", "/api/v1/projects/%s/tasks/%s" % (p1, tid), {"done": True})
        assert r.status == 200, r
    r = st.api(sub, key, "GET", "/api/advanced-reports")
    assert r.status == 200, r
    rep = r.json
    assert rep["tasks"] == "4" and rep["done"] == "3", rep
    assert abs(rep["doneRatio"] - 0.75) < 1e-9, rep
    by = {p["projectId"]: p for p in rep["projects"]}
    assert by[p1]["tasks"] == "4" and by[p1]["done"] == "3"
    assert abs(by[p1]["doneRatio"] - 0.75) < 1e-9
    assert by[p2]["tasks"] == "0" and by[p2]["doneRatio"] == 0
