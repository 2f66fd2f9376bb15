-- Every stored digest preference (users without a row get the default, daily).
select user_id, frequency, weekday
from digest_preferences
order by user_id
