-- Conversations that continue (ragline.providers.conversations): stored responses, for
-- the Responses API's previous_response_id, and the turns of each conversation, for the
-- native chat's conversation_id and Teams. An expires_at of NULL: kept until deleted.

CREATE TABLE responses (
    response_id text PRIMARY KEY,
    owner       text NOT NULL,      -- the principal who created it; never changes
    created_at  double precision NOT NULL,
    expires_at  double precision,
    body        jsonb NOT NULL,     -- GET /v1/responses/{id}
    input_items jsonb NOT NULL,     -- GET /v1/responses/{id}/input_items
    context     jsonb NOT NULL      -- the messages a follow-up continues from
);
CREATE INDEX responses_expires_at ON responses (expires_at);

CREATE TABLE conversations (
    conversation_id text PRIMARY KEY,
    owner           text NOT NULL,  -- who added its first turn
    expires_at      double precision
);
CREATE INDEX conversations_expires_at ON conversations (expires_at);

CREATE TABLE conversation_turns (
    conversation_id text NOT NULL REFERENCES conversations (conversation_id) ON DELETE CASCADE,
    seq             integer NOT NULL,   -- 1, 2, ...: the row lock of its conversation orders them
    messages        jsonb NOT NULL,
    at              double precision NOT NULL,
    PRIMARY KEY (conversation_id, seq)
);
