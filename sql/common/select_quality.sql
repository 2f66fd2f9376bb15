-- Quality metrics of a day range, optionally of one window length and one scope.
select
    quality_date, window_days, scope, scope_key, acted, relevant, actioned, relevance_rate,
    action_rate
from insight_quality
where quality_date between cast(:first_day as date) and cast(:last_day as date)
    and (cast(:window_days as integer) is null or window_days = cast(:window_days as integer))
    and (cast(:scope as text) is null or scope = cast(:scope as text))
order by quality_date, window_days, scope, scope_key
