-- ragline's shared state on PostgreSQL: the record store and the job store.
-- Applied once, in order, by ragline.providers.postgres (see ragline_migrations).

-- Which generation of each document is visible: the one named here.
CREATE TABLE documents (
    collection   text NOT NULL,
    document_id  text NOT NULL,
    content_hash text NOT NULL,
    generation   integer NOT NULL,
    chunks       integer NOT NULL,
    source       text NOT NULL,
    updated_at   double precision NOT NULL,
    PRIMARY KEY (collection, document_id)
);

-- Every generation ever reserved: written, switched in (active), or retired.
CREATE TABLE generations (
    collection  text NOT NULL,
    document_id text NOT NULL,
    generation  integer NOT NULL,
    state       text NOT NULL CHECK (state IN ('writing', 'active', 'retired')),
    owner       text,
    PRIMARY KEY (collection, document_id, generation)
);

-- Every chunk recorded before the vector store got it, with its text for keyword search.
CREATE TABLE chunks (
    collection  text NOT NULL,
    chunk_id    text NOT NULL,
    document_id text NOT NULL,
    generation  integer NOT NULL,
    chunk_index integer NOT NULL,
    source      text NOT NULL,
    text        text NOT NULL,
    words       tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED,
    PRIMARY KEY (collection, chunk_id)
);
CREATE INDEX chunks_by_generation ON chunks (collection, document_id, generation);
CREATE INDEX chunks_by_words ON chunks USING gin (words);

CREATE TABLE collections (
    name            text PRIMARY KEY,
    embedding_model text NOT NULL,
    dimensions      integer NOT NULL,
    last_ingestion  double precision
);

-- Ingestion jobs: their state and body (inputs, progress, error, cause).
CREATE TABLE jobs (
    job_id     text PRIMARY KEY,
    state      text NOT NULL,
    body       jsonb NOT NULL,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL
);
CREATE INDEX jobs_by_state ON jobs (state, created_at);
