-- Mark all read, for insights the user sees but does not own: everything raised or shared
-- before this instant counts as read.
update users
set read_all_at = cast(:at as timestamptz)
where user_id = cast(:user_id as text)
