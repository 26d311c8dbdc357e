-- Cluster mode: the documents each part saw, so that a job with prune can remove, once
-- every part has succeeded, the documents that none of its inputs holds any more.
ALTER TABLE job_parts ADD COLUMN documents jsonb;
