-- Share an existing insight with one user; sharing again replaces who shared it, the note and
-- the time (nothing is written for an unknown insight).
insert into insight_shares (insight_id, to_user_id, from_user_id, note, created_at)
select
    i.id, cast(:to_user_id as text), cast(:from_user_id as text), cast(:note as text),
    cast(:at as timestamptz)
from insights as i
where i.id = cast(:insight_id as uuid)
on conflict (insight_id, to_user_id) do update set
    from_user_id = excluded.from_user_id,
    note = excluded.note,
    created_at = excluded.created_at
