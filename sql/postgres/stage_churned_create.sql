-- Staging table for one write's churned customers, filled by copy.
create temp table stage_churned_customers (
    customer_id text,
    churned_at timestamptz
) on commit drop
