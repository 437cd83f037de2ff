"""pytest glue for the integration tests: fixtures and failure reports.

Fixtures:
  stack  (module) a fresh database + kowloon-tenant + kowloon-gateway, with
         the module's TENANT_ENV / GATEWAY_ENV dicts (if it defines them)
         added to their environment; stopped at the end with SIGTERM, and
         the module errors if either exits non-zero or logged a sanitizer
         report.
When a test fails, the last lines of the log of every process its module
started are added to the report, so a failure shows what the servers said.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _environment():
    missing = [n for n in harness.REQUIRED_ENV if not os.environ.get(n)]
    if missing:
        pytest.fail("integration tests need %s; run them with integration-tests/run.sh "
                    "(it starts PostgreSQL and Redis and sets them), or set: %s"
                    % (", ".join(missing),
                       "; ".join("%s = %s" % (n, harness.REQUIRED_ENV[n]) for n in missing)),
                    pytrace=False)


@pytest.fixture(scope="module", autouse=True)
def _current_module(request):
    harness.CURRENT_MODULE = request.module.__name__
    yield
    harness.CURRENT_MODULE = None


@pytest.fixture(scope="module")
def stack(request):
    mod = request.module
    st = harness.Stack(tenant_env=getattr(mod, "TENANT_ENV", None),
                       gateway_env=getattr(mod, "GATEWAY_ENV", None))
    try:
        st.start()
    except BaseException:
        try:
            st.stop()
        except harness.HarnessError as e:
            sys.stderr.write(str(e) + "\n")
        raise
    yield st
    st.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for p in harness.ALL_PROCS:
            if p.module not in (None, item.module.__name__):
                continue
            rep.sections.append(("%s log (%s)" % (p.name, p.log_path), p.tail(60)))
