-- wrk scenarios for bench/run.py: one script, the scenario chosen by arguments after "--":
--   mode=get path=/health/live          a constant GET (the baselines)
--   mode=redeem_new keys=FILE           each PID of FILE redeemed once (threads split FILE)
--     field=receipt                     ... each receipt of FILE, as {"receipt": ...}
--   mode=redeem_claimed keys=FILE       random PIDs of FILE, all already claimed
--   mode=redeem_unknown                 random 16-hex PIDs (a flood of unknown ones)
--   mode=token keys=FILE                random tokens of FILE (issued ones)
--   mode=token_unknown                  random 64-hex tokens
--   mode=mixed new=F claimed=F tokens=F a weighted mix of the above
--   mode=probe limit=N                  unknown PIDs and tokens alternately, N in all
--   mode=debit keys=FILE nonce=S        1-piconero debits of random tokens of FILE, each with a
--                                       key of its own (S-<thread>-<n>): the internal listener
--   expiry=1 (with any mode)            also count the answers that carry an expiry ("expires")
--   mode=bearer keys=FILE path=P        GET P with "Authorization: Bearer" and a random
--                                       token of FILE (the gateway check, nginx in front);
--                                       a file of credentials works the same way
--   mode=credential keys=FILE           POST /api/v1/credential with "Authorization: Bearer"
--                                       and a random token of FILE (counted: "credential")
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

-- wrk waits out its whole -d even after every thread stopped, so a thread that is done
-- says so in a file; bench/loadgen.py then ends wrk with SIGINT (which wrk reports as usual)
local function finish()
  if opts.done_file then
    local f = io.open(opts.done_file, "w")
    if f then f:write("done\n"); f:close() end
  end
  wrk.thread:stop()
end

local function hex16()
  return string.format("%04x%04x%04x%04x", math.random(0, 65535), math.random(0, 65535),
                       math.random(0, 65535), math.random(0, 65535))
end

local json_headers = { ["Content-Type"] = "application/json" }

local function redeem(pid)
  return wrk.format("POST", "/api/v1/redeem", json_headers, '{"pid":"' .. pid .. '"}')
end

local function redeem_receipt(receipt)
  return wrk.format("POST", "/api/v1/redeem", json_headers, '{"receipt":"' .. receipt .. '"}')
end

local function token_get(token)
  return wrk.format("GET", "/api/v1/token/" .. token)
end

-- Requests are built in init(), not per request: the client then costs the same per
-- request in every mode, and the server, not wrk's Lua, is what a run measures.
local POOL = 131072  -- random unknown keys per thread, cycled: each reappears > 2 s later,
                     -- long after the 0.5 s negative-cache TTL, so each is a fresh miss
-- Unknown tokens meet no cache in the service (no negative token cache; yarl's URL cache
-- holds 128 paths), so a smaller pool changes nothing there, and it keeps the client's
-- working set (~1 MB, not ~17 MB) from evicting the server's data on a 2-vCPU machine
-- whose L3 both share, which alone cost the server ~5 us a request (docs/benchmarks.md).
local TOKEN_POOL = 8192
local pools = {}
local cursors = {}

local function build_pool(name, keys, make)
  local reqs = {}
  for i, key in ipairs(keys) do reqs[i] = make(key) end
  pools[name] = reqs
  cursors[name] = 0
end

local function random_keys(n, words)
  local keys = {}
  for i = 1, n do
    local parts = {}
    for w = 1, words do parts[w] = hex16() end
    keys[i] = table.concat(parts)
  end
  return keys
end

local function cycle(name)
  local reqs = pools[name]
  local i = cursors[name] % #reqs + 1
  cursors[name] = i
  return reqs[i]
end

local function pick(name)
  local reqs = pools[name]
  return reqs[math.random(1, #reqs)]
end

local function redeem_new()
  local reqs = pools.redeem_new
  local i = cursors.redeem_new + 1
  cursors.redeem_new = i
  if reqs[i] == nil then
    -- the list is spent: stop rather than re-redeem (that would measure already_claimed)
    count("exhausted")
    finish()
    return redeem(hex16())
  end
  return reqs[i]
end

local constant_request
local build
local builders = {
  get = function() return constant_request end,
  redeem_new = redeem_new,
  redeem_claimed = function() return pick("redeem_claimed") end,
  redeem_unknown = function() return cycle("redeem_unknown") end,
  token = function() return pick("token") end,
  token_unknown = function() return cycle("token_unknown") end,
  bearer = function() return pick("bearer") end,
  credential = function() return pick("credential") end,
}

-- A debit's Idempotency-Key must never repeat (a repeat is a replay, not a debit), so
-- unlike every other mode these requests are formatted one by one: the client pays more
-- per request here, on its own core, and its CPU is in the report.
local debit_paths = {}
local debit_headers = { ["Content-Type"] = "application/json" }
local debit_prefix = ""
local debit_count = 0
builders.debit = function()
  debit_count = debit_count + 1
  debit_headers["Idempotency-Key"] = debit_prefix .. debit_count
  return wrk.format("POST", debit_paths[math.random(1, #debit_paths)], debit_headers,
                    '{"amount":1}')
end

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

-- probe (peak RSS): every key freshly random, so a million probes are a million keys
local probe_turn = 0
builders.probe = function()
  probe_turn = probe_turn + 1
  if probe_turn % 2 == 0 then return redeem(hex16()) end
  return token_get(hex16() .. hex16() .. hex16() .. hex16())
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
  local new_file = (mode == "redeem_new" and opts.keys) or (mode == "mixed" and opts.new)
  if new_file then
    build_pool("redeem_new", load_keys(new_file, thread_index, threads_total),
               opts.field == "receipt" and redeem_receipt or redeem)
  end
  local claimed_file = (mode == "redeem_claimed" and opts.keys) or (mode == "mixed" and opts.claimed)
  if claimed_file then build_pool("redeem_claimed", load_keys(claimed_file, 0, 1), redeem) end
  local token_file = (mode == "token" and opts.keys) or (mode == "mixed" and opts.tokens)
  if token_file then build_pool("token", load_keys(token_file, 0, 1), token_get) end
  if mode == "debit" then
    for i, token in ipairs(load_keys(opts.keys, 0, 1)) do
      debit_paths[i] = "/api/v1/token/" .. token .. "/debit"
    end
    debit_prefix = (opts.nonce or error("mode=debit needs nonce=")) .. "-" .. thread_index .. "-"
  end
  if mode == "redeem_unknown" or mode == "mixed" then
    build_pool("redeem_unknown", random_keys(POOL, 1), redeem)
  end
  if mode == "token_unknown" or mode == "mixed" then
    build_pool("token_unknown", random_keys(TOKEN_POOL, 4), token_get)
  end
  if mode == "bearer" then
    local path = opts.path or "/"
    build_pool("bearer", load_keys(opts.keys, 0, 1), function(token)
      return wrk.format("GET", path, { Authorization = "Bearer " .. token })
    end)
  end
  if mode == "credential" then
    build_pool("credential", load_keys(opts.keys, 0, 1), function(token)
      return wrk.format("POST", "/api/v1/credential", { Authorization = "Bearer " .. token })
    end)
  end
  build = builders[mode]
end

function request()
  return build()
end

local answered = 0

function response(status, headers, body)
  answered = answered + 1
  if answered == opts.limit then finish() end  -- probe mode: exactly limit answers
  count(tostring(status))
  if body:find('"success"', 1, true) then count("success")
  elseif body:find('"already_claimed"', 1, true) then count("already_claimed")
  elseif body:find('"active"', 1, true) then count("active")
  elseif body:find('"debit_id"', 1, true) then count("debited")
  elseif body:find('"credential"', 1, true) then count("credential")
  end
  -- the byte-rendered answers write no space after the colon (api/public.py)
  if opts.expiry and body:find('"expires_at":"', 1, true) then count("expires") end
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
