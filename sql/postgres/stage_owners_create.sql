-- Staging table for one write's account owners (each customer's CSM now), filled by copy.
create temp table stage_account_owners (
    customer_id text,
    user_id text
) on commit drop
