-- wrk script of `make bench`: the KV API's requests, or etcd's HTTP JSON gateway's.
--
--   wrk -t1 -c16 -d3s -s bench/kv.lua http://127.0.0.1:PORT -- MODE PREFIX MAX_REQUESTS [ARG]
--
-- MODE: kv-post (POST /kv, a new key each time), kv-get (GET /kv/g-000000NN ARG, ARG being
-- e.g. "?consistency=lease"), etcd-put (POST /v3/kv/put), etcd-range (POST /v3/kv/range,
-- ARG "serializable" for a serializable read). Keys are PREFIX-NNNNNNNN (10-14 bytes), values
-- 256 bytes. Each thread stops after MAX_REQUESTS responses, whatever -d says. done() prints
-- one line: WRKJSON {...} with the counts and the latency percentiles in microseconds.

local mode, prefix, max_requests, arg
local counter = 0
responses = 0
failures = 0
local threads = {}

local value = string.rep("v", 256)
local json_headers = { ["Content-Type"] = "application/json" }

local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function base64(data)
  return ((data:gsub(".", function(c)
    local bits, byte = "", c:byte()
    for i = 8, 1, -1 do
      bits = bits .. (byte % 2 ^ i - byte % 2 ^ (i - 1) > 0 and "1" or "0")
    end
    return bits
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then
      return ""
    end
    local n = 0
    for i = 1, 6 do
      n = n + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0)
    end
    return alphabet:sub(n + 1, n + 1)
  end) .. ({ "", "==", "=" })[#data % 3 + 1])
end

local value_b64 = base64(value)
local get_keys = {}
local get_keys_b64 = {}
for i = 0, 99 do
  get_keys[i] = string.format("g-%08d", i)
  get_keys_b64[i] = base64(get_keys[i])
end

function setup(thread)
  thread:set("thread_index", #threads)
  table.insert(threads, thread)
end

function init(args)
  mode = args[1]
  prefix = (args[2] or "w") .. (thread_index or 0)
  max_requests = tonumber(args[3] or "1000000")
  arg = args[4] or ""
end

function request()
  counter = counter + 1
  if mode == "kv-post" then
    local key = string.format("%s-%08d", prefix, counter)
    return wrk.format("POST", "/kv", json_headers,
      '{"key":"' .. key .. '","value":"' .. value .. '"}')
  elseif mode == "kv-get" then
    return wrk.format("GET", "/kv/" .. get_keys[counter % 100] .. arg)
  elseif mode == "etcd-put" then
    local key = base64(string.format("%s-%08d", prefix, counter))
    return wrk.format("POST", "/v3/kv/put", json_headers,
      '{"key":"' .. key .. '","value":"' .. value_b64 .. '"}')
  elseif mode == "etcd-range" then
    local extra = ""
    if arg == "serializable" then
      extra = ',"serializable":true'
    end
    return wrk.format("POST", "/v3/kv/range", json_headers,
      '{"key":"' .. get_keys_b64[counter % 100] .. '"' .. extra .. '}')
  end
  error("unknown mode " .. tostring(mode))
end

function response(status, headers, body)
  responses = responses + 1
  -- An etcd range of a missing key is a 200 without "kvs": count it as a failure too.
  if status ~= 200 or (mode == "etcd-range" and not body:find('"kvs"', 1, true)) then
    failures = failures + 1
  end
  if responses >= max_requests then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do
    bad = bad + (thread:get("failures") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f,'
      .. '"failures":%d,"socket_errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, bad, e.connect + e.read + e.write + e.timeout))
end
