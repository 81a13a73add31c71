-- wrk script for deltacache's POST /search (used by scripts/bench.sh).
--
--   wrk -t1 -c1 -d10s -s scripts/wrk_search.lua http://127.0.0.1:PORT -- QUERIES_FILE [TOP_K]
--
-- Cycles through QUERIES_FILE (one query text per line), each thread from its own offset,
-- posting {"query_text": <query>, "top_k": TOP_K} (TOP_K defaults to 10). When the run ends
-- it prints one line "WRK_RESULT key=value ..." with throughput and latency percentiles in
-- microseconds, for scripts to parse.

local threads = {}
local thread_count = 0

local function json_string(s)
  s = s:gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"' end
    if c == '\\' then return '\\\\' end
    return string.format('\\u%04x', c:byte())
  end)
  return '"' .. s .. '"'
end

function setup(thread)
  thread:set("thread_index", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

function init(args)
  local path = args[1]
  if path == nil then
    error("wrk_search.lua: pass the queries file after --, e.g. -- queries.txt")
  end
  local top_k = tonumber(args[2] or "10")
  local file = io.open(path, "r")
  if file == nil then
    error("wrk_search.lua: cannot open queries file " .. path)
  end
  requests = {}
  local headers = { ["Content-Type"] = "application/json" }
  for line in file:lines() do
    if line:match("%S") then
      local body = '{"query_text": ' .. json_string(line) .. ', "top_k": ' .. top_k .. '}'
      table.insert(requests, wrk.format("POST", "/search", headers, body))
    end
  end
  file:close()
  if #requests == 0 then
    error("wrk_search.lua: no queries in " .. path)
  end
  -- Spread threads over the file so they do not send the same query at the same time.
  position = ((thread_index or 0) * 7919) % #requests
end

function request()
  position = position % #requests + 1
  return requests[position]
end

function done(summary, latency, requests_)
  local e = summary.errors
  io.write(string.format(
    "WRK_RESULT requests=%d duration_us=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=%.1f connect_errors=%d read_errors=%d write_errors=%d status_errors=%d timeouts=%d\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
end
