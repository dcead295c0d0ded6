-- orchestr8-async on PostgreSQL, version 3: which workflow tasks ended without their workflow's
-- step having seen them yet, and which host each webhook event goes to.
--
-- Both columns may be NULL (read as false / unknown), so rows written by a node of the previous
-- release are still valid.

-- Set in the transaction that ends a workflow's task, cleared by the workflow step that saw it
-- ended: a running workflow with such a task is owed a step (the leader takes it if the node
-- that ended the task could not).
ALTER TABLE tasks ADD COLUMN step_owed boolean;
CREATE INDEX tasks_step_owed ON tasks (workflow_id) WHERE step_owed;

-- `host:port` of the event's URL: a node claims only a few events per host at a time, and none
-- for a host it is already sending all it may to, so a slow receiver holds up only its own.
ALTER TABLE webhook_events ADD COLUMN host text;
