-- orchestr8-async: the whole DuckDB schema.
--
-- Applied at every start (each statement is idempotent); `schema_version` records which version
-- of this file a database was created or last migrated with, so a later release can migrate an
-- existing file (see src/store/schema.rs, MIGRATIONS).

CREATE TABLE IF NOT EXISTS schema_version (
    version     INTEGER PRIMARY KEY,
    applied_at  TIMESTAMP NOT NULL
);

-- One row per task. Hot (pending/running) tasks are mirrored in the scheduler's memory; this
-- table is the durable record and the source of every read of finished tasks.
-- No primary key: DuckDB keeps a primary key's index in memory whole once it has been read, and
-- never gives that memory back (10,000,000 ids: over 500 MB, in the file too). Ids are UUIDv7,
-- created by the engine alone and appended in about their time order, so the zone maps of
-- `task_id` find a task in one row group without an index.
CREATE TABLE IF NOT EXISTS tasks (
    task_id          UUID NOT NULL,         -- UUIDv7: time-ordered, so zone maps prune by id
    name             VARCHAR NOT NULL,
    agent_name       VARCHAR NOT NULL,
    instructions     VARCHAR NOT NULL,
    status           VARCHAR NOT NULL,      -- pending | running | completed | failed | cancelled
    priority         SMALLINT NOT NULL,     -- 0 low, 1 normal, 2 high, 3 critical
    created_at       TIMESTAMP NOT NULL,
    scheduled_at     TIMESTAMP NOT NULL,    -- run_at, or the end of a retry back-off
    started_at       TIMESTAMP,
    completed_at     TIMESTAMP,
    attempt          INTEGER NOT NULL,      -- times started
    max_retries      INTEGER NOT NULL,
    retry_floor      INTEGER NOT NULL,      -- attempt at the last manual retry
    timeout_seconds  INTEGER NOT NULL,
    dependencies     VARCHAR NOT NULL,      -- JSON array of task ids
    workflow_id      UUID,
    phase_id         VARCHAR,
    working_dir      VARCHAR,
    metadata         VARCHAR,               -- JSON object
    webhook_url      VARCHAR,
    idempotency_key  VARCHAR,
    result           VARCHAR,
    error            VARCHAR,
    input_tokens     BIGINT,
    output_tokens    BIGINT,
    cost_usd         DOUBLE,
    pid              BIGINT,                -- process group of the running attempt
    pid_start        BIGINT,                -- its start time (clock ticks since boot)
    updated_at       TIMESTAMP NOT NULL,
    -- After updated_at: columns added by migrations come last, so old and new files agree.
    project          VARCHAR,               -- directory of the session that submitted it
    agents_dir       VARCHAR,               -- that session's agent search path
    workspace        VARCHAR                -- JSON: the git worktree of an isolated task
);

-- A separate table, not a UNIQUE column of tasks, so that updating a task never touches an index.
-- Its key's index stays in memory whole once read, like every primary key's in DuckDB: the
-- engine keeps the database's memory limit at least twice what such indexes hold
-- (src/store/memory.rs).
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key      VARCHAR PRIMARY KEY,
    task_id  UUID NOT NULL
);

-- Log lines, written in bulk with DuckDB's appender. No index: task ids are time-ordered, so a
-- task's lines sit together and zone maps find them.
CREATE TABLE IF NOT EXISTS task_logs (
    task_id  UUID NOT NULL,
    seq      BIGINT NOT NULL,
    ts       TIMESTAMP NOT NULL,
    level    VARCHAR NOT NULL,
    message  VARCHAR NOT NULL
);

-- Staging for batched task updates: the writer appends a group's new task states here, applies
-- them with one UPDATE ... FROM, and empties it, all in the group's transaction (DuckDB costs
-- about as much per statement as per row, so one statement per group instead of one per task).
-- Always empty outside a transaction.
CREATE TABLE IF NOT EXISTS task_updates (
    task_id          UUID NOT NULL,
    status           VARCHAR NOT NULL,
    scheduled_at     TIMESTAMP NOT NULL,
    started_at       TIMESTAMP,
    completed_at     TIMESTAMP,
    attempt          INTEGER NOT NULL,
    retry_floor      INTEGER NOT NULL,
    result           VARCHAR,
    error            VARCHAR,
    input_tokens     BIGINT,
    output_tokens    BIGINT,
    cost_usd         DOUBLE,
    metadata         VARCHAR,
    pid              BIGINT,
    pid_start        BIGINT,
    updated_at       TIMESTAMP NOT NULL,
    workspace        VARCHAR
);

-- How many tasks there are of each status and agent, kept by every write of `tasks` in the same
-- transaction (src/store/counts.rs): counting 10,000,000 rows for a filtered list's total or the
-- overview's status counts would scan two columns of every row.
CREATE TABLE IF NOT EXISTS task_counts (
    status      VARCHAR NOT NULL,
    agent_name  VARCHAR NOT NULL,
    n           BIGINT NOT NULL,
    PRIMARY KEY (status, agent_name)
);

-- One row per workflow. Its phases and tasks point at it by workflow_id.
CREATE TABLE IF NOT EXISTS workflows (
    workflow_id   UUID PRIMARY KEY,
    name          VARCHAR NOT NULL,
    description   VARCHAR,
    webhook_url   VARCHAR,
    status        VARCHAR NOT NULL,      -- draft | running | completed | failed | cancelled
    max_parallel  INTEGER,
    error         VARCHAR,               -- why it failed or was cancelled
    created_at    TIMESTAMP NOT NULL,
    started_at    TIMESTAMP,
    completed_at  TIMESTAMP,
    updated_at    TIMESTAMP NOT NULL
);

-- Phases of a workflow. `depends_on` only names phases added earlier (lower position), so
-- position order is a topological order of the phase graph.
CREATE TABLE IF NOT EXISTS workflow_phases (
    workflow_id   UUID NOT NULL,
    phase_id      VARCHAR NOT NULL,
    name          VARCHAR NOT NULL,
    depends_on    VARCHAR NOT NULL,      -- JSON array of phase ids
    position      INTEGER NOT NULL,
    status        VARCHAR NOT NULL,      -- pending | running | completed | failed | cancelled
    started_at    TIMESTAMP,
    completed_at  TIMESTAMP,
    PRIMARY KEY (workflow_id, phase_id)
);

-- The webhook outbox: one row per event owed to a URL, inserted in the same transaction as the
-- terminal state that caused it, so a crash cannot lose it. The payload is fixed at creation.
CREATE TABLE IF NOT EXISTS webhook_events (
    event_id         VARCHAR PRIMARY KEY,   -- the webhook-id header
    event_type       VARCHAR NOT NULL,
    task_id          UUID,
    workflow_id      UUID,
    url              VARCHAR NOT NULL,
    payload          VARCHAR NOT NULL,
    status           VARCHAR NOT NULL,      -- pending | delivered | failed
    attempts         INTEGER NOT NULL,
    next_attempt_at  TIMESTAMP NOT NULL,
    last_error       VARCHAR,
    created_at       TIMESTAMP NOT NULL,
    updated_at       TIMESTAMP NOT NULL
);

-- Every delivery attempt (webhook_history).
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    event_id      VARCHAR NOT NULL,
    event_type    VARCHAR NOT NULL,
    task_id       UUID,
    workflow_id   UUID,
    attempt       INTEGER NOT NULL,
    url           VARCHAR NOT NULL,
    status_code   INTEGER,
    error         VARCHAR,
    duration_ms   BIGINT NOT NULL,
    delivered_at  TIMESTAMP NOT NULL
);

-- How far the store's journal (`<db>.journal`, see src/store/journal.rs) has been applied to the
-- tables above: the folder moves `folded_seq` in the same transaction as the rows it writes, so
-- replay after a crash applies exactly the records after it. One row.
CREATE TABLE IF NOT EXISTS journal_state (
    folded_seq  BIGINT NOT NULL
);
INSERT INTO journal_state SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM journal_state);
