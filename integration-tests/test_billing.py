"""kowloon-billing as a real process: with kowloon-tenant, kowloon-flags and
the Stripe stand-in, driven over ZeroMQ.

- The whole life through HandleWebhook: sign-up trial, then checkout paid
  (active), then payment failed (past_due), then grace over (suspended),
  then paid (active).
- Billing SIGKILLed after Stripe made the customer and before billing wrote
  it down, then restarted: no duplicate Stripe objects.
- Signature refusals answered INVALID_ARGUMENT with the reason.
- The binary refuses to start without its Stripe settings, naming them.
"""

import json
import os
import subprocess
import time
import urllib.request

import pytest

import harness as h

h._EXTRA_BINARIES.setdefault("billing", "services/billing/kowloon-billing")

HERE = os.path.dirname(os.path.abspath(__file__))
STANDIN = os.path.join(HERE, "stripe_standin", "standin.py")
SK = "sk_test_it_billing"
WHSEC = "whsec_it_billing_secret"
BILLING = "kowloon.billing.BillingService"
FLAGS = "kowloon.flags.FlagsService"
GRACE_S = 2


# ------------------------------------------------------------- protobuf bits

def ctx_request(service, method, payload, tenant_id="", request_id="it-billing"):
    """A kowloon.rpc.Request whose call context carries tenant_id."""
    ctx = (h.pb_field_bytes(1, request_id) + h.pb_field_bytes(2, tenant_id)
           + h.pb_field_bytes(5, "it"))
    deadline = int(time.time() * 1000) + 20000
    return (h.pb_field_varint(1, 1) + h.pb_field_varint(2, 1)
            + h.pb_field_bytes(3, service) + h.pb_field_bytes(4, method)
            + h.pb_field_varint(5, deadline) + h.pb_field_bytes(6, ctx)
            + h.pb_field_bytes(7, payload))


def call(endpoint, service, method, payload=b"", tenant_id="", timeout_ms=25000):
    reply = h.rpc_call(endpoint, ctx_request(service, method, payload, tenant_id),
                       timeout_ms)
    assert reply and len(reply) == 1, "no answer from %s %s" % (service, method)
    _, code, msg, out = h.pb_response(reply[0])
    return code, msg, out


def plan_msg(name, price):
    limits = b""
    for k in ("api_requests_per_minute", "max_projects", "max_api_keys", "storage_mb"):
        entry = h.pb_field_bytes(1, k) + h.pb_field_varint(2, 1000)
        limits += h.pb_field_bytes(4, entry)
    return (h.pb_field_bytes(1, name) + h.pb_field_bytes(2, name) + limits
            + h.pb_field_bytes(5, price))


# ------------------------------------------------------------------- fixture

class Env:
    def __init__(self):
        self.db = h.Database("klbill")
        self.stack = h.Stack(db=self.db)
        self.standin = subprocess.Popen(
            ["/usr/bin/python3", STANDIN, "--port", "0", "--secret-key", SK],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        line = self.standin.stdout.readline().decode()
        assert line.startswith("listening on "), line
        self.stripe = "http://127.0.0.1:%d" % int(line.split()[2])
        self.flags_ep = "tcp://127.0.0.1:%d" % h.free_port()
        self.billing_ep = "tcp://127.0.0.1:%d" % h.free_port()
        self.billing = None

    def start(self):
        self.stack.start_tenant()
        self.flags = self.start_service("flags", self.flags_ep, {
            "KOWLOON_DATABASE_URL": self.db.url,
            "KOWLOON_FLAGS_BIND": self.flags_ep,
            "KOWLOON_WORKERS": "2"})
        for name, price in (("starter", "price_it_starter"), ("pro", "price_it_pro")):
            code, msg, _ = call(self.flags_ep, FLAGS, "CreatePlan", plan_msg(name, price))
            if code == "ALREADY_EXISTS":
                code, msg, _ = call(self.flags_ep, FLAGS, "UpdatePlan",
                                    plan_msg(name, price))
            assert code == "OK", msg
        self.start_billing()
        return self

    def billing_env(self):
        e = self.stack.common_env()
        e.update({"KOWLOON_DATABASE_URL": self.db.url,
                  "KOWLOON_BILLING_BIND": self.billing_ep,
                  "KOWLOON_TENANT_ENDPOINTS": self.stack.tenant_endpoint,
                  "KOWLOON_FLAGS_ENDPOINTS": self.flags_ep,
                  "KOWLOON_STRIPE_API_BASE": self.stripe,
                  "KOWLOON_STRIPE_SECRET_KEY": SK,
                  "KOWLOON_STRIPE_WEBHOOK_SECRETS": "whsec_it_old," + WHSEC,
                  "KOWLOON_PAST_DUE_GRACE_S": str(GRACE_S),
                  "KOWLOON_CHECKOUT_SUCCESS_URL": "https://app.example.com/ok",
                  "KOWLOON_CHECKOUT_CANCEL_URL": "https://app.example.com/cancel",
                  "KOWLOON_PORTAL_RETURN_URL": "https://app.example.com/billing",
                  "KOWLOON_WORKERS": "4"})
        return e

    def start_service(self, kind, endpoint, envvars, name=None):
        e = self.stack.common_env()
        e.update(envvars)
        p = h.ExtraProc(kind, e, name=name or kind).start()
        self.stack.procs.append(p)

        def ready():
            if not p.alive():
                raise h.HarnessError("%s exited with status %s at start:\n%s"
                                     % (p.name, p.popen.returncode, p.tail()))
            return h.health_check(endpoint, 500) == "SERVING"
        h.wait_until(ready, 60, interval=0.1, what="%s SERVING" % p.name)
        return p

    def start_billing(self, name="billing"):
        self.billing = self.start_service("billing", self.billing_ep,
                                          self.billing_env(), name)
        return self.billing

    def stop(self):
        try:
            self.stack.stop()
        finally:
            self.standin.terminate()
            self.standin.wait(10)

    # -- the stand-in
    def control(self, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.stripe + path, data=data,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=20) as r:
            return json.loads(r.read())

    def objects(self, kind, tenant):
        return self.control("/_standin/objects?type=%s&tenant_id=%s" % (kind, tenant))["data"]

    def signed(self, type_, obj, created=None, **kw):
        spec = {"type": type_, "data": {"object": obj}, "secret": WHSEC,
                "deliver": False}
        if created is not None:
            spec["created"] = created
        spec.update(kw)
        return self.control("/_standin/deliver", spec)

    def webhook(self, ev):
        payload = (h.pb_field_bytes(1, ev["payload"].encode())
                   + h.pb_field_bytes(2, ev["header"]))
        return call(self.billing_ep, BILLING, "HandleWebhook", payload)

    # -- tenants
    def create_tenant(self, subdomain):
        req = h.pb_field_bytes(1, subdomain) + h.pb_field_bytes(2, subdomain)
        code, msg, out = call(self.stack.tenant_endpoint, h.TENANT_SERVICE, "Create", req)
        assert code == "OK", msg
        return h.pb_strings(out)[1]

    def tenant(self, tid):
        code, msg, out = call(self.stack.tenant_endpoint, h.TENANT_SERVICE, "Get",
                              h.pb_field_bytes(1, tid))
        assert code == "OK", msg
        return h.pb_strings(out)

    def wait_status(self, tid, status, timeout, plan=None):
        def ok():
            t = self.tenant(tid)
            return t.get(5) == status and (plan is None or t.get(4) == plan)
        h.wait_until(ok, timeout, interval=0.05,
                     what="tenant %s to be %s (is %s)" % (tid, status, self.tenant(tid)))

    def subscribe(self, tid, plan="starter"):
        req = h.pb_field_bytes(1, plan) + h.pb_field_bytes(2, "it@example.com")
        return call(self.billing_ep, BILLING, "StartSubscription", req, tenant_id=tid)


@pytest.fixture(scope="module")
def env():
    e = Env()
    try:
        e.start()
    except BaseException:
        try:
            e.stop()
        except h.HarnessError as err:
            print(err)
        raise
    yield e
    e.stop()


# --------------------------------------------------------------------- tests

def test_lifecycle_through_webhooks(env):
    tid = env.create_tenant(h.unique("life"))
    code, msg, out = env.subscribe(tid)
    assert code == "OK", msg
    b = h.pb_strings(out)
    assert b[6] == "trialing" and b[4] == "starter"
    cus = b[2]
    assert cus.startswith("cus_") and b[3].startswith("sub_")
    env.wait_status(tid, "trialing", 2)

    t0 = int(time.time())
    steps = [
        ("checkout.session.completed",
         {"id": "cs_test_it1", "object": "checkout.session", "mode": "subscription",
          "client_reference_id": tid, "customer": cus, "subscription": "sub_it_paid",
          "payment_status": "paid", "metadata": {"tenant_id": tid, "plan": "pro"}},
         "active", "pro"),
        ("invoice.payment_failed",
         {"id": "in_it1", "object": "invoice", "customer": cus,
          "subscription": "sub_it_paid", "amount_paid": 0},
         "past_due", "pro"),
    ]
    for i, (type_, obj, status, plan) in enumerate(steps):
        code, msg, _ = env.webhook(env.signed(type_, obj, created=t0 + 1 + i))
        assert code == "OK", msg
        env.wait_status(tid, status, 1.5, plan)
    # The grace is 2 s; the sweeper runs every 5 s.
    env.wait_status(tid, "suspended", GRACE_S + 8)
    code, msg, _ = env.webhook(env.signed(
        "invoice.payment_succeeded",
        {"id": "in_it1", "object": "invoice", "customer": cus,
         "subscription": "sub_it_paid", "amount_paid": 2900},
        created=t0 + 10))
    assert code == "OK", msg
    env.wait_status(tid, "active", 1.5, "pro")


def test_signature_refusals(env):
    obj = {"id": "in_x", "object": "invoice"}
    cases = [({"timestamp_offset": -301}, "timestamp outside tolerance"),
             ({"scheme": "v0"}, "no v1 signature in header"),
             ({"tamper": True}, "no matching signature"),
             ({"secret": "whsec_not_ours"}, "no matching signature")]
    for kw, reason in cases:
        code, msg, _ = env.webhook(env.signed("invoice.paid", obj, **kw))
        assert (code, msg) == ("INVALID_ARGUMENT", reason)
    ev = env.signed("invoice.paid", obj)
    ev["header"] = ""
    assert env.webhook(ev)[:2] == ("INVALID_ARGUMENT", "no signature")
    # The old secret of a rotation still verifies; a repeat is a duplicate.
    ev = env.signed("customer.subscription.trial_will_end", {"id": "sub_none"},
                    secret="whsec_it_old", scheme="both")
    assert env.webhook(ev)[0] == "OK"
    code, _, out = env.webhook(ev)
    assert code == "OK" and h.pb_decode(out).get(2) == [1]


def test_killed_between_stripe_and_database(env):
    tid = env.create_tenant(h.unique("kill"))
    # Stripe makes the customer, then answers 3 s late: billing is killed
    # while it waits, before it could write the customer down.
    env.control("/_standin/fail", {"status": 0, "delay_after_ms": 3000, "count": 1,
                                   "path": "/v1/customers"})
    proc = env.billing
    req = h.pb_field_bytes(1, "starter")
    import zmq
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(env.billing_ep)
    s.send(ctx_request(BILLING, "StartSubscription", req, tid))
    h.wait_until(lambda: len(env.objects("customer", tid)) == 1, 5,
                 what="the stand-in to make the customer")
    proc.kill()
    s.close()
    assert len(env.objects("customer", tid)) == 1
    # Restarted, the same call completes with the stored key and body.
    env.start_billing(name="billing-restarted")
    code, msg, out = env.subscribe(tid)
    assert code == "OK", msg
    assert len(env.objects("customer", tid)) == 1
    assert len(env.objects("subscription", tid)) == 1
    reqs = [r for r in env.control("/_standin/requests")["data"]
            if r["path"] == "/v1/customers" and r["replayed"]]
    assert reqs, "the retry was not an idempotent replay"
    assert all(r["version"] == "2024-06-20" for r in env.control("/_standin/requests")["data"])


def test_refuses_to_start_without_stripe_settings(env):
    e = env.billing_env()
    del e["KOWLOON_STRIPE_SECRET_KEY"]
    full = h.base_env()
    full.update(e)
    path = os.path.join(h.env("KLTEST_BUILD_DIR"), h._EXTRA_BINARIES["billing"])
    r = subprocess.run([path], env=full, capture_output=True, timeout=30)
    assert r.returncode == 2
    assert b"KOWLOON_STRIPE_SECRET_KEY" in r.stderr
    assert SK.encode() not in r.stderr
