-- Directory sync: users gone from the source lose access (their tokens stop working) but keep
-- their rows, so their insights and feedback history still name them.
update users
set active = false
where active and user_id not in (select s.user_id from stage_users as s)
returning user_id
