-- wrk script: POST one JSON-RPC call per request and count the answers that are really results.
--
--   wrk -t1 -c16 -d10s --latency -s bench/jsonrpc.lua URL -- METHOD ENTRY_POINT CHAIN_ID SALT [SENDERS]
--
-- METHOD is pm_getPaymasterData, pm_getPaymasterStubData or pm_supportedEntryPoints. Every
-- request carries a distinct sender and nonce (made of SALT, the thread number and a per-thread
-- counter), so each pm_getPaymasterData call is a distinct operation with its own ledger row, and
-- per-address caches in the server get no more help than real traffic from many wallets gives.
-- With SENDERS (a file of addresses, one per line) the senders cycle through that list instead,
-- for checks that need a sender holding something (bench/pipeline.py); nonces stay distinct.
-- The ERC-7677 context is {} unless the environment's BENCH_CONTEXT holds one (a JSON object,
-- e.g. {"token":"0x…"} for ERC-20 mode: bench/erc20.py).
-- A response is a success only when its status is 200 and its body holds "result"; anything
-- else (a JSON-RPC error is also HTTP 200) is counted as a failure.
-- done() prints one line, BENCH_JSON {...}, that bench/run.py reads.

local threads = {}
local thread_count = 0

function setup(thread)
  thread:set("thread_id", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

local method, entry_point, chain_id, salt, senders
local counter = 0
local prefix, suffix

-- a SimpleAccount execute(address,uint256,bytes) call: 4 + 4 * 32 bytes, like a typical transfer
local CALL_DATA = "0xb61d27f6" .. string.rep("0", 24) .. string.rep("ab", 20) .. string.rep("0", 62) .. "01"
  .. string.rep("0", 62) .. "60" .. string.rep("0", 64)

function init(args)
  method = args[1] or "pm_getPaymasterData"
  entry_point = args[2] or "0x0000000071727De22E5E9d8BAf0edAc6f37da032"
  chain_id = args[3] or "0x7a69"
  salt = tonumber(args[4] or "0")
  senders = {}
  if args[5] then
    for line in io.lines(args[5]) do
      if #line >= 42 then table.insert(senders, string.sub(line, 3, 42)) end
    end
  end
  ok, rpc_errors, http_errors = 0, 0, 0
  sample_error = ""
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  if method == "pm_supportedEntryPoints" then
    wrk.body = '{"jsonrpc":"2.0","id":1,"method":"pm_supportedEntryPoints","params":[]}'
    return
  end
  prefix = '{"jsonrpc":"2.0","id":1,"method":"' .. method .. '","params":[{'
    .. '"sender":"0x'
  suffix = '","callData":"' .. CALL_DATA .. '",'
    .. '"callGasLimit":"0x186a0","verificationGasLimit":"0x186a0","preVerificationGas":"0xc350",'
    .. '"maxFeePerGas":"0x3b9aca00","maxPriorityFeePerGas":"0x3b9aca00"},"'
    .. entry_point .. '","' .. chain_id .. '",' .. (os.getenv("BENCH_CONTEXT") or "{}") .. ']}'
end

function request()
  if not prefix then
    return wrk.format()
  end
  counter = counter + 1
  -- 20-byte sender and 160-bit nonce from salt, thread and counter (LuaJIT formats %x up to 2^31)
  local tail = string.format("%08x%08x%016x%08x", salt, thread_id, 0, counter)
  local sender = tail
  if #senders > 0 then sender = senders[(counter + thread_id) % #senders + 1] end
  return wrk.format(nil, nil, nil, prefix .. sender .. '","nonce":"0x' .. tail .. suffix)
end

function response(status, headers, body)
  if status ~= 200 then
    http_errors = http_errors + 1
    if sample_error == "" then sample_error = "HTTP " .. status .. ": " .. string.sub(body, 1, 200) end
  elseif string.find(body, '"result"', 1, true) then
    ok = ok + 1
  else
    rpc_errors = rpc_errors + 1
    if sample_error == "" then sample_error = string.sub(body, 1, 200) end
  end
end

local function json_string(s)
  return '"' .. string.gsub(s, '[%c"\\]', function(c) return string.format("\\u%04x", string.byte(c)) end) .. '"'
end

function done(summary, latency, requests)
  local total_ok, total_rpc, total_http, sample = 0, 0, 0, ""
  for _, thread in ipairs(threads) do
    total_ok = total_ok + thread:get("ok")
    total_rpc = total_rpc + thread:get("rpc_errors")
    total_http = total_http + thread:get("http_errors")
    if sample == "" then sample = thread:get("sample_error") end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"ok":%d,"rpc_errors":%d,"http_errors":%d,'
      .. '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},"non_2xx":%d,'
      .. '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f},"sample_error":%s}\n',
    summary.requests, summary.duration, total_ok, total_rpc, total_http,
    e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    json_string(sample)))
end
