-- wrk script of bench/seed-workload.sh: every request goes to a random
-- tenant of TENANTS, as shared/anchors/tenants.lua does, and every answer's
-- HTTP status is counted; done() prints one "status <code> <count>" line
-- per status seen (wrk's own "Non-2xx" line cannot tell the expected 403s
-- from anything else).
--
-- TENANTS     tenants tenant1..tenantN (default 10000; ignored with KEYS_FILE)
-- KEYS_FILE   optional: lines "<subdomain> <api key>" (load_tenants.py);
--             each request then carries its tenant's key as a Bearer token
-- BASE_DOMAIN apex domain (default yoursaas.test): Host <subdomain>.<base>
-- WRK_PATH    path (default /api/advanced-reports)
--
-- Each wrk thread has its own Lua state (so its own counts and keys).
local path = os.getenv("WRK_PATH") or "/api/advanced-reports"
local base = os.getenv("BASE_DOMAIN") or "yoursaas.test"
local hosts, auths, n = {}, {}, 0
local threads = {}

-- Runs in wrk's main Lua state, once per thread.
function setup(thread)
  table.insert(threads, thread)
  thread:set("bench_thread", #threads)
end

function init(args)
  counts = {} -- global: done() reads it with thread:get
  local file = os.getenv("KEYS_FILE")
  if file and file ~= "" then
    local f = assert(io.open(file, "r"), "cannot open KEYS_FILE " .. file)
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
  else
    n = tonumber(os.getenv("TENANTS") or "10000")
    for i = 1, n do hosts[i] = "tenant" .. i .. "." .. base end
  end
  math.randomseed(os.time() * 1000 + (bench_thread or 0))
end

function request()
  local t = math.random(1, n)
  if auths[t] then
    return wrk.format("GET", path, { ["Host"] = hosts[t], ["Authorization"] = auths[t] })
  end
  return wrk.format("GET", path, { ["Host"] = hosts[t] })
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    local c = t:get("counts") or {}
    for code, k in pairs(c) do total[code] = (total[code] or 0) + k end
  end
  local codes = {}
  for code in pairs(total) do table.insert(codes, code) end
  table.sort(codes)
  for _, code in ipairs(codes) do
    io.write(string.format("status %d %d\n", code, total[code]))
  end
end
