-- Service tokens: how machine callers (the core system, scripts) authenticate to the HTTP API.
-- A token is `cit_{id}_{secret}`. Only the SHA-256 of the secret is kept: the token itself is
-- shown once, by `cloud-ingest token create`, and cannot be recovered from this table.
CREATE TABLE api_tokens (
    -- The public half of the token: names it in `token list`, `token revoke` and the logs.
    id             text        PRIMARY KEY,
    name           text        NOT NULL,
    secret_sha256  bytea       NOT NULL CHECK (length(secret_sha256) = 32),
    scopes         text[]      NOT NULL,
    -- The deployment environments the token may be used in; NULL: any.
    environments   text[],
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- NULL: never expires.
    expires_at     timestamptz,
    revoked_at     timestamptz,
    -- Updated at most once a minute, so that unused tokens can be found and revoked.
    last_used_at   timestamptz
);
-- A name belongs to one live token at a time, so that `token revoke NAME` is unambiguous.
CREATE UNIQUE INDEX api_tokens_live_name ON api_tokens (name) WHERE revoked_at IS NULL;
