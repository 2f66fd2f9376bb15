-- How many staged extensions match an insight (unknown ids are ignored and not counted).
select count(*)
from stage_insight_extensions as e
join insights as i on i.id = cast(e.id as uuid)
