-- Serialise concurrent migrate() calls (two processes starting at once); released at commit.
select pg_advisory_xact_lock(:lock_key)
