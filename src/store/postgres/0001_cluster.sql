-- orchestr8-async on PostgreSQL, version 1: the tables of a cluster of engines.
--
-- Applied once, by whichever node takes the migration lock first (src/store/postgres/migrate.rs).
-- Every time is a timestamptz written and compared by the database's own clock (`now()`), never a
-- host's: leases, heartbeats and due times mean the same thing to every node.

-- The engines of the cluster. A node renews its lease every few seconds; a node whose lease
-- has expired is dead to the others, whatever it thinks, and its running tasks are rescued.
CREATE TABLE nodes (
    node_id       text PRIMARY KEY,
    host          text NOT NULL,
    pid           integer NOT NULL,
    version       text NOT NULL,
    queues        text[] NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    stopped_at    timestamptz            -- set by a node that stopped cleanly
);

-- The leader: one node at a time does the cluster's chores (rescuing the tasks of dead nodes,
-- pruning). Held while renewed, taken over once expired; `term` grows with every new holder.
CREATE TABLE leadership (
    name        text PRIMARY KEY,
    node_id     text NOT NULL,
    term        bigint NOT NULL,
    elected_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);

-- One row per task. Unlike the embedded store, the database is the only record of hot tasks:
-- every node claims from it and records outcomes in it.
CREATE TABLE tasks (
    task_id          uuid PRIMARY KEY,
    name             text NOT NULL,
    agent_name       text NOT NULL,
    instructions     text NOT NULL,
    status           text NOT NULL,          -- pending | running | completed | failed | cancelled
    priority         smallint NOT NULL,      -- 0 low, 1 normal, 2 high, 3 critical
    queue            text NOT NULL,
    host             text,                   -- only a node on this host may run it (NULL: any)
    max_concurrency  integer,                -- its agent's limit across the cluster, from submit
    created_at       timestamptz NOT NULL,
    scheduled_at     timestamptz NOT NULL,   -- run_at, or the end of a retry back-off
    started_at       timestamptz,
    completed_at     timestamptz,
    attempt          integer NOT NULL,       -- times started
    max_retries      integer NOT NULL,
    retry_floor      integer NOT NULL,       -- attempt at the last manual retry
    timeout_seconds  integer NOT NULL,
    dependencies     jsonb NOT NULL,         -- JSON array of task ids
    deps_open        integer NOT NULL,       -- dependencies not completed yet
    gated            boolean NOT NULL,       -- held by its workflow (draft, or phase not open)
    workflow_id      uuid,
    phase_id         text,
    working_dir      text,
    project          text,
    agents_dir       text,
    metadata         jsonb,
    webhook_url      text,
    idempotency_key  text,
    result           text,
    error            text,
    input_tokens     bigint,
    output_tokens    bigint,
    cost_usd         double precision,
    workspace        jsonb,
    node_id          text,                   -- the node running (or that ran) its attempt
    pid              bigint,                 -- process group of the running attempt, on node_id
    pid_start        bigint,
    cancel_requested boolean NOT NULL DEFAULT false,
    updated_at       timestamptz NOT NULL
);
-- A key names one task; removing the task frees it.
CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- What claiming scans: ready tasks, highest priority first, oldest first.
CREATE INDEX tasks_ready ON tasks (priority DESC, created_at, task_id)
    WHERE status = 'pending' AND deps_open = 0 AND NOT gated;
CREATE INDEX tasks_running ON tasks (node_id, agent_name) WHERE status = 'running';
CREATE INDEX tasks_by_status ON tasks (status, created_at DESC, task_id DESC);
CREATE INDEX tasks_by_agent ON tasks (agent_name, created_at DESC, task_id DESC);
CREATE INDEX tasks_by_workflow ON tasks (workflow_id) WHERE workflow_id IS NOT NULL;
CREATE INDEX tasks_by_project ON tasks (project, completed_at) WHERE project IS NOT NULL;

-- Who waits for whom, so that a finished task releases (or cancels) its dependents in one
-- statement.
CREATE TABLE task_dependencies (
    task_id     uuid NOT NULL,
    depends_on  uuid NOT NULL,
    PRIMARY KEY (task_id, depends_on)
);
CREATE INDEX task_dependencies_upstream ON task_dependencies (depends_on);

CREATE TABLE task_logs (
    task_id  uuid NOT NULL,
    seq      bigint NOT NULL,
    ts       timestamptz NOT NULL,
    level    text NOT NULL,
    message  text NOT NULL,
    PRIMARY KEY (task_id, seq)
);

CREATE TABLE workflows (
    workflow_id   uuid PRIMARY KEY,
    name          text NOT NULL,
    description   text,
    webhook_url   text,
    status        text NOT NULL,             -- draft | running | completed | failed | cancelled
    max_parallel  integer,
    error         text,
    created_at    timestamptz NOT NULL,
    started_at    timestamptz,
    completed_at  timestamptz,
    updated_at    timestamptz NOT NULL
);

CREATE TABLE workflow_phases (
    workflow_id   uuid NOT NULL,
    phase_id      text NOT NULL,
    name          text NOT NULL,
    depends_on    jsonb NOT NULL,            -- JSON array of phase ids
    position      integer NOT NULL,
    status        text NOT NULL,
    started_at    timestamptz,
    completed_at  timestamptz,
    PRIMARY KEY (workflow_id, phase_id)
);

-- The webhook outbox. A node delivers an event only while it holds its claim, so one event is
-- never sent by two nodes at once; a claim that expires (its node died) is taken again.
CREATE TABLE webhook_events (
    event_id         text PRIMARY KEY,
    event_type       text NOT NULL,
    task_id          uuid,
    workflow_id      uuid,
    url              text NOT NULL,
    payload          text NOT NULL,
    status           text NOT NULL,          -- pending | delivered | failed
    attempts         integer NOT NULL,
    next_attempt_at  timestamptz NOT NULL,
    last_error       text,
    claimed_by       text,
    claimed_until    timestamptz,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX webhook_events_due ON webhook_events (next_attempt_at) WHERE status = 'pending';

CREATE TABLE webhook_deliveries (
    event_id      text NOT NULL,
    event_type    text NOT NULL,
    task_id       uuid,
    workflow_id   uuid,
    attempt       integer NOT NULL,
    url           text NOT NULL,
    status_code   integer,
    error         text,
    duration_ms   bigint NOT NULL,
    delivered_at  timestamptz NOT NULL
);
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);
