-- Applied migrations in order, so migrate() knows what is left and operators can see history.
select version, name, applied_at
from schema_version
order by version
