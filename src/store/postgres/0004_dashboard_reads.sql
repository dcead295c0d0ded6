-- orchestr8-async on PostgreSQL, version 4: what the dashboard reads on a cluster.

-- The task list, newest first, with no filter (and the agents' records since a day).
CREATE INDEX tasks_newest ON tasks (created_at DESC, task_id DESC);
-- The overview's ends per hour, durations and costs, over the last days.
CREATE INDEX tasks_ended ON tasks (completed_at) WHERE completed_at IS NOT NULL;
-- The live feed of an open page: what changed in the last seconds, looked up every second
-- while somebody watches.
CREATE INDEX tasks_changed ON tasks (updated_at);
CREATE INDEX workflows_changed ON workflows (updated_at);
CREATE INDEX webhook_deliveries_at ON webhook_deliveries (delivered_at);
