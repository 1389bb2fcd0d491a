-- Decode a netstring list (`len:bytes,` repeated) into a Lua array: binary-safe, unlike
-- cjson. Shared by every ferry script (prepended at build time).
local function fields(s)
  local out, i = {}, 1
  while i <= #s do
    local colon = string.find(s, ':', i, true)
    local n = tonumber(string.sub(s, i, colon - 1))
    out[#out + 1] = string.sub(s, colon + 1, colon + n)
    i = colon + n + 2
  end
  return out
end
