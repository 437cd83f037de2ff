"""Billing through kowloon-gateway: real tenant, flags, billing and gateway
processes, with the Stripe stand-in delivering signed webhooks to the
gateway's POST /webhooks/stripe.

- The whole life over HTTP: admin creates a tenant and a key; the tenant
  signs up (trialing); checkout.session.completed makes it active,
  invoice.payment_failed past_due; once the grace is over it gets 402 on
  its routes but keeps its billing routes; invoice.payment_succeeded makes
  it active again. Each change shows at the gateway within 1 s.
- Unsigned, tampered and expired webhooks are 400 with no effect; a
  duplicate is 200 and changes nothing; a webhook on a tenant host is 404.
- The plan in a billing body is the one asked for (not the tenant's own);
  bearer URLs of Checkout and the Portal never reach the gateway's log.
- The same invoice event posted 20 times at once is one effect; invoice
  events delivered newest first end in the newest one's state.
- Billing down: the webhook is 5xx so that Stripe delivers it again.
"""

import concurrent.futures
import json
import time
import urllib.request

import pytest

import harness as h

SK = "sk_test_it_billing_gw"
WHSEC = "whsec_it_billing_gw_secret"
GRACE_S = 2
# A change made by a webhook is visible at the gateway within this.
VISIBLE_S = 1.0


class BillingStack(h.ProductStack):
    """Tenant, flags, billing and a gateway, plus the Stripe stand-in."""

    def __init__(self):
        self.standin, self.stripe = h.start_stripe_standin(SK)
        try:
            super().__init__()
        except BaseException:
            self.stop_standin()
            raise
        self.billing_endpoint = "tcp://127.0.0.1:%d" % h.free_port()
        self.billing = None

    def gateway_envvars(self, port, extra=None):
        e = super().gateway_envvars(port)
        e.update({"KOWLOON_BILLING_ENDPOINTS": self.billing_endpoint,
                  "KOWLOON_PAST_DUE_GRACE_S": str(GRACE_S)})
        e.update(extra or {})
        return e

    def start_billing(self, name="billing"):
        return self._start_service("billing", self.billing_endpoint, {
            "KOWLOON_DATABASE_URL": self.db.url,
            "KOWLOON_BILLING_BIND": self.billing_endpoint,
            "KOWLOON_TENANT_ENDPOINTS": self.tenant_endpoint,
            "KOWLOON_FLAGS_ENDPOINTS": self.flags_endpoint,
            "KOWLOON_STRIPE_API_BASE": self.stripe,
            "KOWLOON_STRIPE_SECRET_KEY": SK,
            "KOWLOON_STRIPE_WEBHOOK_SECRETS": WHSEC,
            "KOWLOON_PAST_DUE_GRACE_S": str(GRACE_S),
            "KOWLOON_CHECKOUT_SUCCESS_URL": "https://app.example.com/ok",
            "KOWLOON_CHECKOUT_CANCEL_URL": "https://app.example.com/cancel",
            "KOWLOON_PORTAL_RETURN_URL": "https://app.example.com/billing",
            "KOWLOON_WORKERS": "4"}, name)

    def start(self):
        self.tenant = self.start_tenant()
        self.flags = self.start_flags()
        self.gateway = self.start_gateway()
        self.http_port = self.gateway.port
        # Plans sold on Stripe, with a rate no polling test reaches.
        for name in ("starter", "pro"):
            r = self.admin("GET", "/admin/v1/plans/" + name)
            assert r.status == 200, r
            plan = r.json
            plan["stripePriceIds"] = ["price_it_gw_" + name]
            plan["limits"] = dict(plan.get("limits") or {},
                                  api_requests_per_minute="-1")
            for k in ("createdAt", "updatedAt", "builtin"):
                plan.pop(k, None)
            r = self.admin("PATCH", "/admin/v1/plans/" + name, plan)
            assert r.status == 200, r
        self.billing = self.start_billing()
        return self

    def stop_standin(self):
        self.standin.terminate()
        self.standin.wait(10)

    def stop(self, drop_db=True):
        try:
            super().stop(drop_db=drop_db)
        finally:
            self.stop_standin()

    # -- the stand-in
    def control(self, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.stripe + path, data=data,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=20) as r:
            return json.loads(r.read())

    def webhook_url(self, host="localhost"):
        return "http://%s:%d/webhooks/stripe" % (host, self.http_port)

    def deliver(self, type_, obj, **kw):
        """The stand-in signs the event and POSTs it to the gateway; returns
        {"id", "status", "body"} of the gateway's answer."""
        spec = {"type": type_, "data": {"object": obj}, "secret": WHSEC,
                "url": self.webhook_url()}
        spec.update(kw)
        return self.control("/_standin/deliver", spec)

    def post_webhook(self, payload, signature=None, host="localhost"):
        headers = [("Content-Type", "application/json")]
        if signature is not None:
            headers.append(("Stripe-Signature", signature))
        return self.req("POST", "/webhooks/stripe", host=host,
                        body=payload, headers=headers)


@pytest.fixture(scope="module")
def st():
    s = BillingStack()
    try:
        s.start()
    except BaseException:
        try:
            s.stop()
        except h.HarnessError as e:
            print(e)
        raise
    yield s
    s.stop()


@pytest.fixture(scope="module")
def subscribed(st):
    """A tenant with a key, signed up over HTTP: trialing on starter."""
    t, key = st.tenant_with_key("bgw")
    sub = t["subdomain"]
    r = st.api(sub, key, "POST", "/api/v1/billing/subscription",
               {"plan": "starter", "email": "it@example.com"})
    assert r.status == 200, r
    assert r.json["tenantStatus"] == "trialing", r
    assert r.json["subscriptionStatus"] == "trialing", r
    assert r.json["plan"] == "starter", r
    assert r.json["customerId"].startswith("cus_"), r
    assert r.json["subscriptionId"].startswith("sub_"), r
    return {"id": t["id"], "sub": sub, "key": key,
            "customer": r.json["customerId"]}


def tenant_view(st, t):
    return st.api(t["sub"], t["key"], "GET", "/api/v1/tenant")


def wait_gateway(st, t, status, plan=None, http=200, timeout=VISIBLE_S):
    """Waits until GET /api/v1/tenant answers http (and, on 200, status and
    plan); returns the seconds it took."""
    t0 = time.monotonic()

    def ok():
        r = tenant_view(st, t)
        if r.status != http:
            return False
        if http != 200:
            return True
        return r.json["status"] == status and (plan is None or r.json["plan"] == plan)
    h.wait_until(ok, timeout, interval=0.02,
                 what="GET /api/v1/tenant to answer %s %s (last: %r)"
                 % (http, status, tenant_view(st, t)))
    return time.monotonic() - t0


def billing_view(st, t):
    r = st.api(t["sub"], t["key"], "GET", "/api/v1/billing")
    assert r.status == 200, r
    return r.json


# --------------------------------------------------------------------- tests

def test_routes_and_plan_from_the_body(st, subscribed):
    t = subscribed
    b = billing_view(st, t)
    assert (b["tenantId"], b["plan"], b["tenantStatus"]) == (t["id"], "starter", "trialing")
    # The tenant's view shows the trial; signing up again is a conflict.
    assert wait_gateway(st, t, "trialing", "starter") < VISIBLE_S
    r = st.api(t["sub"], t["key"], "POST", "/api/v1/billing/subscription",
               {"plan": "starter"})
    assert r.status == 409 and r.json["error"]["code"] == "ALREADY_EXISTS", r
    # Checkout for another plan than the tenant's: the plan of the body
    # reaches billing (the gateway forces only the tenant's identity).
    r = st.api(t["sub"], t["key"], "POST", "/api/v1/billing/checkout", {"plan": "pro"})
    assert r.status == 200, r
    checkout_url = r.json["url"]
    assert r.json["id"].startswith("cs_test_") and checkout_url.startswith(
        "https://checkout.stripe.com/"), r
    sessions = st.control("/_standin/objects?type=checkout.session&tenant_id=%s" % t["id"])["data"]
    assert [s["metadata"].get("plan") for s in sessions] == ["pro"], sessions
    r = st.api(t["sub"], t["key"], "POST", "/api/v1/billing/portal")
    assert r.status == 200, r
    portal_url = r.json["url"]
    assert portal_url.startswith("https://billing.stripe.com/"), r
    r = st.api(t["sub"], t["key"], "POST", "/api/v1/billing/alipay",
               {"amount": 5000, "currency": "usd", "periodDays": 30,
                "returnUrl": "https://app.example.com/billing/alipay-done"})
    assert r.status == 200, r
    assert r.json["paymentIntentId"].startswith("pi_"), r
    alipay_url = r.json["redirectUrl"]
    assert alipay_url, r
    # Bad input is billing's 400, through the standard error body.
    r = st.api(t["sub"], t["key"], "POST", "/api/v1/billing/checkout", {"plan": "nope"})
    assert r.status == 404, r
    assert r.json["error"] == {"code": "NOT_FOUND", "message": 'plan "nope" not found'}, r
    # Bearer URLs are never logged (the gateway logs no bodies).
    log = st.gateway.log()
    for url in (checkout_url, portal_url, alipay_url):
        assert url not in log
        assert url.split("#")[0].rsplit("/", 1)[-1] not in log
    # Billing routes authenticate like every tenant route.
    r = st.api(t["sub"], None, "GET", "/api/v1/billing")
    assert r.status == 401, r
    # The admin's view of the same tenant.
    r = st.admin("GET", "/admin/v1/tenants/%s/billing" % t["id"])
    assert r.status == 200, r
    assert r.json["tenantId"] == t["id"] and r.json["customerId"] == t["customer"], r
    r = st.admin("GET", "/admin/v1/tenants/%s/billing" % t["id"], token=None)
    assert r.status == 401, r


def test_life_through_webhooks(st, subscribed):
    t = subscribed
    t0 = int(time.time())
    sub_id = "sub_it_gw_paid"
    # Paid at Checkout: active on pro.
    d = st.deliver("checkout.session.completed",
                   {"id": "cs_test_it_gw1", "object": "checkout.session",
                    "mode": "subscription", "client_reference_id": t["id"],
                    "customer": t["customer"], "subscription": sub_id,
                    "payment_status": "paid",
                    "metadata": {"tenant_id": t["id"], "plan": "pro"}},
                   created=t0 + 1)
    assert (d["status"], d["body"]) == (200, '{"received":true}'), d
    assert wait_gateway(st, t, "active", "pro") < VISIBLE_S

    # The payment fails: past_due, still served during the grace.
    failed_id = "evt_it_gw_failed_%d" % t0
    failed = {"id": "in_it_gw1", "object": "invoice", "customer": t["customer"],
              "subscription": sub_id, "amount_paid": 0}
    d = st.deliver("invoice.payment_failed", failed, created=t0 + 2, id=failed_id)
    assert d["status"] == 200, d
    assert wait_gateway(st, t, "past_due", "pro") < VISIBLE_S

    # Grace over: 402 everywhere but billing; then suspended by billing.
    wait_gateway(st, t, None, http=402, timeout=GRACE_S + 2)
    r = tenant_view(st, t)
    assert r.json["error"] == {"code": "FAILED_PRECONDITION",
                               "message": "payment overdue"}, r
    h.wait_until(lambda: tenant_view(st, t).json["error"]["message"] == "tenant is suspended",
                 GRACE_S + 10, interval=0.1, what="the gateway to see the suspension")
    for method, path in (("GET", "/api/v1/entitlements"), ("GET", "/api/v1/usage"),
                         ("GET", "/api/v1/projects"), ("GET", "/api/v1/no-such-route"),
                         ("POST", "/api/v1/billing")):
        r = st.api(t["sub"], t["key"], method, path)
        assert r.status == 402, (method, path, r)
    # No key: the billing route still answers 401, any other 402 first.
    assert st.api(t["sub"], None, "GET", "/api/v1/billing").status == 401
    assert st.api(t["sub"], None, "GET", "/api/v1/tenant").status == 402
    b = billing_view(st, t)
    assert (b["tenantStatus"], b["subscriptionStatus"]) == ("suspended", "past_due"), b
    assert b["pastDueSince"], b
    r = st.api(t["sub"], t["key"], "POST", "/api/v1/billing/portal")
    assert r.status == 200 and r.json["url"], r

    # Paid: active again, within a second.
    d = st.deliver("invoice.payment_succeeded",
                   dict(failed, amount_paid=2900), created=t0 + 10)
    assert d["status"] == 200, d
    assert wait_gateway(st, t, "active", "pro") < VISIBLE_S
    assert billing_view(st, t)["tenantStatus"] == "active"

    # The failure delivered again (Stripe retries): 200, nothing done.
    d = st.deliver("invoice.payment_failed", failed, created=t0 + 2, id=failed_id)
    assert (d["status"], d["body"]) == (200, '{"received":true}'), d
    time.sleep(VISIBLE_S)
    r = tenant_view(st, t)
    assert r.status == 200 and r.json["status"] == "active", r


def test_refused_webhooks_change_nothing(st, subscribed):
    t = subscribed
    before = billing_view(st, t)
    failed = {"id": "in_it_gw_refused", "object": "invoice",
              "customer": t["customer"], "subscription": before["subscriptionId"],
              "amount_paid": 0}
    cases = [({"timestamp_offset": -301}, "timestamp outside tolerance"),
             ({"tamper": True}, "no matching signature"),
             ({"secret": "whsec_not_ours"}, "no matching signature")]
    for kw, reason in cases:
        d = st.deliver("invoice.payment_failed", failed, **kw)
        assert d["status"] == 400, (kw, d)
        assert json.loads(d["body"])["error"] == {"code": "INVALID_ARGUMENT",
                                                  "message": reason}, (kw, d)
    # Unsigned: a correct body without Stripe-Signature.
    ev = st.control("/_standin/deliver", {"type": "invoice.payment_failed",
                                          "data": {"object": failed},
                                          "secret": WHSEC, "deliver": False})
    r = st.post_webhook(ev["payload"])
    assert r.status == 400, r
    assert r.json["error"] == {"code": "INVALID_ARGUMENT", "message": "no signature"}, r
    assert r.header("X-Request-Id")
    # One byte changed after signing.
    r = st.post_webhook(ev["payload"].replace('"livemode":false', '"livemode":true '),
                        ev["header"])
    assert r.status == 400 and r.json["error"]["message"] == "no matching signature", r
    time.sleep(VISIBLE_S)
    r = tenant_view(st, t)
    assert r.status == 200 and r.json["status"] == before["tenantStatus"], r
    assert billing_view(st, t)["tenantStatus"] == before["tenantStatus"]
    # A harmless event signed and sent as is: accepted, so the refusals
    # above were the signature's; sent again, a duplicate: 200, no-op.
    ev = st.control("/_standin/deliver", {
        "type": "customer.subscription.trial_will_end",
        "data": {"object": {"id": "sub_none"}}, "secret": WHSEC, "deliver": False})
    r = st.post_webhook(ev["payload"], ev["header"])
    assert r.status == 200 and r.json == {"received": True}, r
    r = st.post_webhook(ev["payload"], ev["header"])
    assert r.status == 200 and r.json == {"received": True}, r


def test_webhook_route_is_the_apex_only(st, subscribed):
    t = subscribed
    ev = st.control("/_standin/deliver", {"type": "invoice.paid",
                                          "data": {"object": {"id": "in_x"}},
                                          "secret": WHSEC, "deliver": False})
    r = st.post_webhook(ev["payload"], ev["header"], host="%s.localhost" % t["sub"])
    assert r.status == 404, r
    assert r.json["error"]["code"] == "NOT_FOUND", r
    r = st.req("GET", "/webhooks/stripe")
    assert r.status == 405 and r.header("Allow") == "POST", r
    # Larger than KOWLOON_HTTP_MAX_BODY_BYTES (1 MiB): 413.
    r = st.post_webhook(b"x" * (1024 * 1024 + 1), ev["header"])
    assert r.status == 413, r


def test_invoices_at_once_and_newest_first(st):
    """Invoice webhooks take billing's two-round-trip intake (the inbox
    statement reads and locks the subscription row): the same payment
    failure posted 20 times at once is recorded once with one effect, and
    payments delivered newest first leave the newest one's state."""
    t, key = st.tenant_with_key("bgwc")
    r = st.api(t["subdomain"], key, "POST", "/api/v1/billing/subscription",
               {"plan": "starter", "email": "it@example.com"})
    assert r.status == 200, r
    me = {"id": t["id"], "sub": t["subdomain"], "key": key,
          "customer": r.json["customerId"]}
    t0 = int(time.time())
    sub_id = "sub_it_gw_conc"
    d = st.deliver("checkout.session.completed",
                   {"id": "cs_test_it_gw_conc", "object": "checkout.session",
                    "mode": "subscription", "client_reference_id": me["id"],
                    "customer": me["customer"], "subscription": sub_id,
                    "payment_status": "paid",
                    "metadata": {"tenant_id": me["id"], "plan": "pro"}},
                   created=t0 + 1)
    assert d["status"] == 200, d
    wait_gateway(st, me, "active", "pro")

    invoice = {"id": "in_it_gw_conc", "object": "invoice",
               "customer": me["customer"], "subscription": sub_id,
               "amount_paid": 0}
    ev = st.control("/_standin/deliver", {
        "type": "invoice.payment_failed", "data": {"object": invoice},
        "secret": WHSEC, "deliver": False, "created": t0 + 2})
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: st.post_webhook(ev["payload"], ev["header"]),
                                range(20)))
    assert [a.status for a in answers] == [200] * 20, answers
    wait_gateway(st, me, "past_due", "pro")
    q = lambda sql: h.psql(sql, st.db.url).strip()
    assert q("SELECT count(*) FROM billing.events WHERE id = '%s'" % ev["id"]) == "1"
    assert q("SELECT count(*) FROM billing.outbox WHERE event_id = '%s'" % ev["id"]) == "1"

    # Newest first: the payment (t0 + 4), then an older failure (t0 + 3).
    d = st.deliver("invoice.payment_succeeded", dict(invoice, amount_paid=2900),
                   created=t0 + 4)
    assert d["status"] == 200, d
    d = st.deliver("invoice.payment_failed", invoice, created=t0 + 3)
    assert d["status"] == 200, d
    wait_gateway(st, me, "active", "pro")
    time.sleep(VISIBLE_S)
    r = tenant_view(st, me)
    assert r.status == 200 and r.json["status"] == "active", r
    b = billing_view(st, me)
    assert (b["subscriptionStatus"], b["tenantStatus"]) == ("active", "active"), b
    assert q("SELECT outcome FROM billing.events WHERE id = '%s'" % d["id"]).endswith(
        "older than the state it would change")


def test_many_tenants_invoices_at_once(st):
    """Payment failures of several tenants posted at once, each three
    times, through the gateway to billing: billing records deliveries that
    arrive together in one transaction (group commit, docs/billing.md), and
    each event is still recorded once, with one effect, every delivery
    answered 200, every tenant past_due."""
    t0 = int(time.time())
    tenants = []
    for i in range(4):
        t, key = st.tenant_with_key("bgwm%d" % i)
        r = st.api(t["subdomain"], key, "POST", "/api/v1/billing/subscription",
                   {"plan": "starter", "email": "it@example.com"})
        assert r.status == 200, r
        me = {"id": t["id"], "sub": t["subdomain"], "key": key,
              "customer": r.json["customerId"], "subscription": "sub_it_gw_many%d" % i}
        d = st.deliver("checkout.session.completed",
                       {"id": "cs_test_it_gw_many%d" % i, "object": "checkout.session",
                        "mode": "subscription", "client_reference_id": me["id"],
                        "customer": me["customer"], "subscription": me["subscription"],
                        "payment_status": "paid",
                        "metadata": {"tenant_id": me["id"], "plan": "pro"}},
                       created=t0 + 1)
        assert d["status"] == 200, d
        tenants.append(me)
    for me in tenants:
        wait_gateway(st, me, "active", "pro")
    events = []
    for i, me in enumerate(tenants):
        events.append(st.control("/_standin/deliver", {
            "type": "invoice.payment_failed",
            "data": {"object": {"id": "in_it_gw_many%d" % i, "object": "invoice",
                                "customer": me["customer"],
                                "subscription": me["subscription"],
                                "amount_paid": 0}},
            "secret": WHSEC, "deliver": False, "created": t0 + 2}))
    posts = [ev for ev in events for _ in range(3)]
    with concurrent.futures.ThreadPoolExecutor(len(posts)) as pool:
        answers = list(pool.map(lambda ev: st.post_webhook(ev["payload"], ev["header"]),
                                posts))
    assert [a.status for a in answers] == [200] * len(posts), answers
    q = lambda sql: h.psql(sql, st.db.url).strip()
    for ev, me in zip(events, tenants):
        assert q("SELECT count(*) FROM billing.events WHERE id = '%s'" % ev["id"]) == "1"
        assert q("SELECT count(*) FROM billing.outbox WHERE event_id = '%s'" % ev["id"]) == "1"
        wait_gateway(st, me, "past_due", "pro")
        b = billing_view(st, me)
        assert (b["subscriptionStatus"], b["tenantStatus"]) == ("past_due", "past_due"), b


def test_billing_down_is_5xx(st):
    ev = st.control("/_standin/deliver", {"type": "invoice.paid",
                                          "data": {"object": {"id": "in_down"}},
                                          "secret": WHSEC, "deliver": False})
    st.billing.kill()
    r = st.post_webhook(ev["payload"], ev["header"])
    assert r.status in (503, 504), r
    assert r.json["error"]["code"] in ("UNAVAILABLE", "DEADLINE_EXCEEDED"), r
