-- Drop the quality metrics of a day range before they are written again (idempotent re-runs).
delete from insight_quality
where quality_date between cast(:first_day as date) and cast(:last_day as date)
