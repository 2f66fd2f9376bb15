-- Bulk load of the staged churned customers (csv: unquoted empty is null).
copy stage_churned_customers (customer_id, churned_at) from stdin with (format csv)
