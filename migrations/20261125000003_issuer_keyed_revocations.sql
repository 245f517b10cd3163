-- Session and subject revocations keyed by issuer.
--
-- When one layer accepts tokens from several identity providers, a `sid` or `sub` is unique only
-- per issuer: a logout from one provider must not end another provider's user of the same `sub`.
-- Such revocations live in two new tables keyed by (key, issuer); the existing tables keep
-- their meaning, "this sid / subject of every issuer", so rows written before this migration (a
-- ban at 'infinity', say) keep applying to every issuer.
--
-- New tables rather than an issuer column on the old ones: instances of an earlier version keep
-- running during a rolling deploy, and they write `ON CONFLICT (session_id)` and read one cutoff
-- row per subject. A primary key of (issuer, session_id), or several cutoff rows per subject,
-- would break them. They do not read these tables, so they do not enforce keyed rows (their check
-- query misses them, and their mirror confirms a hit with that query): finish a rolling deploy
-- before any instance files keyed revocations (only layers with several issuers, or told to, do).

CREATE TABLE jwt_issuer_session_revocations (
    issuer      text        NOT NULL,
    session_id  text        NOT NULL,
    subject     text,
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz NOT NULL DEFAULT now(),
    reason      text,
    revoked_by  text,
    seq         bigint      NOT NULL UNIQUE DEFAULT nextval('jwt_revocation_seq'),
    -- Key first: a layer that does not key by issuer asks for a sid under any issuer.
    PRIMARY KEY (session_id, issuer),
    CHECK (issuer <> ''),
    CHECK (session_id <> '')
);
CREATE INDEX jwt_issuer_session_revocations_subject_idx ON jwt_issuer_session_revocations (subject);
CREATE INDEX jwt_issuer_session_revocations_expires_at_idx ON jwt_issuer_session_revocations (expires_at);

COMMENT ON TABLE jwt_issuer_session_revocations IS
    'Revoked sessions of one issuer: every token whose iss equals issuer and whose sid equals session_id is invalid until expires_at. Rows of jwt_session_revocations apply to every issuer.';
COMMENT ON COLUMN jwt_issuer_session_revocations.issuer IS 'The exact iss of the session''s tokens.';

CREATE TABLE jwt_issuer_subject_revocations (
    issuer      text        NOT NULL,
    subject     text        NOT NULL,
    not_before  timestamptz NOT NULL,
    revoked_at  timestamptz NOT NULL DEFAULT now(),
    reason      text,
    revoked_by  text,
    seq         bigint      NOT NULL UNIQUE DEFAULT nextval('jwt_revocation_seq'),
    PRIMARY KEY (subject, issuer),
    CHECK (issuer <> ''),
    CHECK (subject <> '')
);

COMMENT ON TABLE jwt_issuer_subject_revocations IS
    'Per-subject cutoffs of one issuer: every token with this iss and sub and with iat at or before not_before (in whole seconds) is revoked. Rows of jwt_subject_revocations apply to every issuer.';
COMMENT ON COLUMN jwt_issuer_subject_revocations.issuer IS 'The exact iss of the subject''s tokens.';

-- The log gains an `issuer` column, last, so that readers selecting the earlier columns by name
-- (earlier versions) are unaffected; it is NULL for revocations of every issuer.
CREATE OR REPLACE VIEW jwt_revocation_log AS
    SELECT 'token'::text AS kind, jti AS key, subject, expires_at, NULL::timestamptz AS not_before,
           revoked_at, reason, revoked_by, seq, NULL::text AS issuer
      FROM jwt_revocations
    UNION ALL
    SELECT 'session', session_id, subject, expires_at, NULL, revoked_at, reason, revoked_by, seq, NULL
      FROM jwt_session_revocations
    UNION ALL
    SELECT 'subject', subject, subject, NULL, not_before, revoked_at, reason, revoked_by, seq, NULL
      FROM jwt_subject_revocations
    UNION ALL
    SELECT 'session', session_id, subject, expires_at, NULL, revoked_at, reason, revoked_by, seq, issuer
      FROM jwt_issuer_session_revocations
    UNION ALL
    SELECT 'subject', subject, subject, NULL, not_before, revoked_at, reason, revoked_by, seq, issuer
      FROM jwt_issuer_subject_revocations;

COMMENT ON VIEW jwt_revocation_log IS 'All revocations (token, session, subject; issuer NULL for every issuer) in one shape, ordered by seq for catch-up.';

CREATE OR REPLACE FUNCTION jwt_revocation_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    payload jsonb;
BEGIN
    IF TG_TABLE_NAME = 'jwt_revocations' THEN
        payload := jsonb_build_object('kind', 'token', 'key', NEW.jti, 'subject', NEW.subject,
            'expires_at', extract(epoch FROM NEW.expires_at));
    ELSIF TG_TABLE_NAME = 'jwt_session_revocations' THEN
        payload := jsonb_build_object('kind', 'session', 'key', NEW.session_id, 'subject', NEW.subject,
            'expires_at', extract(epoch FROM NEW.expires_at));
    ELSIF TG_TABLE_NAME = 'jwt_issuer_session_revocations' THEN
        payload := jsonb_build_object('kind', 'session', 'key', NEW.session_id, 'subject', NEW.subject,
            'expires_at', extract(epoch FROM NEW.expires_at), 'issuer', NEW.issuer);
    ELSIF TG_TABLE_NAME = 'jwt_issuer_subject_revocations' THEN
        payload := jsonb_build_object('kind', 'subject', 'key', NEW.subject, 'subject', NEW.subject,
            'not_before', extract(epoch FROM NEW.not_before), 'issuer', NEW.issuer);
    ELSE
        payload := jsonb_build_object('kind', 'subject', 'key', NEW.subject, 'subject', NEW.subject,
            'not_before', extract(epoch FROM NEW.not_before));
    END IF;
    payload := payload || jsonb_build_object('seq', NEW.seq, 'revoked_at', extract(epoch FROM NEW.revoked_at),
        'reason', NEW.reason, 'revoked_by', NEW.revoked_by);
    -- NOTIFY payloads are limited to 8000 bytes. When the row does not fit, only kind and seq are
    -- sent; listeners then read the row by seq.
    IF octet_length(payload::text) > 7900 THEN
        payload := jsonb_build_object('kind', payload->'kind', 'seq', NEW.seq, 'truncated', true);
    END IF;
    PERFORM pg_notify('jwt_revocation', payload::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER jwt_issuer_session_revocations_seq BEFORE INSERT OR UPDATE ON jwt_issuer_session_revocations
    FOR EACH ROW EXECUTE FUNCTION jwt_revocation_assign_seq();
CREATE TRIGGER jwt_issuer_subject_revocations_seq BEFORE INSERT OR UPDATE ON jwt_issuer_subject_revocations
    FOR EACH ROW EXECUTE FUNCTION jwt_revocation_assign_seq();

CREATE TRIGGER jwt_issuer_session_revocations_notify AFTER INSERT OR UPDATE ON jwt_issuer_session_revocations
    FOR EACH ROW EXECUTE FUNCTION jwt_revocation_notify();
CREATE TRIGGER jwt_issuer_subject_revocations_notify AFTER INSERT OR UPDATE ON jwt_issuer_subject_revocations
    FOR EACH ROW EXECUTE FUNCTION jwt_revocation_notify();
