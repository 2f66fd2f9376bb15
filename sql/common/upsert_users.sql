-- Directory sync: insert new users, refresh known ones (and reactivate them); read_all_at and
-- tokens are the API's and are kept.
insert into users (user_id, name, email, role, manager_id, active, synced_at)
select s.user_id, s.name, s.email, s.role, s.manager_id, true, cast(:synced_at as timestamptz)
from stage_users as s
on conflict (user_id) do update set
    name = excluded.name,
    email = excluded.email,
    role = excluded.role,
    manager_id = excluded.manager_id,
    active = true,
    synced_at = excluded.synced_at
