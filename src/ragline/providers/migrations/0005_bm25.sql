-- BM25 over the chunks' text, as SQLite FTS5 ranks it in the embedded mode: the
-- statistics it needs (chunks and their total length per collection, and in how many
-- chunks each term occurs), kept up to date as chunks are recorded and forgotten.
-- Like FTS5's, they count every recorded chunk, visible or not.
ALTER TABLE chunks ADD COLUMN length integer NOT NULL DEFAULT 0;  -- tokens, stop words out
UPDATE chunks SET length = (
    SELECT COALESCE(sum(array_length(positions, 1)), 0) FROM unnest(words));

CREATE TABLE chunk_stats (
    collection   text PRIMARY KEY,
    chunks       bigint NOT NULL,
    total_length bigint NOT NULL
);
INSERT INTO chunk_stats
    SELECT collection, count(*), sum(length) FROM chunks GROUP BY collection;

CREATE TABLE term_stats (
    collection text NOT NULL,
    term       text NOT NULL,
    df         integer NOT NULL,  -- chunks the term occurs in
    PRIMARY KEY (collection, term)
);
INSERT INTO term_stats
    SELECT c.collection, t.lexeme, count(*) FROM chunks c, unnest(c.words) t
    GROUP BY c.collection, t.lexeme;
