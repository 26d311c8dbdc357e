-- Cluster mode: background runs, readable and cancellable from every replica.
-- The replica running a run writes its snapshot and appends its events as they come.
CREATE TABLE runs (
    run_id     text PRIMARY KEY,
    state      text NOT NULL,
    snapshot   jsonb NOT NULL,         -- GET /api/v1/runs/{id}
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL
);

CREATE TABLE run_events (
    run_id text NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    seq    integer NOT NULL,           -- the SSE id: Last-Event-ID resumes after it
    event  text NOT NULL,
    data   jsonb NOT NULL,
    PRIMARY KEY (run_id, seq)
);
