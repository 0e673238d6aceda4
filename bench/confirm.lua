-- wrk script: place a session for a new user, then confirm it (a durable write), and repeat.
-- Every other request is a confirmation; non-2xx answers are counted by wrk.
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
function init(args)
  n = 0
  pending = {}
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("SB_TOKEN")
  wrk.headers["Content-Type"] = "application/json"
end
function request()
  local id = table.remove(pending)
  if id then
    return wrk.format("POST", "/api/v1/sessions/" .. id .. "/confirm", nil, "")
  end
  n = n + 1
  return wrk.format("POST", "/api/v1/sessions", nil,
    '{"user":"c' .. tid .. '-' .. n .. '","pool":"bench"}')
end
function response(status, headers, body)
  if status == 200 and body:find('"state":"reserved"', 1, true) then
    local id = body:match('"id":(%d+)')
    if id then table.insert(pending, id) end
  end
end
