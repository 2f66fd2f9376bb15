-- Forget a viewer's read receipt (a new share makes the insight unread to its recipient again).
delete from insight_reads
where insight_id = cast(:insight_id as uuid) and user_id = cast(:user_id as text)
