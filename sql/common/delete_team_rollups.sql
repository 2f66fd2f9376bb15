-- Drop the team rollups of a day range before they are written again (idempotent re-runs).
delete from team_rollups
where rollup_date between cast(:first_day as date) and cast(:last_day as date)
