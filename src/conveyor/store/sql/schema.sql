-- The conveyor store schema, as forward migrations. Never edit a released migration: add the
-- next one. Each "-- migration: N" section runs once, in one transaction, and then
-- schema_version holds N. Type names in {BRACES} are filled in per dialect:
--   {SEQ}   a 64-bit integer primary key we assign  (SQLite INTEGER PRIMARY KEY, PG BIGINT ...)
--   {AUTO}  an auto-numbered primary key            (SQLite INTEGER PRIMARY KEY, PG IDENTITY)
--   {REAL}  unix seconds                            (SQLite REAL, PG DOUBLE PRECISION)
--   {BLOB}  bytes                                   (SQLite BLOB, PG BYTEA)
--   {NOROWID} an index-organised table              (SQLite WITHOUT ROWID, PG nothing)
-- Task states are TaskState values, named as in queries.sql: {READY}, {UNFINISHED} ... and {KEY}
-- (the depth-first key's columns) are filled in when loading (store/sqlqueries.py).

-- migration: 1
CREATE TABLE schema_version (version INTEGER NOT NULL);

-- One row per key: "graph" (the graph's name), "roots" (root_seq of the latest submit).
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE tasks (
    seq         {SEQ},                  -- submit order in this store; the claim handle
    id          TEXT NOT NULL UNIQUE,
    state       SMALLINT NOT NULL,
    neg_depth   INTEGER NOT NULL,       -- the depth-first key is (neg_depth, root_seq, seq)
    root_seq    INTEGER NOT NULL,
    grp         TEXT NOT NULL,
    waiting     INTEGER NOT NULL,       -- parents not yet done
    attempt     INTEGER NOT NULL DEFAULT 0,  -- attempts started (lost and released ones not)
    lost        INTEGER NOT NULL DEFAULT 0,  -- leases that expired: a separate retry budget
    token       INTEGER NOT NULL DEFAULT 0,  -- lease generation: fences late completions
    worker      TEXT,
    lease_until {REAL},
    not_before  {REAL},                 -- a retry waits until then (retry_wait)
    noop        SMALLINT NOT NULL,      -- 1: neither fn nor cmd (finishes where it is claimed)
    labels      TEXT,                   -- JSON, NULL when the task needs none
    resources   TEXT,                   -- JSON, NULL when the task needs none
    error       TEXT,
    updated     {REAL}
);
-- Every index below is partial: a task is in it only in the states that query needs, so a
-- transition rewrites few index pages (each page is a WAL frame written at commit).
-- A claim is a seek on this index: only ready tasks are in it.
CREATE INDEX tasks_ready ON tasks ({KEY}) WHERE state = {READY};
-- Leases to renew or reap.
CREATE INDEX tasks_running ON tasks (worker) WHERE state = {RUNNING};
-- Retries coming due.
CREATE INDEX tasks_retry ON tasks (not_before) WHERE state = {RETRY_WAIT};
-- Unfinished tasks, keyed by seq so that moving between unfinished states rewrites nothing.
CREATE INDEX tasks_unfinished ON tasks (seq) WHERE state IN ({UNFINISHED});

-- Written once at submission; kept apart so task rows stay small (more per page).
CREATE TABLE specs (
    seq  {SEQ},
    spec TEXT NOT NULL                  -- JSON of the TaskSpec (functions as import paths)
);

-- The value of a done task (none for a task that returned None).
CREATE TABLE results (
    seq  {SEQ},
    kind TEXT NOT NULL,                 -- json | pickle | file:json | file:pickle
    data {BLOB} NOT NULL
);

-- parent -> child; a completion reads its own children only.
CREATE TABLE edges (
    parent BIGINT NOT NULL,
    child  BIGINT NOT NULL,
    PRIMARY KEY (parent, child)
) {NOROWID};

-- One row per committed transition: the audit trail and the source of `conveyor events`.
CREATE TABLE audit (
    id         {AUTO},
    ts         {REAL} NOT NULL,
    event      TEXT NOT NULL,
    task       TEXT,
    from_state SMALLINT,
    to_state   SMALLINT,
    worker     TEXT,
    attempt    INTEGER,
    error      TEXT,
    extra      TEXT                     -- JSON of further fields
);
-- No index on task: `history` is an occasional scan; an index would cost a page per row.

CREATE TABLE workers (
    name      TEXT PRIMARY KEY,
    host      TEXT,
    pid       INTEGER,
    joined    {REAL} NOT NULL,
    last_seen {REAL} NOT NULL,
    lease_s   {REAL} NOT NULL,
    state     TEXT NOT NULL,            -- alive | left | lost
    info      TEXT
);

-- migration: 2
-- Fingerprints (issue 7, docs/incremental.md). One row per task submitted with fingerprints:
-- the fingerprint the task is to run with, which is the one of its last successful run once it
-- is done (open_graph writes it only for tasks that will run, or whose fingerprint did not
-- change, and fences a running attempt whose fingerprint changed), and its parts as JSON
-- ({"code", "args", "inputs": [[path, digest]], "parents": [[id, fp]]}) so that a plan can say
-- what changed. Kept apart from tasks: the claim/complete path never reads it.
CREATE TABLE fingerprints (
    seq   {SEQ},
    fp    TEXT NOT NULL,
    parts TEXT NOT NULL
);

-- Content hashes of declared input files with the (mtime, size) they were read at: a file whose
-- mtime and size did not change is not read again.
CREATE TABLE file_hashes (
    path     TEXT PRIMARY KEY,
    mtime_ns BIGINT NOT NULL,
    size     BIGINT NOT NULL,
    digest   TEXT NOT NULL
);

-- migration: 3
-- Admission (issue 5, docs/fairness.md "Durable stores"). A graph that uses groups, labels,
-- resources or gangs gives every task a shape >= 1; plain graphs keep shape 0 and never touch
-- these tables (their claims stay on tasks_ready, as fast as before).
-- Groups: weight, cap and the running count, kept by every transition into or out of running
-- (claim, complete, fail, release, reap), so that a claim reads counts, never counts rows.
CREATE TABLE task_groups (
    name    TEXT PRIMARY KEY,
    weight  {REAL} NOT NULL DEFAULT 1,
    cap     INTEGER,
    running INTEGER NOT NULL DEFAULT 0
);
-- Shapes: what a task asks of a slot (group, resources, label constraints). Every task of a
-- shape fits a worker's offer or none does, so a claim checks each shape once and seeks only
-- the heads of those that fit. A gang has a shape of its own (its members only).
CREATE TABLE task_shapes (
    id        {SEQ},
    grp       TEXT NOT NULL,
    sig       TEXT NOT NULL UNIQUE,     -- JSON {"group", "resources", "labels", "gang"}
    gang      TEXT,
    size      INTEGER,                  -- the gang's member count
    reserved  {REAL},                   -- since when free slots are held for the gang
    released  SMALLINT NOT NULL DEFAULT 0  -- 1: the reservation ran out (gang_wait_s)
);
ALTER TABLE tasks ADD COLUMN shape INTEGER NOT NULL DEFAULT 0;
-- The head of one shape's queue: a seek on (shape, key); plain tasks (shape 0) are not in it.
CREATE INDEX tasks_shape_ready ON tasks (shape, {KEY})
    WHERE state = {READY} AND shape > 0;

-- migration: 4
-- Task numbers are never reused (issue 16): a worker of a graph that `--replace` discarded may
-- still hold a claim (seq, token), and no task of the new graph may answer to it. meta
-- "last_seq" is the last seq handed out; every submission draws from it (draw_seqs), and a
-- replacement, which empties the tasks, leaves it alone.
INSERT INTO meta (key, value) SELECT 'last_seq', CAST(coalesce(max(seq), 0) AS TEXT) FROM tasks;

-- migration: 5
-- Preemption (issue 15, docs/fairness.md "Preemption"). Each task's preemptions so far and the
-- last one's time (anti-thrash and aging), and the requests a worker's decision records for
-- running tasks (on any worker): the victim's worker acts on its own at its next tick, cancels
-- the task and hands it back (task_preempted). One row per victim; a row whose task no longer
-- runs under the same lease generation is stale and removed by the next decision.
ALTER TABLE tasks ADD COLUMN preempted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN preempted_at {REAL};
CREATE TABLE preempt_requests (
    seq     {SEQ},                      -- the victim (tasks.seq)
    token   INTEGER NOT NULL,           -- its lease generation when asked
    worker  TEXT NOT NULL,              -- the worker it runs on
    waiting TEXT NOT NULL,              -- the higher-band task it makes room for
    at      {REAL} NOT NULL
);
CREATE INDEX preempt_requests_worker ON preempt_requests (worker);

-- migration: 6
-- Owed releases (issue 16, point 9; docs/architecture.md "Owed releases"). PostgreSQL: a
-- completion never waits for a child row another worker's transaction holds (a Montage fan-in
-- child has ~900 parents, finished by every worker at once); it appends what it owes that child
-- here, in its own transaction, and a later release folds the row into the child's waiting
-- count (queries.sql, RELEASE_OWED). Append and delete only; SQLite never writes it (one writer
-- at a time: nothing to wait for).
CREATE TABLE owed (
    id    {AUTO},
    child BIGINT NOT NULL,                 -- tasks.seq
    n     INTEGER NOT NULL                 -- parents done that its waiting still counts
);
