-- Store the staged quality metrics (the day range was deleted first, in the same transaction).
insert into insight_quality (
    quality_date, window_days, scope, scope_key, acted, relevant, actioned, relevance_rate,
    action_rate, computed_at
)
select
    quality_date, window_days, scope, scope_key, acted, relevant, actioned, relevance_rate,
    action_rate, cast(:computed_at as timestamptz)
from stage_insight_quality
