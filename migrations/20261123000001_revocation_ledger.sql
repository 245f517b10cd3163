-- The durable revocation ledger of tower-jwt-revocation.
--
-- Three tables, one per kind of revocation, sharing one sequence so that every change has a
-- global, gap-tolerant order (`seq`) that listeners catch up from. Other services and DBAs may
-- write these tables directly (psql, another language): the triggers below assign `seq` and
-- notify listeners for them too.

CREATE SEQUENCE jwt_revocation_seq AS bigint;

CREATE TABLE jwt_revocations (
    jti         text        PRIMARY KEY,
    subject     text,
    session_id  text,
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz NOT NULL DEFAULT now(),
    reason      text,
    revoked_by  text,
    seq         bigint      NOT NULL UNIQUE DEFAULT nextval('jwt_revocation_seq'),
    CHECK (jti <> '')
);
CREATE INDEX jwt_revocations_subject_idx ON jwt_revocations (subject);
CREATE INDEX jwt_revocations_expires_at_idx ON jwt_revocations (expires_at);

COMMENT ON TABLE jwt_revocations IS
    'Revoked JWTs by jti. A row makes the token with that jti invalid until expires_at (the token''s own expiry); purge_expired deletes it some margin after that.';
COMMENT ON COLUMN jwt_revocations.jti IS 'The token''s jti claim (or the sha256: id derived from its signing input).';
COMMENT ON COLUMN jwt_revocations.subject IS 'The token''s sub claim, for listing; not a foreign key.';
COMMENT ON COLUMN jwt_revocations.session_id IS 'The token''s sid claim, informational; session revocations live in jwt_session_revocations.';
COMMENT ON COLUMN jwt_revocations.expires_at IS 'The revoked token''s own exp: the row must be kept at least until then.';
COMMENT ON COLUMN jwt_revocations.seq IS 'Global change order shared by all revocation tables; listeners catch up with seq > last seen.';

-- Session revocations live in their own table of the same shape rather than in
-- jwt_revocations with a kind column: a sid and a jti are different key spaces, and a DBA
-- reading `jti` should never find a session id in it.
CREATE TABLE jwt_session_revocations (
    session_id  text        PRIMARY KEY,
    subject     text,
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz NOT NULL DEFAULT now(),
    reason      text,
    revoked_by  text,
    seq         bigint      NOT NULL UNIQUE DEFAULT nextval('jwt_revocation_seq'),
    CHECK (session_id <> '')
);
CREATE INDEX jwt_session_revocations_subject_idx ON jwt_session_revocations (subject);
CREATE INDEX jwt_session_revocations_expires_at_idx ON jwt_session_revocations (expires_at);

COMMENT ON TABLE jwt_session_revocations IS
    'Revoked sessions: every token whose sid claim equals session_id is invalid until expires_at (the expiry of the session''s last access token).';
COMMENT ON COLUMN jwt_session_revocations.session_id IS 'The sid claim shared by the session''s tokens.';
COMMENT ON COLUMN jwt_session_revocations.expires_at IS 'When the session''s last access token expires: the row must be kept at least until then.';

CREATE TABLE jwt_subject_revocations (
    subject     text        PRIMARY KEY,
    not_before  timestamptz NOT NULL,
    revoked_at  timestamptz NOT NULL DEFAULT now(),
    reason      text,
    revoked_by  text,
    seq         bigint      NOT NULL UNIQUE DEFAULT nextval('jwt_revocation_seq'),
    CHECK (subject <> '')
);

COMMENT ON TABLE jwt_subject_revocations IS
    'Per-subject cutoffs ("log out everywhere"): every token of the subject with iat at or before not_before (in whole seconds) is revoked. The cutoff only moves forward.';
COMMENT ON COLUMN jwt_subject_revocations.not_before IS
    'Tokens with iat <= floor(epoch of not_before) are revoked; a token issued in the same second is revoked too.';

-- Each seq column is UNIQUE, and the unique index is the seq index catch-up reads use.

-- seq in commit order. A sequence hands out numbers in the order transactions *start* writing,
-- and they may commit in another order: a listener that saw seq 7 and then lost its connection
-- would miss a seq 6 committed meanwhile if it caught up with "seq > 7". Taking a
-- transaction-scoped advisory lock before drawing the number serialises revocation writes
-- until commit, so numbers are drawn in commit order and "seq > last seen" is exact. Revocations
-- are human-rate events (logouts, password changes); the serialisation costs them nothing
-- measurable, and reads never take the lock.
CREATE FUNCTION jwt_revocation_assign_seq() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('jwt_revocation_seq'));
    NEW.seq := nextval('jwt_revocation_seq');
    RETURN NEW;
END;
$$;

-- Every revocation of every kind in one shape: what listeners catch up on (by seq) and what
-- listings read (by subject).
CREATE VIEW jwt_revocation_log AS
    SELECT 'token'::text AS kind, jti AS key, subject, expires_at, NULL::timestamptz AS not_before,
           revoked_at, reason, revoked_by, seq
      FROM jwt_revocations
    UNION ALL
    SELECT 'session', session_id, subject, expires_at, NULL, revoked_at, reason, revoked_by, seq
      FROM jwt_session_revocations
    UNION ALL
    SELECT 'subject', subject, subject, NULL, not_before, revoked_at, reason, revoked_by, seq
      FROM jwt_subject_revocations;

COMMENT ON VIEW jwt_revocation_log IS 'All revocations (token, session, subject) in one shape, ordered by seq for catch-up.';

CREATE FUNCTION jwt_revocation_notify() RETURNS trigger
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

CREATE TRIGGER jwt_revocations_seq BEFORE INSERT OR UPDATE ON jwt_revocations
    FOR EACH ROW EXECUTE FUNCTION jwt_revocation_assign_seq();
CREATE TRIGGER jwt_session_revocations_seq BEFORE INSERT OR UPDATE ON jwt_session_revocations
    FOR EACH ROW EXECUTE FUNCTION jwt_revocation_assign_seq();
CREATE TRIGGER jwt_subject_revocations_seq BEFORE INSERT OR UPDATE ON jwt_subject_revocations
    FOR EACH ROW EXECUTE FUNCTION jwt_revocation_assign_seq();

CREATE TRIGGER jwt_revocations_notify AFTER INSERT OR UPDATE ON jwt_revocations
    FOR EACH ROW EXECUTE FUNCTION jwt_revocation_notify();
CREATE TRIGGER jwt_session_revocations_notify AFTER INSERT OR UPDATE ON jwt_session_revocations
    FOR EACH ROW EXECUTE FUNCTION jwt_revocation_notify();
CREATE TRIGGER jwt_subject_revocations_notify AFTER INSERT OR UPDATE ON jwt_subject_revocations
    FOR EACH ROW EXECUTE FUNCTION jwt_revocation_notify();
