-- Partners' bulk import: POST /v1/cases/{case}/signatures/batch with prebuilt bodies.
--
-- Environment:
--   BENCH_CASE         the case id
--   BENCH_BULK_FILE    a file with one JSON body ({"signatures": [...]}) per line
--   BENCH_PARTNER_KEY  the partner key (Authorization: Bearer ...)
--
-- The requests are formatted once per thread (init); each thread cycles through the
-- bodies from its own starting point.  response() reads "accepted":N from each 202 so
-- the bench counts accepted signatures, not requests (a few calls per second: cheap).
local report = dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")

local case_id = os.getenv("BENCH_CASE") or "bench"
local path = "/v1/cases/" .. case_id .. "/signatures/batch"

thread_id = 0
statuses = {}
accepted_items = 0
local requests = {}
local next_index = 1

setup = report.setup
done = report.done

function init(args)
   local headers = {
      ["Content-Type"] = "application/json",
      ["Authorization"] = "Bearer " .. os.getenv("BENCH_PARTNER_KEY"),
   }
   for line in io.lines(os.getenv("BENCH_BULK_FILE")) do
      if #line > 0 then
         table.insert(requests, wrk.format("POST", path, headers, line))
      end
   end
   next_index = (thread_id % #requests) + 1
end

function request()
   local formatted = requests[next_index]
   next_index = (next_index % #requests) + 1
   return formatted
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   if status == 202 then
      local accepted = string.match(body, '"accepted":(%d+)')
      if accepted then
         accepted_items = accepted_items + tonumber(accepted)
      end
   end
end
