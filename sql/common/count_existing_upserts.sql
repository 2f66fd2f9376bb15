-- How many staged upserts already exist, so the write can report inserted versus updated.
select count(*)
from stage_insight_upserts as s
join insights as i on i.id = cast(s.id as uuid)
