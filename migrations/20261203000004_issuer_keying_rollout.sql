-- What each build in a mixed fleet enforces, for the issuer-keyed tables of migration
-- 20261125000003 (whose own comment cannot change: an applied migration is checksummed).
--
-- * Builds before issuer keys read jwt_session_revocations and jwt_subject_revocations only.
--   They enforce every row of those two tables, and no row of the two keyed tables below.
-- * Builds from issuer keys on read all four tables. A layer that keys by issuer applies to a
--   token the unkeyed rows of its sid or sub, and the keyed rows under its iss; one that does
--   not key applies keyed rows of every issuer (too much, never too little).
-- * At their defaults, layers and receivers write nothing to the keyed tables until the
--   operator declares that every instance runs a build from issuer keys on
--   (PgStore::with_issuer_keying(true), in a rollout after the one that upgraded the last
--   instance). Until then they file every session and subject revocation in the unkeyed
--   tables, which every build enforces: no build in a mixed fleet accepts a token another
--   build refused. Code that asks for keyed rows itself (a layer's
--   key_revocations_by_issuer(true), a receiver's key_by_issuer(true), Revocation::issuer)
--   takes that decision on itself, and so does a DBA inserting keyed rows.
--   (The first builds with issuer keys keyed by default whenever a layer accepted two
--   issuers: those builds must not run beside builds before issuer keys.)
--
-- COMMENT ON needs the tables' owner, as the migration that created them did: run the first
-- start after an upgrade with the role that owns the schema.

COMMENT ON TABLE jwt_issuer_session_revocations IS
    'Revoked sessions of one issuer: every token whose iss equals issuer and whose sid equals session_id is invalid until expires_at. Rows of jwt_session_revocations apply to every issuer. Written only once every instance on this database enforces it (PgStore::with_issuer_keying): builds before issuer keys do not read this table.';
COMMENT ON TABLE jwt_issuer_subject_revocations IS
    'Per-subject cutoffs of one issuer: every token with this iss and sub and with iat at or before not_before (in whole seconds) is revoked. Rows of jwt_subject_revocations apply to every issuer. Written only once every instance on this database enforces it (PgStore::with_issuer_keying): builds before issuer keys do not read this table.';
