-- Feedback on the bot's answers (ragline.providers.feedback): every answer the Teams bot
-- sent, keyed as a feedback invoke names it (the conversation and the message's activity
-- id), and the thumbs up or down each user gave it (a user's second rating replaces the
-- first).

CREATE TABLE bot_answers (
    conversation_id text NOT NULL,
    activity_id     text NOT NULL,  -- the message's id, kept when it is finished by update
    tenant_id       text,           -- the tenant of the conversation it was sent in
    question        text NOT NULL,
    text            text NOT NULL,  -- as sent, without the list of sources
    sources         jsonb NOT NULL, -- the passages as the model saw them
    model           text NOT NULL,
    cause           text,           -- why it was cut short, if it was
    at              double precision NOT NULL,
    PRIMARY KEY (conversation_id, activity_id)
);

CREATE TABLE bot_feedback (
    conversation_id text NOT NULL,
    activity_id     text NOT NULL,
    user_id         text NOT NULL,  -- the Teams user who gave it
    reaction        text NOT NULL CHECK (reaction IN ('like', 'dislike')),
    text            text NOT NULL,  -- what they wrote, or ''
    at              double precision NOT NULL,
    PRIMARY KEY (conversation_id, activity_id, user_id),
    FOREIGN KEY (conversation_id, activity_id)
        REFERENCES bot_answers (conversation_id, activity_id) ON DELETE CASCADE
);
-- GET /api/v1/feedback pages newest first.
CREATE INDEX bot_feedback_at ON bot_feedback (at);
