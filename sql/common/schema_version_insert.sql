-- Record one applied migration inside the same transaction as its statements.
insert into schema_version (version, name, applied_at)
values (:version, :name, :applied_at)
