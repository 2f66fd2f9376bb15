-- A CSM's action on one insight: status, feedback (kept when not given) and snooze (cleared when
-- not given); the first view and the first action are stamped once and then kept.
update insights
set
    status = cast(:status as text),
    feedback = coalesce(cast(:feedback as text), feedback),
    snoozed_until = cast(:snoozed_until as timestamptz),
    viewed_at = case
        when cast(:status as text) = 'new' then viewed_at
        else coalesce(viewed_at, cast(:at as timestamptz))
    end,
    actioned_at = case
        when cast(:status as text) = 'actioned' then coalesce(actioned_at, cast(:at as timestamptz))
        else actioned_at
    end
where id = cast(:id as uuid)
returning cast(id as text)
