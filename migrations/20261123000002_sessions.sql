-- Sessions and refresh-token rotation (tower_jwt_revocation::session).
--
-- A session is a refresh-token family; its id is the `sid` claim of the access tokens minted
-- for it. Only SHA-256 digests of refresh tokens are stored. Every refresh token ever rotated
-- away is kept in jwt_session_used_tokens until the session expires, so presenting one again is
-- recognised as reuse (RFC 9700 §4.14.2), which revokes the whole session.

CREATE TABLE jwt_sessions (
    session_id     text        PRIMARY KEY,
    subject        text        NOT NULL,
    refresh_hash   bytea       NOT NULL UNIQUE,
    previous_hash  bytea,
    rotated_at     timestamptz,
    grace_used     boolean     NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_used_at   timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    revoked_at     timestamptz,
    user_agent     text,
    ip             text,
    CHECK (session_id <> ''),
    CHECK (octet_length(refresh_hash) = 32)
);
CREATE INDEX jwt_sessions_subject_idx ON jwt_sessions (subject);
CREATE INDEX jwt_sessions_expires_at_idx ON jwt_sessions (expires_at);

COMMENT ON TABLE jwt_sessions IS
    'Login sessions (refresh-token families). session_id is the sid claim of their access tokens.';
COMMENT ON COLUMN jwt_sessions.refresh_hash IS 'SHA-256 of the current refresh token; the token itself is never stored.';
COMMENT ON COLUMN jwt_sessions.previous_hash IS 'SHA-256 of the refresh token rotated away last (for the optional replay grace window).';
COMMENT ON COLUMN jwt_sessions.revoked_at IS 'Set when the session ends (logout, reuse detected, revoke_all); its tokens are then refused.';

CREATE TABLE jwt_session_used_tokens (
    refresh_hash  bytea       PRIMARY KEY,
    session_id    text        NOT NULL REFERENCES jwt_sessions (session_id) ON DELETE CASCADE,
    used_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (octet_length(refresh_hash) = 32)
);
CREATE INDEX jwt_session_used_tokens_session_idx ON jwt_session_used_tokens (session_id);

COMMENT ON TABLE jwt_session_used_tokens IS
    'Refresh tokens already rotated away (SHA-256), kept until their session is deleted: presenting one again is reuse.';
