-- Named queries of the SQL stores. "-- name: q" starts query q; "-- name: q@postgres" (or
-- @sqlite) overrides q for one dialect. Parameters are :name (PostgreSQL gets %(name)s).
-- {NAME}s are constants filled in when loading (store/sqlqueries.py): task states ({READY} ...),
-- sets of states ({UNFINISHED}, {SKIPPABLE}, {RETRYABLE}) and {KEY}, the depth-first key;
-- "-- fragment: NAME" starts a clause that {NAME} stands for (written once, shared by queries).
-- Lists travel as JSON text on SQLite (json_each) and as arrays on PostgreSQL (= ANY).
-- Everything on the claim/complete path is an index seek; nothing here scans all tasks
-- except the status queries (counts_by_group, rate) that only `conveyor status` runs.

-- name: meta_get
SELECT value FROM meta WHERE key = :key;

-- name: meta_set
INSERT INTO meta (key, value) VALUES (:key, :value)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- New task numbers: the counter (schema migration 4) moves on by :n and returns the last one
-- drawn. Its row lock also orders submissions that run at once (PostgreSQL).
-- name: draw_seqs
UPDATE meta SET value = CAST(CAST(value AS BIGINT) + :n AS TEXT) WHERE key = 'last_seq'
RETURNING CAST(value AS BIGINT);

-- name: unfinished
SELECT count(*) FROM tasks WHERE state IN ({UNFINISHED});

-- name: counts
SELECT state, count(*) FROM tasks GROUP BY state;

-- name: unfinished_by_state
SELECT state, count(*) FROM tasks WHERE state IN ({UNFINISHED}) GROUP BY state;

-- name: counts_by_group
SELECT grp, state, count(*) FROM tasks GROUP BY grp, state;

-- name: next_wakeup
SELECT min(not_before) FROM tasks WHERE state = {RETRY_WAIT};

-- name: any_ready
SELECT 1 FROM tasks WHERE state = {READY} LIMIT 1;

-- name: any_ready@sqlite
SELECT 1 FROM tasks INDEXED BY tasks_ready WHERE state = {READY} LIMIT 1;

-- name: any_unfinished
SELECT 1 FROM tasks WHERE state IN ({UNFINISHED}) LIMIT 1;

-- name: any_running
SELECT 1 FROM tasks WHERE state = {RUNNING} LIMIT 1;

-- name: task_by_id
SELECT seq, state, neg_depth, root_seq, token, attempt, error FROM tasks WHERE id = :id;

-- name: all_task_keys
SELECT id, seq, state, neg_depth FROM tasks;

-- name: insert_task
INSERT INTO tasks (seq, id, state, neg_depth, root_seq, grp, waiting, noop, labels, resources,
                   error, shape, updated)
VALUES (:seq, :id, :state, :neg_depth, :root_seq, :grp, :waiting, :noop, :labels, :resources,
        :error, :shape, :now);

-- name: insert_spec
INSERT INTO specs (seq, spec) VALUES (:seq, :spec);

-- name: insert_edge
INSERT INTO edges (parent, child) VALUES (:parent, :child);

-- Many edges in one statement (SQLite): :edges is a JSON array of parent << 32 | child.
-- name: insert_edges_packed@sqlite
INSERT INTO edges (parent, child) SELECT value >> 32, value & 4294967295 FROM json_each(:edges);

-- name: insert_audit
INSERT INTO audit (ts, event, task, from_state, to_state, worker, attempt, error, extra)
VALUES (:ts, :event, :task, :from_state, :to_state, :worker, :attempt, :error, :extra);

-- Audit ids never start again: after `--replace` emptied the table, its first row takes the
-- id after the old graph's last (SQLite would number an empty table from 1 again, and
-- `events --follow` would wait above the new graph's rows). PostgreSQL's identity never
-- restarts: its rows draw from it as always (and an explicit id would not move it on).
-- A run of audit rows alike but for their task, in one statement (SQLite: ~10x cheaper per row
-- than one INSERT per row). Rows go in in the order of :tasks (a JSON array), ids ascending.
-- name: insert_audit_run@sqlite
INSERT INTO audit (ts, event, task, from_state, to_state, worker, attempt, error, extra)
SELECT :ts, :event, value, :from_state, :to_state, :worker, :attempt, :error, :extra
FROM json_each(:tasks) ORDER BY key;

-- A run of pairs of rows, each pair about one task of :tasks, rows alike to the first pair's.
-- name: insert_audit_pairs@sqlite
INSERT INTO audit (ts, event, task, from_state, to_state, worker, attempt, error, extra)
SELECT iif(p.k, :ts1, :ts0), iif(p.k, :event1, :event0), j.value,
       iif(p.k, :from_state1, :from_state0), iif(p.k, :to_state1, :to_state0),
       iif(p.k, :worker1, :worker0), iif(p.k, :attempt1, :attempt0),
       iif(p.k, :error1, :error0), iif(p.k, :extra1, :extra0)
FROM json_each(:tasks) AS j, (SELECT 0 AS k UNION ALL SELECT 1) AS p
ORDER BY j.key, p.k;

-- PostgreSQL: the audit rows of a claim/complete transaction in one statement, as a JSON array
-- of rows keyed by column (COPY takes two round trips); ids follow the array's order (a
-- function scan feeding the insert: nothing reorders it).
-- name: insert_audit_json@postgres
INSERT INTO audit (ts, event, task, from_state, to_state, worker, attempt, error, extra)
SELECT ts, event, task, from_state, to_state, worker, attempt, error, extra
FROM json_to_recordset(:rows::json) AS r(ts float8, event text, task text, from_state int2,
                                         to_state int2, worker text, attempt int4, error text,
                                         extra text);

-- name: insert_audit_at
INSERT INTO audit (id, ts, event, task, from_state, to_state, worker, attempt, error, extra)
VALUES (:id, :ts, :event, :task, :from_state, :to_state, :worker, :attempt, :error, :extra);

-- name: insert_audit_at@postgres
INSERT INTO audit (ts, event, task, from_state, to_state, worker, attempt, error, extra)
VALUES (:ts, :event, :task, :from_state, :to_state, :worker, :attempt, :error, :extra);

-- name: audit_last
SELECT max(id) FROM audit;

-- name: wipe_tasks
DELETE FROM tasks;
-- name: wipe_edges
DELETE FROM edges;
-- name: wipe_audit
DELETE FROM audit;
-- name: wipe_workers
DELETE FROM workers;
-- name: wipe_specs
DELETE FROM specs;
-- name: wipe_results
DELETE FROM results;
-- name: wipe_admission
DELETE FROM task_shapes;
-- name: wipe_groups
DELETE FROM task_groups;
-- name: wipe_fingerprints
DELETE FROM fingerprints;
-- name: wipe_owed
DELETE FROM owed;

-- Fingerprints (schema migration 2; sqlfp.py): open_graph and plan only, never the claim or
-- complete path. A resume reads every task's fingerprint once; the rest is O(changed).
-- name: fp_all
SELECT t.id, t.seq, t.state, t.neg_depth, f.fp
FROM tasks t LEFT JOIN fingerprints f ON f.seq = t.seq;

-- name: fp_parts_of
SELECT seq, fp, parts FROM fingerprints WHERE seq IN (SELECT value FROM json_each(:seqs));

-- name: fp_parts_of@postgres
SELECT seq, fp, parts FROM fingerprints WHERE seq = ANY(:seqs);

-- name: fp_insert
INSERT INTO fingerprints (seq, fp, parts) VALUES (:seq, :fp, :parts);

-- name: fp_set
INSERT INTO fingerprints (seq, fp, parts) VALUES (:seq, :fp, :parts)
ON CONFLICT (seq) DO UPDATE SET fp = excluded.fp, parts = excluded.parts;

-- name: fp_file_hashes
SELECT path, mtime_ns, size, digest FROM file_hashes;

-- name: fp_file_hash_set
INSERT INTO file_hashes (path, mtime_ns, size, digest) VALUES (:path, :mtime_ns, :size, :digest)
ON CONFLICT (path) DO UPDATE
SET mtime_ns = excluded.mtime_ns, size = excluded.size, digest = excluded.digest;

-- A done, failed (fence = 0, a fresh retry budget) or running task runs again: fence = 1 takes
-- a running attempt's lease over, so that its completion is refused (and does not count).
-- name: fp_set_task
UPDATE tasks
SET state = :state, waiting = :waiting, token = token + :fence,
    attempt = CASE WHEN :fence = 1 THEN attempt - 1 ELSE 0 END,
    lost = 0, error = NULL, not_before = NULL, worker = NULL, lease_until = NULL, updated = :now
WHERE seq = :seq;

-- name: fp_set_waiting
UPDATE tasks SET state = :state, waiting = :waiting, updated = :now WHERE seq = :seq;

-- name: fp_update_spec
UPDATE specs SET spec = :spec WHERE seq = :seq;

-- name: fp_seq_of
SELECT seq FROM tasks WHERE id = :id;

-- name: fp_delete_edge
DELETE FROM edges WHERE parent = :parent AND child = :child;

-- The claim: retries that came due go back to ready, then the best ready keys are taken.
-- name: due_retries
UPDATE tasks SET state = {READY}, not_before = NULL
WHERE state = {RETRY_WAIT} AND not_before <= :now
RETURNING id, attempt;

-- name: ready_window
SELECT seq, neg_depth, root_seq, noop, labels, resources FROM tasks
WHERE state = {READY}
ORDER BY {KEY}
LIMIT :limit;

-- SQLite's planner, without statistics, would rather sort the state index: name the index.
-- name: ready_window@sqlite
SELECT seq, neg_depth, root_seq, noop, labels, resources FROM tasks INDEXED BY tasks_ready
WHERE state = {READY}
ORDER BY {KEY}
LIMIT :limit;

-- name: ready_window@postgres
SELECT seq, neg_depth, root_seq, noop, labels, resources FROM tasks
WHERE state = {READY}
ORDER BY {KEY}
LIMIT :limit
FOR UPDATE SKIP LOCKED;

-- name: ready_window_after
SELECT seq, neg_depth, root_seq, noop, labels, resources FROM tasks
WHERE state = {READY} AND ({KEY}) > (:neg_depth, :root_seq, :seq)
ORDER BY {KEY}
LIMIT :limit;

-- name: ready_window_after@sqlite
SELECT seq, neg_depth, root_seq, noop, labels, resources FROM tasks INDEXED BY tasks_ready
WHERE state = {READY} AND ({KEY}) > (:neg_depth, :root_seq, :seq)
ORDER BY {KEY}
LIMIT :limit;

-- name: ready_window_after@postgres
SELECT seq, neg_depth, root_seq, noop, labels, resources FROM tasks
WHERE state = {READY} AND ({KEY}) > (:neg_depth, :root_seq, :seq)
ORDER BY {KEY}
LIMIT :limit
FOR UPDATE SKIP LOCKED;

-- name: claim_seqs
UPDATE tasks
SET state = {RUNNING}, attempt = attempt + 1, token = token + 1, worker = :worker,
    lease_until = :lease_until, updated = :now
WHERE seq IN (SELECT value FROM json_each(:seqs)) AND state = {READY}
RETURNING seq, id, attempt, token, neg_depth, root_seq, noop;

-- name: claim_seqs@postgres
UPDATE tasks
SET state = {RUNNING}, attempt = attempt + 1, token = token + 1, worker = :worker,
    lease_until = :lease_until, updated = :now
WHERE seq = ANY(:seqs) AND state = {READY}
RETURNING seq, id, attempt, token, neg_depth, root_seq, noop;

-- PostgreSQL: the claim with the specs of its tasks that are not no-ops, in one round trip.
-- The no-ops :done (completed in this transaction: sqlsteps.start) go straight to done: one
-- new version of each row, not two.
-- name: claim_seqs_specs@postgres
UPDATE tasks
SET state = CASE WHEN seq = ANY(:done) THEN {DONE} ELSE {RUNNING} END,
    attempt = attempt + 1, token = token + 1, worker = :worker,
    lease_until = CASE WHEN seq = ANY(:done) THEN NULL ELSE :lease_until END,
    error = CASE WHEN seq = ANY(:done) THEN NULL ELSE error END, updated = :now
WHERE seq = ANY(:seqs) AND state = {READY}
RETURNING seq, id, attempt, token, neg_depth, root_seq, noop,
          CASE WHEN noop = 0 THEN (SELECT spec FROM specs WHERE specs.seq = tasks.seq) END;

-- name: specs_of
SELECT seq, spec FROM specs WHERE seq IN (SELECT value FROM json_each(:seqs));

-- name: specs_of@postgres
SELECT seq, spec FROM specs WHERE seq = ANY(:seqs);

-- Finishing. Each is fenced by (state = running, token = the claim's lease generation).
-- name: complete_task
UPDATE tasks
SET state = {DONE}, error = NULL, lease_until = NULL, updated = :now
WHERE seq = :seq AND state = {RUNNING} AND token = :token;

-- Several completions in one statement, each fenced by its own lease generation. O(k log n).
-- name: complete_claims
UPDATE tasks
SET state = {DONE}, error = NULL, lease_until = NULL, updated = :now
FROM (SELECT s.value AS seq, json_extract(:tokens, '$[' || s.key || ']') AS token FROM json_each(:seqs) AS s) AS c
WHERE tasks.seq = c.seq AND tasks.token = c.token AND tasks.state = {RUNNING}
RETURNING tasks.seq;

-- PostgreSQL: "state + 0" is no predicate of the partial index tasks_running, so the planner
-- seeks each task by its primary key. With "state = running" it reads tasks_running whole
-- (every worker's running tasks, and the entries of tasks that finished since its last
-- vacuum) and filters: O(running + dead entries) per completion, growing with the workers.
-- name: complete_claims@postgres
UPDATE tasks
SET state = {DONE}, error = NULL, lease_until = NULL, updated = :now
FROM unnest(:seqs::bigint[], :tokens::bigint[]) AS c(seq, token)
WHERE tasks.seq = ANY(:seqs) AND tasks.seq = c.seq AND tasks.token = c.token
  AND tasks.state + 0 = {RUNNING}
RETURNING tasks.seq;

-- name: complete_task@postgres
UPDATE tasks
SET state = {DONE}, error = NULL, lease_until = NULL, updated = :now
WHERE seq = :seq AND state + 0 = {RUNNING} AND token = :token;

-- name: store_result
INSERT INTO results (seq, kind, data) VALUES (:seq, :kind, :data)
ON CONFLICT (seq) DO UPDATE SET kind = excluded.kind, data = excluded.data;

-- name: drop_result
DELETE FROM results WHERE seq = :seq;

-- A child losing one waiting parent (RELEASE_ONE) or d.n of them (RELEASE_COUNTED, d: the
-- children of a batch with their counts): at zero it is ready (a pending one, or an
-- invalidated one: done before, waiting to run again), stamped ``updated`` then (aging counts a
-- ready task's wait from it: age_ready).
-- fragment: RELEASE_ONE
SET waiting = waiting - 1,
    state = CASE WHEN waiting = 1 AND state IN ({PENDING}, {INVALIDATED}) THEN {READY} ELSE state END,
    updated = CASE WHEN waiting = 1 AND state IN ({PENDING}, {INVALIDATED}) THEN :now ELSE updated END

-- fragment: RELEASE_COUNTED
SET waiting = waiting - d.n,
    state = CASE WHEN waiting = d.n AND state IN ({PENDING}, {INVALIDATED}) THEN {READY} ELSE state END,
    updated = CASE WHEN waiting = d.n AND state IN ({PENDING}, {INVALIDATED}) THEN :now ELSE updated END

-- PostgreSQL: the release of the children of the finished tasks :seqs (none: a fold only) and
-- of up to :owed_max owed decrements (schema migration 6). No release ever waits for a child row
-- another transaction holds: the children are locked with SKIP LOCKED; the ones obtained lose
-- what they are owed now (the owed rows taken are deleted), and what the skipped ones are owed
-- is appended to owed in this transaction, for a later release (a completion's, or an idle
-- worker's fold: sqlstore.has_running) to apply. Each decrement is thus applied once, by the
-- statement that deletes its owed row or by the one that never wrote it, and a child reaches
-- zero (and is made ready) exactly once. Nothing here waits, so nothing deadlocks either.
-- The children go through arrays (= ANY(ARRAY(...))): a seek per child on the primary key.
-- Joined with d, the planner expects thousands of children from a batch of parents and reads
-- every task instead (a scan of the whole table per completion batch: quadratic in N).
-- fragment: RELEASE_OWED
d0 AS (SELECT child, count(*) AS n FROM edges WHERE parent = ANY(:seqs) GROUP BY child),
o AS (SELECT id, child, n FROM owed ORDER BY id LIMIT :owed_max FOR UPDATE SKIP LOCKED),
d AS (SELECT child, CAST(sum(n) AS INTEGER) AS n
      FROM (SELECT child, n FROM d0 UNION ALL SELECT child, n FROM o) AS u GROUP BY child),
kids AS (SELECT seq FROM tasks WHERE seq = ANY(ARRAY(SELECT child FROM d)) FOR UPDATE SKIP LOCKED),
paid AS (DELETE FROM owed WHERE id = ANY(ARRAY(SELECT id FROM o WHERE child IN (SELECT seq FROM kids)))),
owe AS (INSERT INTO owed (child, n)
        SELECT child, n FROM d0 WHERE child NOT IN (SELECT seq FROM kids) RETURNING child),
r AS (
    UPDATE tasks
    {RELEASE_COUNTED}
    FROM d
    WHERE tasks.seq = d.child AND tasks.seq = ANY(ARRAY(SELECT seq FROM kids))
    RETURNING tasks.seq, tasks.id, tasks.state, tasks.waiting
),
-- A last row (id NULL) counts the owed rows this statement leaves behind, when there are any:
-- someone must fold them (sqlsteps.children_ready wakes the idle workers).
owing AS (
    SELECT CAST(NULL AS BIGINT) AS seq, CAST(NULL AS TEXT) AS id, CAST(NULL AS SMALLINT) AS state,
           count(*) AS waiting
    FROM (SELECT child FROM owe
          UNION ALL SELECT child FROM o WHERE child NOT IN (SELECT seq FROM kids)) AS l
    HAVING count(*) > 0
)

-- O(fan-out): the finished task's children lose one waiting parent.
-- name: release_children
UPDATE tasks
{RELEASE_ONE}
WHERE seq IN (SELECT child FROM edges WHERE parent = :seq)
RETURNING id, state, waiting;

-- The same for a batch of no-op tasks completed in the transaction that claimed them: one
-- statement for the tasks, one for all their children. O(sum of fan-outs).
-- name: complete_seqs
UPDATE tasks SET state = {DONE}, error = NULL, lease_until = NULL, updated = :now
WHERE seq IN (SELECT value FROM json_each(:seqs)) AND state = {RUNNING};

-- name: complete_seqs@postgres
UPDATE tasks SET state = {DONE}, error = NULL, lease_until = NULL, updated = :now
WHERE seq = ANY(:seqs) AND state + 0 = {RUNNING};

-- name: release_children_of
UPDATE tasks
{RELEASE_COUNTED}
FROM (SELECT child, count(*) AS n FROM edges
      WHERE parent IN (SELECT value FROM json_each(:seqs)) GROUP BY child) AS d
WHERE tasks.seq = d.child
RETURNING id, state, waiting;

-- name: release_children_of@postgres
WITH {RELEASE_OWED}
SELECT id, state, waiting FROM (SELECT * FROM r UNION ALL SELECT * FROM owing) AS x
ORDER BY seq NULLS LAST;

-- PostgreSQL, the above as the last statement before the commit: the task_ready audit rows of
-- the children made ready are written by the statement itself (stamped :ts), so the
-- children's row locks are held for this statement and the commit only.
-- name: release_children_of_audit@postgres
WITH {RELEASE_OWED}, a AS (
    INSERT INTO audit (ts, event, task, from_state, to_state)
    SELECT :ts, 'task_ready', id, {PENDING}, {READY} FROM r
    WHERE state = {READY} AND waiting = 0 ORDER BY seq
)
SELECT id, state, waiting FROM (SELECT * FROM r UNION ALL SELECT * FROM owing) AS x
ORDER BY seq NULLS LAST;

-- Whether any release is owed (the idle path: sqlstore.has_running).
-- name: any_owed
SELECT 1 FROM owed LIMIT 1;

-- name: fail_retry
UPDATE tasks
SET state = {RETRY_WAIT}, not_before = :retry_at, error = :error, lease_until = NULL,
    updated = :now
WHERE seq = :seq AND state = {RUNNING} AND token = :token;

-- name: fail_final
UPDATE tasks
SET state = {FAILED}, error = :error, lease_until = NULL, updated = :now
WHERE seq = :seq AND state = {RUNNING} AND token = :token;

-- name: release_task
UPDATE tasks
SET state = {READY}, attempt = attempt - 1, worker = NULL, lease_until = NULL, updated = :now
WHERE seq = :seq AND state = {RUNNING} AND token = :token;

-- Skipping downstream of a failure, one level per call (each task is visited once).
-- name: children_to_skip
SELECT t.seq, t.id, t.state FROM edges e CROSS JOIN tasks t
WHERE t.seq = e.child AND e.parent IN (SELECT value FROM json_each(:seqs))
  AND t.state IN ({SKIPPABLE});

-- name: children_to_skip@postgres
SELECT t.seq, t.id, t.state FROM edges e JOIN tasks t ON t.seq = e.child
WHERE e.parent = ANY(:seqs) AND t.state IN ({SKIPPABLE})
ORDER BY t.seq FOR UPDATE OF t;

-- name: skip_seqs
UPDATE tasks SET state = {SKIPPED}, error = :error, updated = :now
WHERE seq IN (SELECT value FROM json_each(:seqs));

-- name: skip_seqs@postgres
UPDATE tasks SET state = {SKIPPED}, error = :error, updated = :now WHERE seq = ANY(:seqs);

-- Leases.
-- name: renew_leases
UPDATE tasks SET lease_until = :lease_until WHERE state = {RUNNING} AND worker = :worker;

-- name: expired_leases
SELECT seq, id, worker, attempt, lost, token FROM tasks
WHERE state = {RUNNING} AND lease_until < :now;

-- name: leases_of_worker
SELECT seq, id, worker, attempt, lost, token FROM tasks WHERE state = {RUNNING} AND worker = :worker;

-- name: requeue_lost
UPDATE tasks
SET state = {READY}, attempt = attempt - 1, lost = lost + 1, worker = NULL, lease_until = NULL,
    updated = :now
WHERE seq = :seq AND state = {RUNNING} AND token = :token;

-- name: fail_lost
UPDATE tasks
SET state = {FAILED}, lost = lost + 1, error = :error, worker = NULL, lease_until = NULL,
    updated = :now
WHERE seq = :seq AND state = {RUNNING} AND token = :token;

-- Workers.
-- name: worker_upsert
INSERT INTO workers (name, host, pid, joined, last_seen, lease_s, state, info)
VALUES (:name, :host, :pid, :now, :now, :lease_s, 'alive', :info)
ON CONFLICT (name) DO UPDATE
SET last_seen = excluded.last_seen, state = 'alive', info = excluded.info;

-- name: worker_seen
UPDATE workers SET last_seen = :now, lease_s = :lease_s, state = 'alive' WHERE name = :name;

-- name: worker_left
UPDATE workers SET state = 'left', last_seen = :now WHERE name = :name;

-- name: worker_lost
UPDATE workers SET state = 'lost' WHERE name = :name AND state = 'alive';

-- name: workers_alive
SELECT name, host, pid, last_seen, lease_s, info FROM workers WHERE state = 'alive';

-- The tasks each worker runs now (for status; a seek on the tasks_running index).
-- name: running_by_worker
SELECT worker, id FROM tasks WHERE state = {RUNNING} ORDER BY seq;

-- The worker a process on a host is (SQLite: who holds the store's write lock).
-- name: worker_by_pid
SELECT name, lease_s FROM workers WHERE host = :host AND pid = :pid ORDER BY last_seen DESC LIMIT 1;

-- Reading results and history.
-- name: result_of
SELECT t.state, r.kind, r.data, t.error, t.attempt
FROM tasks t LEFT JOIN results r ON r.seq = t.seq WHERE t.id = :id;

-- name: results_of
SELECT t.id, r.kind, r.data FROM tasks t LEFT JOIN results r ON r.seq = t.seq
WHERE t.id IN (SELECT value FROM json_each(:ids));

-- name: results_of@postgres
SELECT t.id, r.kind, r.data FROM tasks t LEFT JOIN results r ON r.seq = t.seq
WHERE t.id = ANY(:ids);

-- A scan of the audit table (no index on task: see schema.sql); only `history` runs it.
-- name: history
SELECT id, ts, event, task, from_state, to_state, worker, attempt, error, extra
FROM audit WHERE task = :task ORDER BY id;

-- name: audit_after
SELECT id, ts, event, task, from_state, to_state, worker, attempt, error, extra
FROM audit WHERE id > :after ORDER BY id LIMIT :limit;

-- The ids an event feed skipped, read again (sqlfeed.py): lo < id < hi for each (lo, hi) of
-- :los and :his; one index range per gap. PostgreSQL only: SQLite's feeds skip nothing.
-- name: audit_in_gaps@postgres
SELECT a.id, a.ts, a.event, a.task, a.from_state, a.to_state, a.worker, a.attempt, a.error,
       a.extra
FROM unnest(CAST(:los AS BIGINT[]), CAST(:his AS BIGINT[])) AS g(lo, hi)
JOIN audit a ON a.id > g.lo AND a.id < g.hi
ORDER BY a.id;

-- Which writers may still commit rows an event feed skipped: xmin (every transaction below it
-- has ended) and xmax (every transaction that has begun is below it) of a fresh snapshot.
-- SQLite has one writer at a time, so its rows commit in id order: nothing to wait for.
-- name: snapshot_bounds
SELECT NULL, NULL;

-- name: snapshot_bounds@postgres
SELECT CAST(CAST(pg_snapshot_xmin(pg_current_snapshot()) AS TEXT) AS BIGINT),
       CAST(CAST(pg_snapshot_xmax(pg_current_snapshot()) AS TEXT) AS BIGINT);

-- name: audit_recent
SELECT ts, event FROM audit ORDER BY id DESC LIMIT :limit;

-- Keep the newest :keep rows of each task's trail (and every worker row).
-- Result files rows name, and the attempts that may still write one (``prune``: scans).
-- name: result_files
SELECT data FROM results WHERE kind LIKE 'file:%';

-- A removed task's result is never read again (a task added back runs again): prune drops it.
-- name: drop_removed_results
DELETE FROM results WHERE seq IN (SELECT seq FROM tasks WHERE state = {REMOVED});

-- name: running_tokens
SELECT seq, token FROM tasks WHERE state = {RUNNING};

-- name: prune_audit
DELETE FROM audit WHERE id IN (
    SELECT id FROM (
        SELECT id, row_number() OVER (PARTITION BY task ORDER BY id DESC) AS rn
        FROM audit WHERE task IS NOT NULL
    ) ranked WHERE rn > :keep
);

-- Manual retry of a failed task and of what its failure skipped.
-- name: children_of
SELECT t.seq, t.id, t.state, t.waiting FROM edges e JOIN tasks t ON t.seq = e.child
WHERE e.parent = :seq;

-- name: spec_of
SELECT spec FROM specs WHERE seq = :seq;

-- name: task_state
SELECT seq, state, waiting FROM tasks WHERE id = :id;

-- name: done_since
SELECT count(*), min(updated) FROM tasks WHERE state = {DONE} AND updated >= :since;

-- A task its graph no longer has (sqlremove.py); a running one is fenced.
-- name: remove_task
UPDATE tasks
SET state = {REMOVED}, token = token + :fence, worker = NULL, lease_until = NULL,
    not_before = NULL, updated = :now
WHERE seq = :seq;

-- name: reset_task
UPDATE tasks
SET state = :state, lost = 0, error = NULL, not_before = NULL, worker = NULL,
    lease_until = NULL, updated = :now
WHERE seq = :seq;

-- name: failed_ids
SELECT id FROM tasks WHERE state IN ({RETRYABLE}) ORDER BY seq;

-- Admission (schema migration 3; sqladmission.py). Only graphs with groups, labels, resources
-- or gangs run these; a claim reads the groups and shapes (O(groups + shapes)) and seeks the
-- head of each shape that fits (O(log n) each) on tasks_shape_ready.
-- name: adm_any_shape
SELECT 1 FROM task_shapes LIMIT 1;

-- name: adm_groups
SELECT name, weight, cap, running FROM task_groups ORDER BY name;

-- name: adm_upsert_group
INSERT INTO task_groups (name, weight, cap) VALUES (:name, :weight, :cap)
ON CONFLICT (name) DO UPDATE SET weight = excluded.weight, cap = excluded.cap;

-- name: adm_ensure_group
INSERT INTO task_groups (name) VALUES (:name) ON CONFLICT (name) DO NOTHING;

-- name: adm_running_add
UPDATE task_groups SET running = CASE WHEN running + :n > 0 THEN running + :n ELSE 0 END
WHERE name = :grp;

-- name: adm_shapes
SELECT id, grp, sig, gang, size, reserved, released FROM task_shapes ORDER BY id;

-- name: adm_shape_id
SELECT id FROM task_shapes WHERE sig = :sig;

-- name: adm_insert_shape
INSERT INTO task_shapes (id, grp, sig, gang, size)
VALUES ((SELECT coalesce(max(id), 0) + 1 FROM task_shapes), :grp, :sig, :gang, :size)
RETURNING id;

-- name: adm_mark_gang
UPDATE task_shapes SET reserved = :reserved, released = :released WHERE id = :id;

-- The tasks submitted before the store switched to admission join the default shape (once).
-- name: adm_adopt_plain
UPDATE tasks SET shape = :shape WHERE shape = 0;

-- name: adm_head
SELECT seq, id, neg_depth, root_seq, noop FROM tasks
WHERE state = {READY} AND shape > 0 AND shape = :shape
ORDER BY {KEY}
LIMIT :limit;

-- name: adm_head@sqlite
SELECT seq, id, neg_depth, root_seq, noop FROM tasks INDEXED BY tasks_shape_ready
WHERE state = {READY} AND shape > 0 AND shape = :shape
ORDER BY {KEY}
LIMIT :limit;

-- Borrowing (core/borrow.py): whether a group has work that is not ready yet (waiting on
-- parents or a retry): its fair share then counts. Not a seek: a worker asks at most once per
-- BORROW_TTL_S per group, and only when a policy other than work_conserving is in force.
-- name: adm_group_waiting
SELECT 1 FROM tasks WHERE grp = :grp AND state IN ({PENDING}, {RETRY_WAIT}) LIMIT 1;

-- name: adm_group_of
SELECT s.grp FROM tasks t JOIN task_shapes s ON s.id = t.shape WHERE t.seq = :seq;

-- explain and status (not on the claim path).
-- name: adm_task
SELECT seq, state, neg_depth, root_seq, shape, not_before FROM tasks WHERE id = :id;

-- name: specs_by_ids
SELECT t.id, s.spec FROM tasks t JOIN specs s ON s.seq = t.seq
WHERE t.id IN (SELECT value FROM json_each(:ids));

-- name: specs_by_ids@postgres
SELECT t.id, s.spec FROM tasks t JOIN specs s ON s.seq = t.seq WHERE t.id = ANY(:ids);

-- name: adm_deps_states
SELECT id, state FROM tasks WHERE id IN (SELECT value FROM json_each(:ids));

-- name: adm_deps_states@postgres
SELECT id, state FROM tasks WHERE id = ANY(:ids);

-- name: adm_ahead_in_shape
SELECT count(*) FROM tasks
WHERE state = {READY} AND shape > 0 AND shape = :shape
  AND ({KEY}) < (:neg_depth, :root_seq, :seq);

-- name: adm_ahead_plain
SELECT count(*) FROM tasks
WHERE state = {READY} AND ({KEY}) < (:neg_depth, :root_seq, :seq);

-- Ready tasks of higher bands than a task whose band's smallest rank is :floor (the key's
-- first column packs band and depth: core/ordering.py).
-- name: adm_higher_band
SELECT count(*), min(neg_depth) FROM tasks WHERE state = {READY} AND neg_depth < :floor;

-- name: adm_first_plain
SELECT id FROM tasks WHERE state = {READY} ORDER BY {KEY} LIMIT 1;

-- name: adm_running_by_worker
SELECT worker, shape, count(*) FROM tasks WHERE state = {RUNNING} GROUP BY worker, shape;

-- A scan of the unfinished tasks: `conveyor status` only.
-- name: adm_waiting_by_shape
SELECT shape, state, count(*) FROM tasks WHERE state IN ({PENDING}, {READY}, {RETRY_WAIT})
GROUP BY shape, state;

-- name: endpoint_stats
-- A range of meta keys: each worker's EndpointLimiter statistics, written on its ticks
-- (`conveyor status`), or its runtime report (`runtime_reports`).
SELECT key, value FROM meta WHERE key >= :lo AND key < :hi;

-- Reads for people (the dashboard, store/sqlviews.py): never on the claim/complete path.
-- name: view_task
SELECT t.seq, t.state, t.grp, t.attempt, t.lost, t.worker, t.lease_until, t.not_before,
       t.error, t.updated, s.spec, f.fp
FROM tasks t LEFT JOIN specs s ON s.seq = t.seq LEFT JOIN fingerprints f ON f.seq = t.seq
WHERE t.id = :id;

-- name: view_parents
SELECT t.id FROM edges e JOIN tasks t ON t.seq = e.parent WHERE e.child = :seq ORDER BY t.seq;

-- name: view_children
SELECT t.id FROM edges e JOIN tasks t ON t.seq = e.child WHERE e.parent = :seq ORDER BY t.seq;

-- name: view_workers
SELECT name, host, pid, joined, last_seen, lease_s, state, info FROM workers ORDER BY joined, name;

-- name: view_task_ids
SELECT id FROM tasks WHERE state IN (SELECT value FROM json_each(:states)) ORDER BY seq
LIMIT :limit;

-- name: view_task_ids@postgres
SELECT id FROM tasks WHERE state = ANY(:states) ORDER BY seq LIMIT :limit;

-- name: view_groups_of
SELECT id, grp FROM tasks WHERE id IN (SELECT value FROM json_each(:ids));

-- name: view_groups_of@postgres
SELECT id, grp FROM tasks WHERE id = ANY(:ids);

-- Preemption (schema migration 5; sqlpreempt.py). The first two are the cheap look a worker
-- takes on its tick (index seeks): only when the best ready task is of a higher band than the
-- lowest band running does it take the decision, in one transaction.
-- name: preempt_best_ready
SELECT neg_depth FROM tasks WHERE state = {READY} ORDER BY {KEY} LIMIT 1;

-- name: preempt_lowest_running
SELECT max(neg_depth) FROM tasks WHERE state = {RUNNING};

-- name: preempt_ready_heads
SELECT t.seq, t.id, t.neg_depth, t.grp, t.labels, t.resources, s.gang
FROM tasks t LEFT JOIN task_shapes s ON s.id = t.shape
WHERE t.state = {READY} AND t.neg_depth < :below ORDER BY {KEY} LIMIT :n;

-- name: preempt_running
SELECT t.seq, t.id, t.neg_depth, t.worker, t.updated, t.grp, t.token, t.preempted,
       t.preempted_at, s.gang
FROM tasks t LEFT JOIN task_shapes s ON s.id = t.shape WHERE t.state = {RUNNING};

-- name: preempt_stale
DELETE FROM preempt_requests WHERE NOT EXISTS (
    SELECT 1 FROM tasks t
    WHERE t.seq = preempt_requests.seq AND t.state = {RUNNING} AND t.token = preempt_requests.token
);

-- name: preempt_pending
SELECT seq, worker FROM preempt_requests;

-- name: preempt_request
INSERT INTO preempt_requests (seq, token, worker, waiting, at)
VALUES (:seq, :token, :worker, :waiting, :now);

-- name: preempt_requests_of
SELECT seq, token, waiting FROM preempt_requests WHERE worker = :worker;

-- name: preempting_for
SELECT t.id FROM preempt_requests p JOIN tasks t ON t.seq = p.seq
WHERE p.waiting = :id ORDER BY p.at, t.seq;

-- name: preempt_taken
DELETE FROM preempt_requests WHERE seq = :seq;

-- name: preempt_count
UPDATE tasks SET preempted = preempted + 1, preempted_at = :now WHERE seq = :seq;

-- name: preempt_history
SELECT preempted, preempted_at FROM tasks WHERE seq = :seq;

-- Whether a group has work not running (ready, waiting on parents or a retry): its fair share
-- counts for borrowing. Asked only inside a preemption decision, once per group.
-- name: preempt_group_waiting
SELECT 1 FROM tasks WHERE grp = :grp AND state IN ({READY}, {PENDING}, {RETRY_WAIT}) LIMIT 1;

-- Aging (ordering.AGE_AFTER_S, store/sqlaging.py): of the first :n ready tasks of a band below
-- the default (rank > 0), in key order, those ready since :cutoff or earlier move to the default
-- band at the same depth (ordering.aged_rank: rank - ceil(rank / stride) * stride). Gang
-- members do not age (a gang moves as one). An index seek and at most :n rows.
-- name: age_due
SELECT 1 FROM (SELECT updated, shape FROM tasks WHERE state = {READY} AND neg_depth > 0
               ORDER BY {KEY} LIMIT :n) AS head
WHERE updated <= :cutoff AND shape NOT IN (SELECT id FROM task_shapes WHERE gang IS NOT NULL)
LIMIT 1;

-- name: age_ready
UPDATE tasks SET neg_depth = neg_depth - ((neg_depth + :stride - 1) / :stride) * :stride
WHERE seq IN (
    SELECT seq FROM (SELECT seq, updated, shape FROM tasks WHERE state = {READY} AND neg_depth > 0
                     ORDER BY {KEY} LIMIT :n) AS head
    WHERE updated <= :cutoff AND shape NOT IN (SELECT id FROM task_shapes WHERE gang IS NOT NULL)
);
