-- A user's action: lock the insight's row before the action is stamped with the time, so two
-- actions on one insight are applied in the order of their timestamps (the feedback history's
-- last action is the one the row shows). Returns the id, or nothing for an unknown insight.
select cast(id as text)
from insights
where id = cast(:id as uuid)
for update
