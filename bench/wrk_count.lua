-- wrk script of bench/zero_downtime.py: a bounded request rate, and counts.
--   wrk ... -s bench/wrk_count.lua <url> -- <gap_ms>
-- Every connection waits <gap_ms> after each response (wrk's delay()), so the rate is about
-- connections * 1000 / (gap_ms + latency).  Counted per thread, summed in done():
-- 2xx / non-2xx responses, the status codes seen, and the first line of each 2xx body
-- ("rainbow 1.1.0"): which release answered.  Socket errors (connect, read, write, timeout)
-- come from wrk's own summary.  Printed as one line "WRKJSON {...}".

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  gap = tonumber(args[1]) or 0
  ok2xx = 0
  non2xx = 0
  codes = {}
  versions = {}
end

function delay()
  return gap
end

function response(status, headers, body)
  local key = tostring(status)
  codes[key] = (codes[key] or 0) + 1
  if status >= 200 and status < 300 then
    ok2xx = ok2xx + 1
    local first = body and string.match(body, "^([^\n]*)") or "?"
    versions[first] = (versions[first] or 0) + 1
  else
    non2xx = non2xx + 1
  end
end

local function merge(into, from)
  for k, v in pairs(from or {}) do
    into[k] = (into[k] or 0) + v
  end
end

local function json_map(t)
  local parts = {}
  for k, v in pairs(t) do
    table.insert(parts, string.format("%q: %d", k, v))
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

function done(summary, latency, requests)
  local ok, bad, all_codes, all_versions = 0, 0, {}, {}
  for _, t in ipairs(threads) do
    ok = ok + t:get("ok2xx")
    bad = bad + t:get("non2xx")
    merge(all_codes, t:get("codes"))
    merge(all_versions, t:get("versions"))
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "ok2xx": %d, "non2xx": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "timeouts": %d, "duration_us": %d, "latency_p50_us": %d, "latency_p99_us": %d, ' ..
    '"latency_max_us": %d, "codes": %s, "versions": %s}\n',
    summary.requests, ok, bad, e.connect, e.read, e.write, e.timeout, summary.duration,
    latency:percentile(50), latency:percentile(99), latency.max, json_map(all_codes), json_map(all_versions)))
end
