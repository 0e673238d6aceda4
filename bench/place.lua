-- wrk script: one placement per request, a new user each time (so nothing is resumed).
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  n = 0
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("SB_TOKEN")
  wrk.headers["Content-Type"] = "application/json"
end
function request()
  n = n + 1
  return wrk.format("POST", "/api/v1/sessions", nil,
    '{"user":"p' .. tid .. '-' .. n .. '","pool":"bench"}')
end
