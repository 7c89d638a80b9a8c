//! The Lua scripts of the fill protocol and of tag invalidation, loaded
//! once per connection (EVALSHA, re-loaded on NOSCRIPT by redis-rs).

use redis::Script;

/// Writes each value only where the key still holds the reader's lease.
///
/// KEYS: the keys. `ARGV[1]`: the lease, `ARGV[2]`: TTL in ms, `ARGV[3..]`: one
/// value per key. Returns how many keys were filled. `pcall` keeps a key of
/// the wrong type from failing the others.
pub const FILL_SCRIPT: &str = r"
local filled = 0
for i, key in ipairs(KEYS) do
  if redis.pcall('GET', key) == ARGV[1] then
    redis.call('SET', key, ARGV[i + 2], 'PX', ARGV[2])
    filled = filled + 1
  end
end
return filled
";

/// Takes a fill lease on each key that is free (`SET NX PX`). A key that can
/// never hold a value of ours is replaced by the lease: another Redis type
/// (a hash, a list...), or a string without an expiry (every value and
/// lease StoreHaus writes has one, so such a string is a leftover lease or
/// foreign data, and would otherwise block the key forever).
///
/// KEYS: the keys. `ARGV[1]`: the lease, `ARGV[2]`: its TTL in ms. Returns one
/// integer per key: 1 granted, 2 granted after replacing such a key, 0 not
/// granted (a value or another reader's live lease is there).
const LEASE_MANY_SCRIPT: &str = r"
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then
    out[i] = 1
  elseif redis.call('TYPE', key).ok ~= 'string' or redis.call('PTTL', key) == -1 then
    redis.call('DEL', key)
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
    out[i] = 2
  else
    out[i] = 0
  end
end
return out
";

/// Deletes `KEYS[1]` only while it still holds the lease `ARGV[1]`.
const RELEASE_SCRIPT: &str = r"
if redis.pcall('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 0
";

/// Writes `KEYS[1]` only while the counter `KEYS[2]` still equals `ARGV[3]`.
/// `ARGV[1]`: the value, `ARGV[2]`: TTL in ms. Returns 1 when written.
const FILL_IF_COUNTER_SCRIPT: &str = r"
if redis.pcall('GET', KEYS[2]) == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Moves a tag set `KEYS[1]` into its draining set `KEYS[2]` and returns the
/// draining set's size. The tag's name is free again at once, so a write
/// that tags a key meanwhile starts a new set instead of being swept up
/// (and lost) by the invalidation under way. Members that an interrupted
/// invalidation left in the draining set are kept and merged, so the next
/// `invalidate_tag` finishes its work. The draining set keeps the longer of
/// the two TTLs.
const DRAIN_TAG_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('EXISTS', KEYS[2]) == 1 then
    local a = redis.call('PTTL', KEYS[1])
    local b = redis.call('PTTL', KEYS[2])
    redis.call('SUNIONSTORE', KEYS[2], KEYS[1], KEYS[2])
    redis.call('DEL', KEYS[1])
    if a > 0 and b > 0 then
      redis.call('PEXPIRE', KEYS[2], math.max(a, b))
    end
  else
    redis.call('RENAME', KEYS[1], KEYS[2])
  end
end
return redis.call('SCARD', KEYS[2])
";

/// Registers the layout tag `ARGV[1]` in the live-version registry
/// `KEYS[1]` until `ARGV[2]` ms from now, in the server's clock (so that
/// processes whose clocks disagree agree on it): `ZADD GT` never shortens a
/// member's time; members whose time has passed are dropped; the registry
/// lives as long as its longest member. A key of another type is replaced.
const REGISTER_VERSION_SCRIPT: &str = r"
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'zset' and kind ~= 'none' then
  redis.call('DEL', KEYS[1])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], 'GT', now + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
";

/// Every script, prepared once per backend.
pub(crate) struct Scripts {
    pub fill: Script,
    pub lease_many: Script,
    pub release: Script,
    pub fill_if_counter: Script,
    pub drain_tag: Script,
    pub register_version: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Scripts {
            fill: Script::new(FILL_SCRIPT),
            lease_many: Script::new(LEASE_MANY_SCRIPT),
            release: Script::new(RELEASE_SCRIPT),
            fill_if_counter: Script::new(FILL_IF_COUNTER_SCRIPT),
            drain_tag: Script::new(DRAIN_TAG_SCRIPT),
            register_version: Script::new(REGISTER_VERSION_SCRIPT),
        }
    }
}
