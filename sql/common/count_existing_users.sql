-- How many staged users are already in the directory, so a sync reports inserted vs updated.
select count(*)
from stage_users as s
join users as u on u.user_id = s.user_id
