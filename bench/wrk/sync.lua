-- wrk script for `make bench`: requests against the seeded users, one workload per run.
--
--   wrk -t2 -c32 -d10s -s bench/wrk/sync.lua http://127.0.0.1:PORT -- MODE USERS BODY_FILE
--
-- MODE is get, put, verify or mixed (6 GET : 3 PUT : 1 verify, a device syncing);
-- USERS is how many seeded users to pick from (ids as in bench/seed.sql); BODY_FILE holds
-- the JSON body every PUT sends. `done` prints one line starting with BENCH_JSON.

local counter = 1
local threads = {}

function setup(thread)
  thread:set("id", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

local mode, users, body
local json_headers = { ["Content-Type"] = "application/json" }

function init(args)
  mode = args[1]
  users = tonumber(args[2])
  local f = assert(io.open(args[3], "rb"))
  body = f:read("*a")
  f:close()
  math.randomseed(os.time() * 1000 + id)
end

local function user_path()
  return string.format("/api/sync/00000000-0000-4000-8000-%012x", math.random(1, users))
end

local function get() return wrk.format("GET", user_path()) end
local function put() return wrk.format("PUT", user_path(), json_headers, body) end
local function verify() return wrk.format("POST", user_path() .. "/verify") end

function request()
  if mode == "get" then return get() end
  if mode == "put" then return put() end
  if mode == "verify" then return verify() end
  local r = math.random(1, 10)
  if r <= 6 then return get() end
  if r <= 9 then return put() end
  return verify()
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
