-- orchestr8-async on PostgreSQL, version 2: what webhook delivery and its history look up.

-- A task's or a workflow's delivery log (`webhook_history`).
CREATE INDEX webhook_deliveries_task ON webhook_deliveries (task_id) WHERE task_id IS NOT NULL;
CREATE INDEX webhook_deliveries_workflow ON webhook_deliveries (workflow_id)
    WHERE workflow_id IS NOT NULL;
-- The claims a node holds (let go of when it leaves).
CREATE INDEX webhook_events_claimed ON webhook_events (claimed_by) WHERE claimed_by IS NOT NULL;
