-- wrk script for bench/end_to_end.py: POSTs one fixed body and checks every streamed answer.
--
--   wrk -t1 -c10 -d10s --latency -s bench/stream.lua URL -- MODE BODY_FILE HEADERS_FILE
--
-- MODE "sse": an Anthropic SSE stream; an event ends at a blank line; the answer is good when
--   it holds `event: message_stop` and no `event: error`.
-- MODE "eventstream": Q's binary AWS event stream; frames are walked by their 4-byte length
--   prefix; the answer is good when the frames tile the body exactly.
-- HEADERS_FILE holds "Name: value" lines. done() prints one line "BENCHJSON {...}".

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

local function read_file(path)
   local f = assert(io.open(path, "rb"))
   local data = f:read("*a")
   f:close()
   return data
end

function init(args)
   mode = args[1]
   wrk.method = "POST"
   wrk.body = read_file(args[2])
   for line in read_file(args[3]):gmatch("[^\r\n]+") do
      local name, value = line:match("^([^:]+):%s*(.*)$")
      if name then wrk.headers[name] = value end
   end
   answers, events, bad = 0, 0, 0
end

local find, byte = string.find, string.byte

local function count_sse(body)
   local n, pos = 0, 1
   while true do
      local at = find(body, "\n\n", pos, true)
      if not at then break end
      n = n + 1
      pos = at + 2
   end
   local good = find(body, "event: message_stop", 1, true) ~= nil
      and find(body, "event: error", 1, true) == nil
   return n, good
end

local function count_frames(body)
   local n, pos, len = 0, 1, #body
   while pos + 3 <= len do
      local b1, b2, b3, b4 = byte(body, pos, pos + 3)
      local total = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
      if total < 16 then return n, false end
      pos = pos + total
      n = n + 1
   end
   return n, n > 0 and pos == len + 1
end

function response(status, headers, body)
   answers = answers + 1
   if status ~= 200 then
      bad = bad + 1
      return
   end
   local n, good
   if mode == "sse" then n, good = count_sse(body) else n, good = count_frames(body) end
   events = events + n
   if not good then bad = bad + 1 end
end

function done(summary, latency, requests)
   local a, e, b = 0, 0, 0
   for _, thread in ipairs(threads) do
      a = a + thread:get("answers")
      e = e + thread:get("events")
      b = b + thread:get("bad")
   end
   local err = summary.errors
   io.write(string.format(
      'BENCHJSON {"requests":%d,"duration_us":%d,"answers":%d,"events":%d,"bad_answers":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
      summary.requests, summary.duration, a, e, b,
      err.connect, err.read, err.write, err.status, err.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
