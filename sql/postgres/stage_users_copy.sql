-- Bulk load of the staged directory (csv: unquoted empty is null, quoted empty is '').
copy stage_users (user_id, name, email, role, manager_id) from stdin with (format csv)
