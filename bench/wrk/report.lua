-- Shared by the bench scripts: remembers wrk's threads (setup, main state) and prints one
-- "BENCH_RESULT {json}" line from done(): requests, duration, errors (errors.status counts
-- answers >= 400 for free), latency percentiles in microseconds, and what the threads
-- counted themselves (status codes when BENCH_STATUS_COUNTS=1, accepted bulk items).
local report = {}
local threads = {}
local next_id = 0

function report.setup(thread)
   next_id = next_id + 1
   thread:set("thread_id", next_id)
   table.insert(threads, thread)
end

local function merge(into, from)
   if type(from) ~= "table" then return end
   for key, value in pairs(from) do
      into[key] = (into[key] or 0) + value
   end
end

local function json_object(map)
   local parts = {}
   for key, value in pairs(map) do
      table.insert(parts, string.format('"%s":%d', tostring(key), value))
   end
   return "{" .. table.concat(parts, ",") .. "}"
end

function report.done(summary, latency, requests)
   local statuses = {}
   local accepted_items = 0
   for _, thread in ipairs(threads) do
      merge(statuses, thread:get("statuses"))
      accepted_items = accepted_items + (thread:get("accepted_items") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%d},' ..
      '"statuses":%s,"accepted_items":%d}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
      json_object(statuses), accepted_items))
end

-- Optional pacing: a per-thread schedule of one request every (threads / rate) seconds,
-- whichever connection is free takes the next slot.  wrk is closed-loop: a connection
-- waits for its answer before it can take a slot, so when answers are slow the rate falls
-- below the target instead of queueing (no coordinated-omission correction, unlike wrk2).
function report.pacer(rate, threads_n)
   local ffi = require("ffi")
   pcall(ffi.cdef, [[
      typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
      int clock_gettime(int clk_id, bench_timespec *tp);
   ]])
   local now_ts = ffi.new("bench_timespec")
   local function now_ms()
      ffi.C.clock_gettime(1, now_ts)  -- CLOCK_MONOTONIC
      return tonumber(now_ts.tv_sec) * 1000.0 + tonumber(now_ts.tv_nsec) / 1e6
   end
   local interval_ms = threads_n * 1000.0 / rate
   local next_at = 0
   return function()
      local now = now_ms()
      -- Behind schedule: catch up at most 50 ms worth of slots, then keep the pace.
      if next_at < now - 50 then next_at = now - 50 end
      next_at = next_at + interval_ms
      local wait = next_at - now
      if wait < 0 then return 0 end
      return wait
   end
end

return report
