-- Cluster mode: Teams activities accepted by any replica. The unique key drops a
-- redelivery that lands on another replica; seq orders a conversation's turns across
-- replicas (a turn waits until every earlier one of its conversation is done).
CREATE TABLE bot_activities (
    seq             bigserial PRIMARY KEY,
    conversation_id text NOT NULL,
    activity_id     text NOT NULL,
    done            boolean NOT NULL DEFAULT false,
    accepted_at     double precision NOT NULL,
    UNIQUE (conversation_id, activity_id)
);
CREATE INDEX bot_activities_pending ON bot_activities (conversation_id, seq) WHERE NOT done;
