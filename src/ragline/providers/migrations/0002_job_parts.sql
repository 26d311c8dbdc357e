-- Cluster mode: a job fans out into parts, each a procrastinate task any worker takes.
-- A part's inputs travel in the database (no replica-local file); its progress is its own.
CREATE TABLE job_parts (
    job_id   text NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    part     integer NOT NULL,
    state    text NOT NULL DEFAULT 'queued'
             CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    inputs   jsonb NOT NULL,           -- server-side paths, and names of job_files
    task_id  bigint,                   -- the procrastinate job that runs it
    progress jsonb,
    error    text,
    PRIMARY KEY (job_id, part)
);

CREATE TABLE job_files (
    job_id text NOT NULL,
    part   integer NOT NULL,
    name   text NOT NULL,
    data   bytea NOT NULL,
    PRIMARY KEY (job_id, part, name),
    FOREIGN KEY (job_id, part) REFERENCES job_parts (job_id, part) ON DELETE CASCADE
);
