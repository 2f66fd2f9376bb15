-- One user of the directory, by id (authentication and the feed's header).
select user_id, name, email, role, manager_id, active, read_all_at
from users
where user_id = cast(:user_id as text)
