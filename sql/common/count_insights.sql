-- Size of the insights table, for run metadata and tests.
select count(*) from insights
