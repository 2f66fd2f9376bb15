-- One user's stored digest preference (none: the default, daily).
select frequency, weekday
from digest_preferences
where user_id = cast(:user_id as text)
