-- Users and connections present on a channel.
-- KEYS: 1 user -> total count, 2 connections on the channel
return {redis.call('HLEN', KEYS[1]), tonumber(redis.call('GET', KEYS[2]) or '0')}
