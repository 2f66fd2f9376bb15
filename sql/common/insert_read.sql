-- A viewer other than the owner has read an insight (the first read time is kept).
insert into insight_reads (insight_id, user_id, read_at)
values (cast(:insight_id as uuid), cast(:user_id as text), cast(:at as timestamptz))
on conflict (user_id, insight_id) do nothing
