-- Agent credentials: one per host, only the SHA-256 of the secret. The secret itself is shown
-- once, when it is issued, and never stored.
CREATE TABLE credentials (
    host        TEXT PRIMARY KEY,
    hash        TEXT NOT NULL,
    issued_at   BIGINT NOT NULL
);
