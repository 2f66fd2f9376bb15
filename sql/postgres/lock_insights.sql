-- The sink's first statement (write_insights): lock every existing insight it is about to
-- upsert or extend, in id order, before changing any. Mark-all-read locks in id order too
-- (mark_all_viewed.sql), so neither can hold a row the other needs while waiting for one it
-- holds: they queue instead of deadlocking. Ids not in the table lock nothing; new rows are
-- inserted in id order by upsert_insights.sql. (PostgreSQL only: DuckDB has no row locks.)
select count(*)
from (
    select id
    from insights
    where id = any(cast(:ids as uuid[]))
    order by id
    for update
) as locked
