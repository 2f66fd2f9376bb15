-- Cached narratives for the given keys (a missing key is simply absent from the result).
select cache_key, title, summary, so_what, action
from narrative_cache
where cache_key in :keys
