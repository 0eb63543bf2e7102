-- Unique widget signatures for POST /v1/cases/{case}/signatures.
--
-- Environment (set by the bench):
--   BENCH_CASE           the case id
--   BENCH_RUN            a run id, part of every email (unique across runs)
--   BENCH_XFF=1          add X-Forwarded-For with a random client IP (intake must trust loopback)
--   BENCH_RATE           total requests/s to aim at (0 or unset: as fast as possible)
--   BENCH_THREADS        wrk's thread count (to split the rate)
--   BENCH_STATUS_COUNTS=1  count every status code (costs throughput: response() per answer)
--
-- Each request: a unique email (run, thread, counter, random) at a large mailbox provider
-- (intake exempts those from its per-domain limit), one of 30 countries, fr or en, about a
-- quarter consenting to updates.
local report = dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")

local case_id = os.getenv("BENCH_CASE") or "bench"
local run_id = os.getenv("BENCH_RUN") or "run"
local forwarded = os.getenv("BENCH_XFF") == "1"
local rate = tonumber(os.getenv("BENCH_RATE") or "0") or 0
local threads_n = tonumber(os.getenv("BENCH_THREADS") or "1") or 1
local path = "/v1/cases/" .. case_id .. "/signatures"

local countries = {
   "FR", "GB", "DE", "ES", "IT", "BE", "NL", "CH", "PT", "IE", "SE", "NO", "DK", "FI", "PL",
   "AT", "CZ", "GR", "MA", "DZ", "TN", "SN", "CI", "CM", "CA", "US", "BR", "MX", "JP", "AU",
}
local domains = {
   "gmail.com", "outlook.com", "hotmail.fr", "yahoo.fr", "orange.fr", "free.fr",
   "gmx.de", "web.de", "icloud.com", "proton.me",
}
local first_names = {
   "Camille", "Léa", "Youssef", "Amina", "Jean", "Chloé", "Mohamed", "Sarah", "Lucas",
   "Inès", "Thomas", "Fatou", "Hugo", "Maëlle", "Oliver", "Emma", "Jonas", "Zoé",
}
local last_names = {
   "Durand", "Martin", "Benali", "Diallo", "Dubois", "Nguyen", "Smith", "Müller",
   "García", "Rossi", "Kowalski", "Traoré", "Lefèvre", "O'Brien", "Haddad", "Janssen",
}

thread_id = 0
counter = 0
statuses = {}

setup = report.setup
done = report.done

function init(args)
   math.randomseed(os.time() * 1000 + thread_id)
end

if rate > 0 then
   delay = report.pacer(rate, threads_n)
end

if os.getenv("BENCH_STATUS_COUNTS") == "1" then
   response = function(status, headers, body)
      statuses[status] = (statuses[status] or 0) + 1
   end
end

local random = math.random

function request()
   counter = counter + 1
   local email = string.format("%s.t%d.n%d.%d@%s", run_id, thread_id, counter, random(0, 999999),
                               domains[random(#domains)])
   local body = '{"first_name":"' .. first_names[random(#first_names)] ..
      '","last_name":"' .. last_names[random(#last_names)] ..
      '","email":"' .. email ..
      '","country":"' .. countries[random(#countries)] ..
      '","locale":"' .. (random() < 0.5 and "fr" or "en") ..
      '","consent":{"updates":' .. (random() < 0.25 and "true" or "false") ..
      '},"source":{"widget":"bench"}}'
   local headers = {["Content-Type"] = "application/json"}
   if forwarded then
      -- 11-126.x.x.x: never loopback, so intake takes it as the client (the peer is the proxy).
      headers["X-Forwarded-For"] = string.format("%d.%d.%d.%d", random(11, 126), random(0, 255),
                                                 random(0, 255), random(1, 254))
   end
   return wrk.format("POST", path, headers, body)
end
