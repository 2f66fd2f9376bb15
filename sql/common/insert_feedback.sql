-- Append one action to the feedback history, with the insight's type, category and customer
-- copied in so ranking can learn without joining; nothing is written for an unknown insight.
insert into insight_feedback (
    id, insight_id, user_id, action, feedback, snoozed_until, insight_type, category,
    customer_id, created_at
)
select
    cast(:id as uuid), i.id, cast(:user_id as text), cast(:action as text),
    cast(:feedback as text), cast(:snoozed_until as timestamptz), i.type, i.category,
    i.customer_id, cast(:at as timestamptz)
from insights as i
where i.id = cast(:insight_id as uuid)
returning cast(id as text)
