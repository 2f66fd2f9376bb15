-- The feedback history (all of it, or from an instant on), oldest first: what ranking reads.
select
    cast(id as text) as id, cast(insight_id as text) as insight_id, user_id, action, feedback,
    snoozed_until, insight_type, category, customer_id, created_at
from insight_feedback
where cast(:since as timestamptz) is null or created_at >= cast(:since as timestamptz)
order by created_at, id
