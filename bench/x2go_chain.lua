-- wrk: X2Go Client's AUTHID chain. Run with as many threads as connections (-tN -cN): each thread
-- is one client that logs in once with its password and then presents the AUTHID of the previous
-- reply with every request. A refused token starts a new chain with the password (counted in
-- `relogins`, printed at the end).
--   X2GO_TASK   listsessions | selectsession
--   X2GO_USER, X2GO_PASSWORD, X2GO_SID (for selectsession)
local task = os.getenv("X2GO_TASK")
local user = os.getenv("X2GO_USER")
local password = os.getenv("X2GO_PASSWORD")
local sid = os.getenv("X2GO_SID") or ""
local authid = nil
relogins = 0
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local function enc(s)
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", string.byte(c)) end))
end

local prefix = nil
local headers = {["Content-Type"] = "application/x-www-form-urlencoded"}

function request()
  prefix = prefix or ("task=" .. task .. "&user=" .. enc(user) .. "&sid=" .. enc(sid) .. "&login=" .. enc(user))
  local body
  if authid then
    -- AUTHIDs are UUIDs: nothing to encode.
    body = prefix .. "&password=&authid=" .. authid
  else
    body = prefix .. "&password=" .. enc(password) .. "&authid="
  end
  return wrk.format("POST", nil, headers, body)
end

function response(status, headers, body)
  local id = body:match("AUTHID:([^\n]+)\n")
  if status == 200 and id then
    authid = id
  else
    authid = nil
    relogins = relogins + 1
  end
end

function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do
    total = total + (t:get("relogins") or 0)
  end
  io.write(string.format("relogins %d\n", total))
end
