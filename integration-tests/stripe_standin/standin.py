#!/usr/bin/env python3
"""A Stripe stand-in for Kowloon's tests: the subset of the Stripe HTTP API
that services/billing uses, with Stripe's JSON shapes, id prefixes, error
objects and status codes, idempotency keys, failure injection, and webhook
events signed exactly as Stripe signs them.

Python 3 standard library only.

    standin.py --port 0 --secret-key sk_test_x [--host 127.0.0.1]

prints "listening on <port>" on stdout once it serves.

API (form-encoded, Authorization: Bearer <secret key>):
    POST /v1/customers              GET /v1/customers/{id}
    POST /v1/subscriptions          GET|POST|DELETE /v1/subscriptions/{id}
    POST /v1/checkout/sessions      POST /v1/billing_portal/sessions
    POST /v1/payment_intents        GET /v1/payment_intents/{id}
    POST /v1/prices                 GET /v1/prices/{id}

Control (JSON, no auth; for tests only):
    POST /_standin/fail      {"status": 500, "count": 1, "retry_after": 1,
                              "path": "/v1/customers", "delay_ms": 0,
                              "delay_after_ms": 0}
                             the next count matching requests fail before
                             anything is executed (nothing saved), or wait
                             delay_ms first (with status 0: then succeed);
                             delay_after_ms (status 0) executes and saves
                             the request, then answers that much later
    POST /_standin/reset     forget failures (objects stay)
    GET  /_standin/objects?type=customer[&tenant_id=..]   {"data": [...]}
    GET  /_standin/requests  every API request seen: method, path,
                             idempotency_key, replayed, status, version
    POST /_standin/deliver   {"type": "invoice.paid", "data": {"object": {}},
                              "url": "http://...", "secret": "whsec_...",
                              "timestamp_offset": -299, "scheme": "v1",
                              "tamper": false, "created": 1700000000,
                              "id": "evt_...", "deliver": true}
                             builds the event, signs it (Stripe-Signature:
                             t=..,v1=..; scheme v0 / both / v1), and POSTs it
                             to url; with "deliver": false (or no url) it
                             returns {"payload", "header", "id"} for the
                             test to deliver itself.
"""

import argparse
import hashlib
import hmac
import json
import secrets
import string
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

IDEMPOTENCY_TTL_S = 24 * 3600
ALIPAY_CURRENCIES = {"aud", "cad", "eur", "gbp", "hkd", "jpy", "myr", "nzd",
                     "sgd", "usd"}
ZERO_DECIMAL = {"jpy", "krw", "vnd", "clp", "pyg", "xof", "xaf", "ugx"}


def new_id(prefix, n=24):
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(n))


class StripeError(Exception):
    def __init__(self, status, type_, message, code=None, param=None):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"type": type_, "message": message}}
        if code:
            self.body["error"]["code"] = code
        if param:
            self.body["error"]["param"] = param


def missing(param):
    return StripeError(400, "invalid_request_error",
                       "Missing required param: %s." % param,
                       "parameter_missing", param)


def no_such(kind, id_, param):
    return StripeError(404, "invalid_request_error",
                       "No such %s: '%s'" % (kind, id_), "resource_missing",
                       param)


def parse_form(body):
    """Stripe's nested form keys: a[b][c]=v, a[]=v, a[0][b]=v."""
    out = {}
    for key, value in urllib.parse.parse_qsl(body, keep_blank_values=True,
                                             strict_parsing=False):
        parts = []
        head, sep, rest = key.partition("[")
        parts.append(head)
        while sep:
            inner, _, rest = rest.partition("]")
            parts.append(inner)
            _, sep, rest = rest.partition("[")
        node = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            nxt_is_list = not last and (parts[i + 1] == "" or
                                        parts[i + 1].isdigit())
            if isinstance(node, list):
                if part == "":
                    if last:
                        node.append(value)
                        break
                    node.append([] if nxt_is_list else {})
                    node = node[-1]
                    continue
                idx = int(part)
                while len(node) <= idx:
                    node.append(None)
                if last:
                    node[idx] = value
                    break
                if node[idx] is None:
                    node[idx] = [] if nxt_is_list else {}
                node = node[idx]
                continue
            if last:
                node[part] = value
                break
            if part not in node:
                node[part] = [] if nxt_is_list else {}
            node = node[part]
    return out


class State:
    def __init__(self, secret_key):
        self.secret_key = secret_key
        self.lock = threading.Lock()
        self.objects = {}          # id -> object
        self.idem = {}             # key -> dict(fingerprint, status, body, at)
        self.in_flight = set()     # idempotency keys executing
        self.failures = []         # injected failures
        self.requests = []         # request log

    def add(self, obj):
        self.objects[obj["id"]] = obj
        return obj

    def get(self, id_, kind, param="id"):
        obj = self.objects.get(id_)
        if not obj or obj["object"] != kind:
            raise no_such(kind, id_, param)
        return obj


# -------------------------------------------------------------- API objects

def metadata(params):
    md = params.get("metadata", {})
    if not isinstance(md, dict):
        raise StripeError(400, "invalid_request_error",
                          "Invalid object", "parameter_invalid_empty",
                          "metadata")
    return md


def int_param(params, name, required=False, minimum=None):
    if name not in params:
        if required:
            raise missing(name)
        return None
    try:
        v = int(params[name])
    except (TypeError, ValueError):
        raise StripeError(400, "invalid_request_error",
                          "Invalid integer: %s" % params[name],
                          "parameter_invalid_integer", name)
    if minimum is not None and v < minimum:
        raise StripeError(400, "invalid_request_error",
                          "This value must be greater than or equal to %d."
                          % minimum, "parameter_invalid_integer", name)
    return v


def price_obj(st, price_id):
    if not price_id.startswith("price_"):
        raise no_such("price", price_id, "price")
    p = st.objects.get(price_id)
    if not p:
        p = st.add({"id": price_id, "object": "price", "active": True,
                    "currency": "usd", "unit_amount": 1000,
                    "recurring": {"interval": "month", "interval_count": 1},
                    "type": "recurring", "livemode": False,
                    "created": int(time.time()), "metadata": {}})
    return p


def create_customer(st, params):
    now = int(time.time())
    return st.add({"id": new_id("cus_", 14), "object": "customer",
                   "created": now, "email": params.get("email"),
                   "name": params.get("name"), "metadata": metadata(params),
                   "livemode": False, "balance": 0, "currency": None,
                   "description": params.get("description"),
                   "invoice_settings": {"default_payment_method": None}})


def sub_item(st, sub_id, price_id):
    return {"id": new_id("si_", 14), "object": "subscription_item",
            "price": price_obj(st, price_id), "quantity": 1,
            "subscription": sub_id, "created": int(time.time())}


def create_subscription(st, params):
    cus = params.get("customer")
    if not cus:
        raise missing("customer")
    st.get(cus, "customer", "customer")
    items = params.get("items")
    if not isinstance(items, list) or not items or not items[0] or \
            not items[0].get("price"):
        raise missing("items")
    now = int(time.time())
    sub_id = new_id("sub_", 14)
    trial = int_param(params, "trial_period_days", minimum=0)
    method = params.get("collection_method", "charge_automatically")
    if method not in ("charge_automatically", "send_invoice"):
        raise StripeError(400, "invalid_request_error",
                          "Invalid collection_method", "parameter_invalid",
                          "collection_method")
    due = int_param(params, "days_until_due", minimum=0)
    if method == "send_invoice" and due is None:
        raise StripeError(400, "invalid_request_error",
                          "days_until_due is required when collection_method"
                          " is send_invoice", "parameter_missing",
                          "days_until_due")
    if trial:
        status = "trialing"
    elif method == "send_invoice":
        status = "active"
    elif params.get("payment_behavior") == "default_incomplete":
        status = "incomplete"
    else:
        raise StripeError(402, "card_error",
                          "This customer has no attached payment source or "
                          "default payment method.", "resource_missing")
    period_end = now + (trial or 30) * 86400
    sub = {"id": sub_id, "object": "subscription", "customer": cus,
           "status": status, "created": now, "start_date": now,
           "collection_method": method, "days_until_due": due,
           "cancel_at_period_end": False, "canceled_at": None,
           "current_period_start": now, "current_period_end": period_end,
           "trial_start": now if trial else None,
           "trial_end": period_end if trial else None,
           "metadata": metadata(params), "livemode": False,
           "items": {"object": "list", "has_more": False,
                     "url": "/v1/subscription_items?subscription=" + sub_id,
                     "data": [sub_item(st, sub_id, it["price"])
                              for it in items if it]}}
    return st.add(sub)


def update_subscription(st, sub_id, params):
    sub = st.get(sub_id, "subscription")
    if sub["status"] in ("canceled", "incomplete_expired"):
        raise StripeError(400, "invalid_request_error",
                          "A canceled subscription can only update its "
                          "cancellation_details and metadata.")
    for it in params.get("items") or []:
        if not it:
            continue
        item = next((x for x in sub["items"]["data"]
                     if x["id"] == it.get("id")), None)
        if it.get("id") and not item:
            raise no_such("subscription_item", it["id"], "items")
        if item and it.get("price"):
            item["price"] = price_obj(st, it["price"])
        elif not item and it.get("price"):
            sub["items"]["data"].append(sub_item(st, sub_id, it["price"]))
    pb = params.get("proration_behavior")
    if pb and pb not in ("create_prorations", "none", "always_invoice"):
        raise StripeError(400, "invalid_request_error",
                          "Invalid proration_behavior", "parameter_invalid",
                          "proration_behavior")
    if "cancel_at_period_end" in params:
        sub["cancel_at_period_end"] = params["cancel_at_period_end"] == "true"
    sub["metadata"].update(metadata(params))
    return sub


def create_checkout(st, params):
    mode = params.get("mode")
    if mode not in ("payment", "setup", "subscription"):
        raise missing("mode")
    for u in ("success_url",):
        if not params.get(u):
            raise missing(u)
    pmt = params.get("payment_method_types") or []
    if mode != "payment" and "alipay" in pmt:
        raise StripeError(400, "invalid_request_error",
                          "The payment method type alipay is not supported "
                          "in %s mode." % mode, "parameter_invalid",
                          "payment_method_types")
    items = params.get("line_items")
    if mode != "setup" and (not isinstance(items, list) or not items):
        raise missing("line_items")
    for it in items or []:
        price_obj(st, (it or {}).get("price", ""))
    if params.get("customer"):
        st.get(params["customer"], "customer", "customer")
    cs_id = new_id("cs_test_", 58)
    return st.add({"id": cs_id, "object": "checkout.session", "mode": mode,
                   "url": "https://checkout.stripe.com/c/pay/" + cs_id +
                          "#" + secrets.token_urlsafe(24),
                   "client_reference_id": params.get("client_reference_id"),
                   "customer": params.get("customer"),
                   "metadata": metadata(params), "status": "open",
                   "payment_status": "unpaid",
                   "success_url": params.get("success_url"),
                   "cancel_url": params.get("cancel_url"),
                   "subscription": None, "livemode": False,
                   "created": int(time.time()),
                   "expires_at": int(time.time()) + 86400})


def create_portal(st, params):
    cus = params.get("customer")
    if not cus:
        raise missing("customer")
    st.get(cus, "customer", "customer")
    bps = new_id("bps_", 24)
    return st.add({"id": bps, "object": "billing_portal.session",
                   "customer": cus, "return_url": params.get("return_url"),
                   "url": "https://billing.stripe.com/p/session/test_" +
                          secrets.token_urlsafe(32),
                   "livemode": False, "created": int(time.time())})


def create_payment_intent(st, params):
    amount = int_param(params, "amount", required=True, minimum=1)
    if amount > 99999999:
        raise StripeError(400, "invalid_request_error",
                          "Amount must be no more than 99999999",
                          "amount_too_large", "amount")
    cur = params.get("currency")
    if not cur:
        raise missing("currency")
    pmt = params.get("payment_method_types") or ["card"]
    if "alipay" in pmt and cur not in ALIPAY_CURRENCIES:
        raise StripeError(400, "invalid_request_error",
                          "The currency provided (%s) is invalid for one or "
                          "more payment method types on this PaymentIntent."
                          % cur, "parameter_invalid", "currency")
    if params.get("customer"):
        st.get(params["customer"], "customer", "customer")
    pi_id = new_id("pi_", 24)
    pi = {"id": pi_id, "object": "payment_intent", "amount": amount,
          "currency": cur, "payment_method_types": pmt,
          "client_secret": pi_id + "_secret_" + secrets.token_urlsafe(18),
          "customer": params.get("customer"),
          "metadata": metadata(params), "status": "requires_payment_method",
          "next_action": None, "livemode": False,
          "created": int(time.time())}
    if params.get("confirm") == "true":
        pm_type = (params.get("payment_method_data") or {}).get("type")
        if not pm_type and not params.get("payment_method"):
            raise StripeError(400, "invalid_request_error",
                              "You must provide a payment method to confirm.",
                              "payment_intent_unexpected_state")
        if pm_type == "alipay":
            if not params.get("return_url"):
                raise StripeError(400, "invalid_request_error",
                                  "A return_url must be specified because "
                                  "this Payment Intent is configured to "
                                  "automatically accept the payment methods "
                                  "that may require redirects.",
                                  "parameter_missing", "return_url")
            pi["status"] = "requires_action"
            pi["next_action"] = {
                "type": "redirect_to_url",
                "redirect_to_url": {
                    "url": "https://hooks.stripe.com/redirect/authenticate/"
                           "src_" + secrets.token_urlsafe(16),
                    "return_url": params["return_url"]}}
    return st.add(pi)


# -------------------------------------------------------------- the server

def sign(payload, secret, t, scheme="v1"):
    mac = hmac.new(secret.encode(), ("%d." % t).encode() + payload,
                   hashlib.sha256).hexdigest()
    parts = ["t=%d" % t]
    if scheme in ("v1", "both"):
        parts.append("v1=" + mac)
    if scheme in ("v0", "both"):
        parts.append("v0=" + hmac.new(b"test-mode", payload,
                                      hashlib.sha256).hexdigest())
    return ",".join(parts)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "stripe-standin/1"

    def log_message(self, fmt, *args):  # quiet
        pass

    @property
    def st(self):
        return self.server.state

    def send_json(self, status, obj, headers=None):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Request-Id", new_id("req_", 14))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    # control endpoints
    def control(self, method, path, body):
        st = self.st
        url = urllib.parse.urlparse(path)
        if method == "POST" and url.path == "/_standin/fail":
            spec = json.loads(body or b"{}")
            spec.setdefault("count", 1)
            with st.lock:
                st.failures.append(spec)
            return self.send_json(200, {"ok": True})
        if method == "POST" and url.path == "/_standin/reset":
            with st.lock:
                st.failures.clear()
            return self.send_json(200, {"ok": True})
        if method == "GET" and url.path == "/_standin/objects":
            q = dict(urllib.parse.parse_qsl(url.query))
            with st.lock:
                data = [o for o in st.objects.values()
                        if o["object"] == q.get("type", o["object"]) and
                        ("tenant_id" not in q or
                         (o.get("metadata") or {}).get("tenant_id") ==
                         q["tenant_id"])]
            return self.send_json(200, {"data": data})
        if method == "GET" and url.path == "/_standin/requests":
            with st.lock:
                data = list(st.requests)
            return self.send_json(200, {"data": data})
        if method == "POST" and url.path == "/_standin/deliver":
            return self.deliver(json.loads(body or b"{}"))
        self.send_json(404, {"error": "no such control endpoint"})

    def deliver(self, spec):
        now = int(time.time())
        event = {"id": spec.get("id") or new_id("evt_", 24),
                 "object": "event", "api_version": "2024-06-20",
                 "created": spec.get("created", now),
                 "type": spec["type"], "livemode": False,
                 "pending_webhooks": 1,
                 "request": {"id": None, "idempotency_key": None},
                 "data": spec.get("data", {"object": {}})}
        payload = json.dumps(event, separators=(",", ":")).encode()
        t = now + int(spec.get("timestamp_offset", 0))
        header = sign(payload, spec.get("secret", ""), t,
                      spec.get("scheme", "v1"))
        if spec.get("tamper"):
            payload = payload.replace(b'"livemode":false',
                                      b'"livemode":true ', 1)
        if not spec.get("url") or spec.get("deliver") is False:
            return self.send_json(200, {"id": event["id"],
                                        "payload": payload.decode(),
                                        "header": header})
        req = urllib.request.Request(spec["url"], data=payload, method="POST",
                                     headers={"Stripe-Signature": header,
                                              "Content-Type":
                                                  "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                status, text = r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode(errors="replace")
        except OSError as e:
            status, text = 0, str(e)
        self.send_json(200, {"id": event["id"], "status": status,
                             "body": text})

    def take_failure(self, path):
        with self.st.lock:
            for f in self.st.failures:
                if f.get("path") and not path.startswith(f["path"]):
                    continue
                if f["count"] <= 0:
                    continue
                f["count"] -= 1
                return dict(f)
        return None

    def api(self, method, path, body):
        st = self.st
        auth = self.headers.get("Authorization", "")
        key = self.headers.get("Idempotency-Key")
        entry = {"method": method, "path": path, "idempotency_key": key,
                 "version": self.headers.get("Stripe-Version"),
                 "replayed": False, "status": None, "at": time.time()}
        with st.lock:
            st.requests.append(entry)

        def answer(status, obj, headers=None):
            entry["status"] = status
            self.send_json(status, obj, headers)

        if auth != "Bearer " + st.secret_key:
            shown = auth[7:][:8] + "*" * 4 if auth.startswith("Bearer ") \
                else ""
            return answer(401, {"error": {
                "type": "invalid_request_error",
                "message": "Invalid API Key provided: %s" % shown}})
        fail = self.take_failure(path)
        if fail:
            if fail.get("delay_ms"):
                time.sleep(fail["delay_ms"] / 1000.0)
            status = fail.get("status", 0)
            if status:
                headers = {}
                if "retry_after" in fail:
                    headers["Retry-After"] = str(fail["retry_after"])
                kind = {429: "rate_limit_error", 402: "card_error"}.get(
                    status, "api_error" if status >= 500 else
                    "invalid_request_error")
                msg = fail.get("message", "Injected failure (%d)" % status)
                err = {"error": {"type": kind, "message": msg}}
                if fail.get("code"):
                    err["error"]["code"] = fail["code"]
                return answer(status, err, headers)
        text = body.decode("utf-8", errors="strict")
        fingerprint = method + " " + path + "\n" + text
        if method == "POST" and key:
            if len(key) > 255:
                return answer(400, {"error": {
                    "type": "invalid_request_error",
                    "message": "Idempotency-Key is too long (255 max)."}})
            with st.lock:
                now = time.time()
                for k in [k for k, v in st.idem.items()
                          if now - v["at"] > IDEMPOTENCY_TTL_S]:
                    del st.idem[k]
                saved = st.idem.get(key)
                if saved:
                    if saved["fingerprint"] != fingerprint:
                        return answer(400, {"error": {
                            "type": "idempotency_error",
                            "message": "Keys for idempotent requests can "
                                       "only be used with the same "
                                       "parameters they were first used "
                                       "with. Try using a key other than "
                                       "'%s' if you meant to execute a "
                                       "different request." % key}})
                    entry["replayed"] = True
                    return answer(saved["status"], saved["body"],
                                  {"Idempotent-Replayed": "true",
                                   "Original-Request": saved["request_id"]})
                if key in st.in_flight:
                    return answer(409, {"error": {
                        "type": "idempotency_error",
                        "message": "There is currently another in-progress "
                                   "request using this Idempotent Key "
                                   "(that probably means you submitted "
                                   "twice, and the other request is still "
                                   "going through): %s. Please try again "
                                   "later." % key}})
                st.in_flight.add(key)
        try:
            try:
                status, obj = 200, self.route(method, path, parse_form(text))
            except StripeError as e:
                status, obj = e.status, e.body
            if method == "POST" and key:
                with st.lock:
                    st.idem[key] = {"fingerprint": fingerprint,
                                    "status": status, "body": obj,
                                    "at": time.time(),
                                    "request_id": new_id("req_", 14)}
        finally:
            if method == "POST" and key:
                with st.lock:
                    st.in_flight.discard(key)
        if fail and fail.get("delay_after_ms"):
            # Executed and saved; the answer comes late (crash tests).
            time.sleep(fail["delay_after_ms"] / 1000.0)
        return answer(status, obj)

    def route(self, method, path, params):
        st = self.st
        p = urllib.parse.urlparse(path).path.rstrip("/").split("/")[1:]
        with st.lock:
            if p == ["v1", "customers"] and method == "POST":
                return create_customer(st, params)
            if p[:2] == ["v1", "customers"] and len(p) == 3 and \
                    method == "GET":
                return st.get(p[2], "customer")
            if p == ["v1", "subscriptions"] and method == "POST":
                return create_subscription(st, params)
            if p[:2] == ["v1", "subscriptions"] and len(p) == 3:
                if method == "GET":
                    return st.get(p[2], "subscription")
                if method == "POST":
                    return update_subscription(st, p[2], params)
                if method == "DELETE":
                    sub = st.get(p[2], "subscription")
                    sub["status"] = "canceled"
                    sub["canceled_at"] = int(time.time())
                    return sub
            if p == ["v1", "checkout", "sessions"] and method == "POST":
                return create_checkout(st, params)
            if p == ["v1", "billing_portal", "sessions"] and \
                    method == "POST":
                return create_portal(st, params)
            if p == ["v1", "payment_intents"] and method == "POST":
                return create_payment_intent(st, params)
            if p[:2] == ["v1", "payment_intents"] and len(p) == 3 and \
                    method == "GET":
                return st.get(p[2], "payment_intent")
            if p == ["v1", "prices"] and method == "POST":
                pid = new_id("price_", 24)
                price_obj(st, pid)
                return st.objects[pid]
            if p[:2] == ["v1", "prices"] and len(p) == 3 and method == "GET":
                return st.get(p[2], "price")
        raise StripeError(404, "invalid_request_error",
                          "Unrecognized request URL (%s: %s)."
                          % (method, path))

    def handle_any(self, method):
        body = self.read_body()
        try:
            self.dispatch(method, body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeouts under test)

    def dispatch(self, method, body):
        try:
            if self.path.startswith("/_standin/"):
                return self.control(method, self.path, body)
            if self.path.startswith("/v1/"):
                return self.api(method, self.path, body)
            self.send_json(404, {"error": {"type": "invalid_request_error",
                                           "message": "Unrecognized request "
                                                      "URL"}})
        except UnicodeDecodeError:
            self.send_json(400, {"error": {"type": "invalid_request_error",
                                           "message": "Invalid UTF-8"}})

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_DELETE(self):
        self.handle_any("DELETE")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--secret-key", required=True)
    args = ap.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    server.state = State(args.secret_key)
    print("listening on %d" % server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    server.server_close()


if __name__ == "__main__":
    main()
