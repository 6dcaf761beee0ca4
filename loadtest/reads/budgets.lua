-- wrk script for loadtest/reads.sh: GET one random seeded budget per request, or one
-- page of the list with a random tag, and a machine-readable summary at the end.
--
--   wrk ... -s budgets.lua URL -- get  <budgets> [query]   GET /api/v1/budgets/{id}[?query]
--   wrk ... -s budgets.lua URL -- list <teams>  [query]    GET /api/v1/budgets?tag=team:team-<k>&limit=20[&query]
--   wrk ... -s budgets.lua URL -- post                     POST /api/v1/budgets (one fixed budget)
--
-- Seeded budget n (1 ≤ n ≤ budgets) has the id 0193c000-0000-7000-8000-<n as 12 hex
-- digits> (reads.sh seeds them; pgbench computes the same text from the same integer).

local mode, count, query = "get", 1, ""
local threads = {}

function setup(thread)
   thread:set("thread_no", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   mode = args[1] or "get"
   count = tonumber(args[2]) or 1
   query = args[3] or ""
   math.randomseed(os.time() * 1000 + (thread_no or 0) * 7919 + math.floor(os.clock() * 1e6))
end

local post_body = '{"name": "load", "amount": "1200.50", "currency": "CNY", "period": "monthly", ' ..
   '"type": "cost", "start_date": "2026-01-01", "alert_thresholds": [80, 100]}'

function request()
   if mode == "post" then
      -- A headers table replaces wrk.headers (-H): copy them in.
      local headers = {["Content-Type"] = "application/json"}
      for k, v in pairs(wrk.headers) do headers[k] = v end
      return wrk.format("POST", "/api/v1/budgets", headers, post_body)
   end
   if mode == "list" then
      local path = "/api/v1/budgets?tag=team:team-" .. (math.random(count) - 1) .. "&limit=20"
      if query ~= "" then path = path .. "&" .. query end
      return wrk.format("GET", path)
   end
   local path = string.format("/api/v1/budgets/0193c000-0000-7000-8000-%012x", math.random(count))
   if query ~= "" then path = path .. "?" .. query end
   return wrk.format("GET", path)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d non2xx_or_3xx=%d connect=%d read=%d write=%d timeout=%d\n",
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
      e.status, e.connect, e.read, e.write, e.timeout))
end
