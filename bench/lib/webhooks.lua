-- wrk script of bench/webhooks.sh: sends each pre-signed webhook of
-- EVENTS_FILE exactly once. The file holds one event per line,
-- "<Stripe-Signature header>\t<raw JSON body>" (gen_webhooks.py). Thread k
-- of WRK_THREADS sends lines k, k+T, k+2T, ... (disjoint slices).
--
-- wrk has no "N requests" mode, so:
--   * wrk calls delay() before every request (cfg.delay holds from the
--     start); delay() lets the request follow at once while the slice has
--     events no other connection was promised, else returns an hour, so an
--     idle connection sends nothing more;
--   * wrk calls request() once on the first thread right after init() to
--     check the request (script_verify_request); that call is answered
--     without taking an event;
--   * when the last answer of its slice is in, a thread writes
--     DONE_DIR/thread-<k> and stops; wrk itself sleeps until -d, so the
--     caller interrupts it (SIGINT) once every thread is done;
--   * the pass's length is measured here with CLOCK_MONOTONIC (LuaJIT ffi),
--     from the first event handed out to the last answer, over all threads.
--
-- done() prints "status <code> <count>" per status, "sent <n>", "idle <n>"
-- (request() calls that found nothing left: should stay 0) and
-- "span_s <seconds>".
--
-- EVENTS_FILE  the file above (required)
-- WRK_THREADS  wrk's -t (required, to slice the file)
-- DONE_DIR     where threads leave their mark (required)
-- WRK_HOST     Host header (default 127.0.0.1)
-- WRK_PATH     path (default /webhooks/stripe)
local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clk, bench_timespec *ts);
]]
local ts = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
end

local path = os.getenv("WRK_PATH") or "/webhooks/stripe"
local host = os.getenv("WRK_HOST") or "127.0.0.1"
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("bench_thread", #threads)
end

function init(args)
  counts = {}
  sent, answered, granted, idle = 0, 0, 0, 0
  t_first, t_last = 0, 0
  verify_call = (bench_thread == 1)
  reqs, n = {}, 0
  local nthreads = tonumber(os.getenv("WRK_THREADS") or "")
  assert(nthreads and nthreads >= 1, "WRK_THREADS must be wrk's -t")
  done_dir = assert(os.getenv("DONE_DIR"), "DONE_DIR must be set")
  local file = os.getenv("EVENTS_FILE")
  local f = assert(io.open(file or "", "r"), "EVENTS_FILE must name the events file")
  local i = 0
  for line in f:lines() do
    i = i + 1
    if (i - 1) % nthreads == bench_thread - 1 then
      local sig, body = line:match("^([^\t]+)\t(.+)$")
      assert(sig, "bad line " .. i .. " in " .. file)
      n = n + 1
      reqs[n] = wrk.format("POST", path, {
        ["Host"] = host,
        ["Content-Type"] = "application/json; charset=utf-8",
        ["Stripe-Signature"] = sig,
        ["User-Agent"] = "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
      }, body)
    end
  end
  f:close()
  assert(n > 0, "no event for thread " .. bench_thread)
end

-- granted: delay() calls answered 0 whose request() has not come yet.
function delay()
  if sent + granted < n then
    granted = granted + 1
    return 0
  end
  return 3600000
end

-- Hands out the events in order, each once.
function request()
  if verify_call then
    verify_call = false
    return reqs[1]
  end
  if granted > 0 then granted = granted - 1 end
  if sent < n then
    sent = sent + 1
    if sent == 1 then t_first = now() end
    return reqs[sent]
  end
  idle = idle + 1
  return ""
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
  answered = answered + 1
  if answered == n then
    t_last = now()
    local f = io.open(done_dir .. "/thread-" .. bench_thread, "w")
    if f then f:write(answered, "\n"); f:close() end
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local total, all_sent, all_idle = {}, 0, 0
  local first, last = nil, 0
  for _, t in ipairs(threads) do
    local c = t:get("counts") or {}
    for code, k in pairs(c) do total[code] = (total[code] or 0) + k end
    all_sent = all_sent + (t:get("sent") or 0)
    all_idle = all_idle + (t:get("idle") or 0)
    local a, b = t:get("t_first") or 0, t:get("t_last") or 0
    if a > 0 and (first == nil or a < first) then first = a end
    if b > last then last = b end
  end
  local codes = {}
  for code in pairs(total) do table.insert(codes, code) end
  table.sort(codes)
  for _, code in ipairs(codes) do
    io.write(string.format("status %d %d\n", code, total[code]))
  end
  io.write(string.format("sent %d\n", all_sent))
  io.write(string.format("idle %d\n", all_idle))
  if first and last > first then
    io.write(string.format("span_s %.6f\n", last - first))
  end
end
