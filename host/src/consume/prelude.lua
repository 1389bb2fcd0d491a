-- Limits shared with the Rust side (dispatch.rs `MAX_FIELDS`, `MAX_ENTRY_BYTES`; a unit test
-- in scripts.rs checks that they agree): an entry beyond them is refused as `invalid-event`,
-- so no script ever parks it or has to `unpack` it.
local MAX_FIELDS, MAX_ENTRY_BYTES = 1000, 16777216

-- Decode a netstring list (`len:bytes,` repeated) into a Lua array: binary-safe, unlike
-- cjson. The prelude is prepended to every ferry script at build time.
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

-- Parse an in-flight marker `lease-expiry-ms:starts:owner` (nil: none) into its parts.
local function marker(v)
  if not v then return 0, 0, nil end
  local expiry, starts, owner = string.match(v, '^(%d+):(%d+):(.*)$')
  if not expiry then return 0, 0, nil end
  return tonumber(expiry), tonumber(starts), owner
end
