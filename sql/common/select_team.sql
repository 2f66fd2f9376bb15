-- A user and everyone reporting to them, transitively through manager_id (union, not union
-- all: a cycle in the source's reporting lines ends instead of looping).
with recursive team (user_id) as (
    select u.user_id
    from users as u
    where u.user_id = cast(:user_id as text)
    union
    select u.user_id
    from users as u
    join team as t on u.manager_id = t.user_id
)
select user_id
from team
order by user_id
