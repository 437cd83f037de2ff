-- wrk script: every request goes to a random tenant, as
-- shared/anchors/tenants.lua does, and also carries that tenant's API key.
--
-- KEYS_FILE   lines "<subdomain> <api key>" (written by load_tenants.py)
-- BASE_DOMAIN apex domain (default yoursaas.test): Host <subdomain>.<base>
-- WRK_PATH    path (default /api/v1/tenant)
--
-- Each wrk thread has its own Lua state, so each one reads the file in init.
local path = os.getenv("WRK_PATH") or "/api/v1/tenant"
local base = os.getenv("BASE_DOMAIN") or "yoursaas.test"
local hosts, auths, n = {}, {}, 0
local threads = 0

-- Runs in wrk's main Lua state, once per thread; thread:set() puts the
-- global bench_thread into that thread's own state before its init().
function setup(thread)
  threads = threads + 1
  thread:set("bench_thread", threads)
end

function init(args)
  local file = os.getenv("KEYS_FILE")
  local f = assert(io.open(file or "", "r"), "KEYS_FILE must name the keys file")
  for line in f:lines() do
    local sub, key = line:match("^(%S+)%s+(%S+)$")
    if sub then
      n = n + 1
      hosts[n] = sub .. "." .. base
      auths[n] = "Bearer " .. key
    end
  end
  f:close()
  assert(n > 0, "no keys in " .. file)
  -- A distinct random sequence per thread.
  math.randomseed(os.time() * 1000 + (bench_thread or 0))
end

function request()
  local t = math.random(1, n)
  return wrk.format("GET", path, { ["Host"] = hosts[t], ["Authorization"] = auths[t] })
end
