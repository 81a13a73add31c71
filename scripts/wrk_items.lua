-- wrk script for deltacache's GET /items/{id} (used by scripts/bench.sh).
--
--   wrk -t2 -c32 -d10s -s scripts/wrk_items.lua http://127.0.0.1:PORT -- N_ITEMS [SEED]
--
-- Requests ids item-000001 .. item-N (the ids scripts/gen_corpus.py writes), chosen
-- uniformly at random (a fixed pseudo-random sequence per thread, drawn up front). When
-- the run ends it prints one line "WRK_RESULT key=value ..." with throughput and latency
-- percentiles in microseconds, for scripts to parse.

local thread_count = 0

function setup(thread)
  thread:set("thread_index", thread_count)
  thread_count = thread_count + 1
end

function init(args)
  local n = tonumber(args[1] or "")
  if n == nil or n < 1 then
    error("wrk_items.lua: pass the number of items after --, e.g. -- 10000")
  end
  local seed = tonumber(args[2] or "1")
  math.randomseed(seed * 1000 + (thread_index or 0))
  requests = {}
  for i = 1, 65536 do
    local id = math.random(1, n)
    requests[i] = wrk.format("GET", string.format("/items/item-%06d", id))
  end
  position = 0
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
