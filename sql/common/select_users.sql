-- The whole directory, by name: share recipients and names in rollups.
select user_id, name, email, role, manager_id, active, read_all_at
from users
order by name, user_id
