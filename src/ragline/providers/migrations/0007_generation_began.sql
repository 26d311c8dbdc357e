-- When each generation was begun: an unfinished one older than the record store's
-- abandoned_after was left by a writer that died, and is collected by any writer.
-- (Only a writer's own unfinished generations are collected otherwise: other writers
-- may be at work.)
ALTER TABLE generations ADD COLUMN began_at double precision NOT NULL
    DEFAULT extract(epoch FROM now());
