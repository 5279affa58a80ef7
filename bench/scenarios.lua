-- wrk scenarios for bench/run.py: one script, the scenario chosen by arguments after "--":
--   mode=get path=/health/live          a constant GET (the baselines)
--   mode=redeem_new keys=FILE           each PID of FILE redeemed once (threads split FILE)
--   mode=redeem_claimed keys=FILE       random PIDs of FILE, all already claimed
--   mode=redeem_unknown                 random 16-hex PIDs (a flood of unknown ones)
--   mode=token keys=FILE                random tokens of FILE (issued ones)
--   mode=token_unknown                  random 64-hex tokens
--   mode=mixed new=F claimed=F tokens=F a weighted mix of the above
--   mode=probe limit=N                  unknown PIDs and tokens alternately, N in all
-- Every mode defines response(), so the client pays the same per-response cost in the
-- baselines as in the scenarios. done() prints one line "BENCH_JSON {...}" for run.py.

local threads = {}
local thread_count = 0

function setup(thread)
  thread:set("thread_index", thread_count)
  table.insert(threads, thread)
  thread_count = thread_count + 1
end

local opts = {}
local requests_made = 0
local new_keys, claimed_keys, token_keys = {}, {}, {}
local next_new = 1
counts = {}  -- global: read by done() through thread:get

local function load_keys(path, slice_index, slice_count)
  -- every line when slice_count is 1; otherwise every slice_count-th line from slice_index
  local keys, n = {}, 0
  for line in io.lines(path) do
    if n % slice_count == slice_index then keys[#keys + 1] = line end
    n = n + 1
  end
  return keys
end

local function count(name)
  counts[name] = (counts[name] or 0) + 1
end

local function hex16()
  return string.format("%04x%04x%04x%04x", math.random(0, 65535), math.random(0, 65535),
                       math.random(0, 65535), math.random(0, 65535))
end

local json_headers = { ["Content-Type"] = "application/json" }

local function redeem(pid)
  return wrk.format("POST", "/api/v1/redeem", json_headers, '{"pid":"' .. pid .. '"}')
end

local function token_get(token)
  return wrk.format("GET", "/api/v1/token/" .. token)
end

local function redeem_new()
  local pid = new_keys[next_new]
  if pid == nil then
    -- the list is spent: stop rather than re-redeem (that would measure already_claimed)
    count("exhausted")
    wrk.thread:stop()
    pid = hex16()
  end
  next_new = next_new + 1
  return redeem(pid)
end

local function random_of(keys)
  return keys[math.random(1, #keys)]
end

local constant_request
local build
local builders = {
  get = function() return constant_request end,
  redeem_new = redeem_new,
  redeem_claimed = function() return redeem(random_of(claimed_keys)) end,
  redeem_unknown = function() return redeem(hex16()) end,
  token = function() return token_get(random_of(token_keys)) end,
  token_unknown = function() return token_get(hex16() .. hex16() .. hex16() .. hex16()) end,
}

-- mixed: 10% new redeems, 20% already claimed, 30% unknown PIDs, 30% issued tokens,
-- 10% unknown tokens
local mix = {
  { 0.10, "redeem_new" }, { 0.30, "redeem_claimed" }, { 0.60, "redeem_unknown" },
  { 0.90, "token" }, { 1.00, "token_unknown" },
}
builders.mixed = function()
  local r = math.random()
  for _, entry in ipairs(mix) do
    if r < entry[1] then return builders[entry[2]]() end
  end
  return builders.token_unknown()
end

local probe_kinds = { "redeem_unknown", "token_unknown" }
builders.probe = function()
  requests_made = requests_made + 1
  return builders[probe_kinds[requests_made % 2 + 1]]()
end

function init(args)
  for _, arg in ipairs(args) do
    local key, value = arg:match("^([%w_]+)=(.*)$")
    if key then opts[key] = value end
  end
  opts.limit = tonumber(opts.limit or "0")
  local threads_total = tonumber(opts.threads or "1")
  math.randomseed(os.time() * 1000 + thread_index * 7919)
  local mode = opts.mode
  if builders[mode] == nil then error("unknown mode " .. tostring(mode)) end
  if mode == "get" then constant_request = wrk.format("GET", opts.path or "/") end
  if mode == "redeem_new" then new_keys = load_keys(opts.keys, thread_index, threads_total) end
  if mode == "redeem_claimed" then claimed_keys = load_keys(opts.keys, 0, 1) end
  if mode == "token" then token_keys = load_keys(opts.keys, 0, 1) end
  if mode == "mixed" then
    new_keys = load_keys(opts.new, thread_index, threads_total)
    claimed_keys = load_keys(opts.claimed, 0, 1)
    token_keys = load_keys(opts.tokens, 0, 1)
  end
  build = builders[mode]
end

function request()
  return build()
end

local answered = 0

function response(status, headers, body)
  answered = answered + 1
  if answered == opts.limit then wrk.thread:stop() end  -- probe mode: exactly limit answers
  count(tostring(status))
  if body:find('"success"', 1, true) then count("success")
  elseif body:find('"already_claimed"', 1, true) then count("already_claimed")
  elseif body:find('"active"', 1, true) then count("active")
  end
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    local c = thread:get("counts")
    for name, n in pairs(c) do total[name] = (total[name] or 0) + n end
  end
  local parts = {}
  for name, n in pairs(total) do parts[#parts + 1] = string.format('"%s":%d', name, n) end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,'
      .. '"max_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},'
      .. '"outcomes":{%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.timeout,
    table.concat(parts, ",")))
end
