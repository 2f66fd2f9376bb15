-- Bulk load of the staged account owners (csv: unquoted empty is null).
copy stage_account_owners (customer_id, user_id) from stdin with (format csv)
