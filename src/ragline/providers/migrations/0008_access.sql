-- Principals, collection grants and document ACLs (issue: who may see and stop what).

-- Principals and the SHA-256 digest of each one's key (never the key).
CREATE TABLE principals (
    name       text PRIMARY KEY,
    groups     text[] NOT NULL,
    admin      boolean NOT NULL,
    key_digest text NOT NULL UNIQUE,
    created_at double precision NOT NULL
);

-- Who may read and write each collection; `set` is false until access is set.
CREATE TABLE collection_grants (
    collection text PRIMARY KEY,
    readers    text[] NOT NULL,
    writers    text[] NOT NULL,
    creator    text,
    set        boolean NOT NULL
);

-- Each document's ACL class (0: whoever may read its collection), filtered on in the
-- same query as its chunks' keyword search; the read entries of each class.
ALTER TABLE documents ADD COLUMN acl bigint NOT NULL DEFAULT 0;
CREATE TABLE acl_classes (
    collection text NOT NULL,
    acl        bigint NOT NULL,
    readers    text[] NOT NULL,
    PRIMARY KEY (collection, acl)
);
