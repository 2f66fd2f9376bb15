-- How many insights `close_churned` will close (open past their customer's churn day).
select count(*)
from insights as i
join stage_churned_customers as c on i.customer_id = c.customer_id
where i.expires_at is null or i.expires_at > c.churned_at
