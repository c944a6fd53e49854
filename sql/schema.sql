-- Tables, types and roles of api_key. Runs first (bootstrap); functions come later.
-- Everything lives in schema api_key except the public API functions, which live in the
-- extension's schema (public by default) so callers need no qualification.
--
-- A column added in a later release goes at the end of its table, in the fresh install as in
-- the upgrade script, so that an upgraded database and a fresh one are the same.

-- Text arguments reach Rust as UTF-8 strings: other encodings are refused up front.
DO $encoding$
BEGIN
    IF pg_catalog.getdatabaseencoding() OPERATOR(pg_catalog.<>) 'UTF8' THEN
        RAISE EXCEPTION 'api_key needs a database with encoding UTF8, not %', pg_catalog.getdatabaseencoding()
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'CREATE DATABASE ... ENCODING ''UTF8'' TEMPLATE template0;';
    END IF;
END
$encoding$;

CREATE SCHEMA IF NOT EXISTS api_key;
COMMENT ON SCHEMA api_key IS 'API keys: tables, internal functions and policies of the api_key extension';

-- Roles are cluster-wide and outlive the extension: create them only when absent. An existing
-- one (the extension installed in another database of the cluster) is adopted only if it is as
-- this script makes it: it cannot log in and has no attribute, owns nothing in any database,
-- and no one but superusers may hand it out. A role someone else created beforehand (a
-- CREATEROLE role holds ADMIN OPTION on what it creates, and could have made it own a SECURITY
-- DEFINER function) would otherwise let them, or anyone, act as the service. Being a member of
-- other roles only gives the role more and is left alone.
DO $roles$
DECLARE
    name pg_catalog.text;
    role pg_catalog.oid;
    problem pg_catalog.text;
BEGIN
    FOREACH name IN ARRAY ARRAY['api_key_user', 'api_key_admin'] LOOP
        SELECT r.oid INTO role FROM pg_catalog.pg_roles AS r WHERE r.rolname OPERATOR(pg_catalog.=) name;
        IF role IS NULL THEN
            EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', name);
            CONTINUE;
        END IF;
        SELECT 'it has attributes the extension never gives it (LOGIN, SUPERUSER, CREATEROLE, CREATEDB, REPLICATION or BYPASSRLS)'
          INTO problem FROM pg_catalog.pg_roles AS r
         WHERE r.oid OPERATOR(pg_catalog.=) role
           AND (r.rolcanlogin OR r.rolsuper OR r.rolcreaterole OR r.rolcreatedb OR r.rolreplication OR r.rolbypassrls);
        IF problem IS NULL THEN
            SELECT 'it owns objects (in some database of the cluster): code could run with its rights'
              INTO problem FROM pg_catalog.pg_shdepend AS d
             WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_authid'::pg_catalog.regclass
               AND d.refobjid OPERATOR(pg_catalog.=) role AND d.deptype OPERATOR(pg_catalog.=) 'o'
             LIMIT 1;
        END IF;
        IF problem IS NULL THEN
            SELECT pg_catalog.string_agg(m.rolname::pg_catalog.text, ', ') OPERATOR(pg_catalog.||) ' may grant it (ADMIN OPTION)'
              INTO problem FROM pg_catalog.pg_auth_members AS a JOIN pg_catalog.pg_roles AS m ON m.oid OPERATOR(pg_catalog.=) a.member
             WHERE a.roleid OPERATOR(pg_catalog.=) role AND a.admin_option AND NOT m.rolsuper
            HAVING pg_catalog.count(*) OPERATOR(pg_catalog.>) 0;
        END IF;
        IF problem IS NOT NULL THEN
            RAISE EXCEPTION 'role % already exists and %', name, problem
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = 'api_key adopts an existing role only as it creates one: members of api_key_admin act as the service.',
                      HINT = 'As a superuser, fix or drop the role (see docs/security.md, "Roles"), then CREATE EXTENSION api_key again.';
        END IF;
    END LOOP;
END
$roles$;
COMMENT ON ROLE api_key_user IS 'api_key: may verify and authenticate keys, and manage keys as the actor set in api_key.actor';
COMMENT ON ROLE api_key_admin IS 'api_key: the service; may manage any key and configuration without an actor';

CREATE TABLE api_key.configs (
    id                  text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    prefix              text NOT NULL DEFAULT 'sk_' CHECK (prefix ~ '^[A-Za-z0-9_-]{0,32}$'),
    body_length         integer NOT NULL DEFAULT 32 CHECK (body_length BETWEEN 22 AND 128),
    hash_algorithm      text NOT NULL DEFAULT 'sha256' CHECK (hash_algorithm IN ('sha256', 'argon2id')),
    default_expires_in  interval CHECK (default_expires_in > '0'),
    min_expires_in      interval CHECK (min_expires_in > '0'),
    max_expires_in      interval CHECK (max_expires_in > '0'),
    name_required       boolean NOT NULL DEFAULT false,
    name_min_length     integer NOT NULL DEFAULT 1 CHECK (name_min_length >= 0),
    name_max_length     integer NOT NULL DEFAULT 128 CHECK (name_max_length BETWEEN 1 AND 1024),
    prefix_min_length   integer NOT NULL DEFAULT 0 CHECK (prefix_min_length BETWEEN 0 AND 32),
    prefix_max_length   integer NOT NULL DEFAULT 32 CHECK (prefix_max_length BETWEEN 0 AND 32),
    metadata_enabled    boolean NOT NULL DEFAULT true,
    default_permissions jsonb,
    rate_limit_enabled  boolean NOT NULL DEFAULT false,
    rate_limit_max      integer CHECK (rate_limit_max > 0),
    rate_limit_window   interval CHECK (rate_limit_window > '0'),
    default_remaining   bigint CHECK (default_remaining >= 0),
    refill_amount       bigint CHECK (refill_amount > 0),
    refill_interval     interval CHECK (refill_interval > '0'),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    -- Fields actors may raise past the configuration's (or the key's) value; see docs.
    actor_may_raise     text[] NOT NULL DEFAULT '{}',
    -- Whether actors (not only the service) may create keys of this configuration.
    actor_may_create    boolean NOT NULL DEFAULT false,
    -- 0.3.0: refills on a calendar schedule (refill_anchor + k × refill_interval).
    refill_anchor       timestamptz,
    CHECK (hash_algorithm <> 'argon2id' OR body_length >= 40),
    CHECK (min_expires_in IS NULL OR max_expires_in IS NULL OR min_expires_in <= max_expires_in),
    CHECK (name_min_length <= name_max_length),
    CHECK (prefix_min_length <= prefix_max_length),
    CHECK (NOT rate_limit_enabled OR (rate_limit_max IS NOT NULL AND rate_limit_window IS NOT NULL)),
    CHECK ((refill_amount IS NULL) = (refill_interval IS NULL)),
    CONSTRAINT configs_refill_anchor_needs_refill CHECK (refill_anchor IS NULL OR refill_interval IS NOT NULL)
);
COMMENT ON TABLE api_key.configs IS 'Named key configurations: format, hashing, expiry bounds, name rules and usage defaults. "default" is created at install.';
COMMENT ON COLUMN api_key.configs.actor_may_raise IS 'Limits actors (not only the service) may raise: any of enabled, expires_at, permissions, remaining, refill, rate_limit';
COMMENT ON COLUMN api_key.configs.refill_anchor IS 'Refills on a calendar schedule: at refill_anchor + k × refill_interval (UTC), instead of refill_interval after the last refill';
COMMENT ON COLUMN api_key.configs.actor_may_create IS 'Whether actors may create keys of this configuration (else only the service); true for "default"';
INSERT INTO api_key.configs (id, actor_may_create) VALUES ('default', true);

-- One CHECK only, the invariant verification relies on: PostgreSQL rebuilds every CHECK
-- expression of a table for each UPDATE statement it executes, and credits update this table
-- on every verification. The other rules are enforced by the functions that write it.
CREATE TABLE api_key.keys (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    config_id          text NOT NULL REFERENCES api_key.configs (id),
    reference_type     text NOT NULL,
    reference_id       text NOT NULL,
    name               text,
    prefix             text NOT NULL,
    start              text NOT NULL,
    enabled            boolean NOT NULL DEFAULT true,
    expires_at         timestamptz,
    permissions        jsonb,
    metadata           jsonb,
    remaining          bigint CHECK (remaining >= 0),
    refill_amount      bigint,
    refill_interval    interval,
    last_refill_at     timestamptz,
    rate_limit_enabled boolean NOT NULL DEFAULT false,
    rate_limit_max     integer,
    rate_limit_window  interval,
    -- clock_timestamp: keys created in one transaction still list in creation order. The
    -- functions set both from one clock reading, which the key's id carries too (UUIDv7).
    created_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    created_by         text,
    updated_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_used_at       timestamptz,
    -- 0.3.0: refills on a calendar schedule (refill_anchor + k × refill_interval).
    refill_anchor      timestamptz
) WITH (fillfactor = 80);  -- room for HOT updates of credits and last_used_at
COMMENT ON TABLE api_key.keys IS 'One row per key: owner (reference_type, reference_id), permissions, limits and usage state. Never the key or its hash (see api_key.key_secrets).';
COMMENT ON COLUMN api_key.keys.start IS 'The first characters of the key, for display; not enough to use it';
COMMENT ON COLUMN api_key.keys.remaining IS 'Credits left; NULL means unlimited';
COMMENT ON COLUMN api_key.keys.last_used_at IS 'Last admitted verification, kept coarsely: see api_key.last_used_precision';
COMMENT ON COLUMN api_key.keys.refill_anchor IS 'Refills on a calendar schedule: at refill_anchor + k × refill_interval (UTC), instead of refill_interval after the last refill; see api_key_next_refill_at(k)';
COMMENT ON COLUMN api_key.keys.created_by IS 'Audit only: the actor that created the key. Ownership is (reference_type, reference_id).';
CREATE INDEX keys_by_reference ON api_key.keys (reference_type, reference_id, created_at, id);
CREATE INDEX keys_by_expiry ON api_key.keys (expires_at) WHERE expires_at IS NOT NULL;

-- Hashes live apart from api_key.keys so that application roles can SELECT * from keys
-- under RLS while this table stays unreadable to them.
CREATE TABLE api_key.key_secrets (
    lookup      bytea NOT NULL,
    key_id      uuid NOT NULL REFERENCES api_key.keys (id) ON DELETE CASCADE,
    algorithm   text NOT NULL CHECK (algorithm IN ('sha256', 'argon2id')),
    argon2_hash text CHECK ((algorithm = 'argon2id') = (argon2_hash IS NOT NULL)),
    expires_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- The index carries what verification needs of a secret, so that it is read index-only
    -- (see src/lookup.rs): one heap page fewer on every verification.
    CONSTRAINT key_secrets_pkey PRIMARY KEY (lookup) INCLUDE (key_id, algorithm, expires_at)
);
COMMENT ON TABLE api_key.key_secrets IS 'Hashes of keys. lookup = SHA-256 of the key (sha256) or of its lookup id (argon2id). expires_at ends a rotated-away secret''s grace period. Readable by no application role.';
CREATE INDEX key_secrets_by_key ON api_key.key_secrets (key_id);

-- Rate-limit windows change on every admitted verification; UNLOGGED keeps that free of WAL.
-- A crash empties the table, which only forgets the current windows (documented).
CREATE UNLOGGED TABLE api_key.rate_limit_windows (
    key_id     uuid PRIMARY KEY,
    window_end timestamptz NOT NULL,
    admitted   integer NOT NULL
);
COMMENT ON TABLE api_key.rate_limit_windows IS 'Current fixed rate-limit window per key, with its end (unlogged: no WAL per verification; emptied by a crash)';

CREATE TYPE api_key.verification AS (
    valid                boolean,
    code                 text,
    key_id               uuid,
    reference_type       text,
    reference_id         text,
    config_id            text,
    name                 text,
    permissions          jsonb,
    metadata             jsonb,
    remaining            bigint,
    rate_limit_remaining integer,
    retry_after_ms       bigint,
    expires_at           timestamptz,
    -- 0.3.0: when the limit that refused resets (a valid call: its rate-limit window).
    reset_at             timestamptz
);
COMMENT ON TYPE api_key.verification IS 'Result of api_key_verify: one row, valid or not, with a code';

CREATE TYPE api_key.created_key AS (
    id             uuid,
    key            text,
    start          text,
    prefix         text,
    name           text,
    reference_type text,
    reference_id   text,
    config_id      text,
    expires_at     timestamptz,
    created_at     timestamptz
);
COMMENT ON TYPE api_key.created_key IS 'Result of api_key_create and api_key_rotate. key is the plaintext, shown this once.';

-- Default membership source.
CREATE TABLE api_key.organizations (
    id         text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 256),
    name       text,
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE api_key.organizations IS 'Organizations of the default membership source (optional: keys may belong to organizations that live only in the application)';

CREATE TABLE api_key.members (
    organization_id text NOT NULL REFERENCES api_key.organizations (id) ON DELETE CASCADE,
    user_id         text NOT NULL CHECK (length(user_id) BETWEEN 1 AND 256),
    role            text NOT NULL CHECK (length(role) BETWEEN 1 AND 64),
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, user_id)
);
COMMENT ON TABLE api_key.members IS 'Members of organizations and their roles (default membership source)';
CREATE INDEX members_by_user ON api_key.members (user_id);

-- Which role may do what to an organization's keys. organization_id NULL holds the defaults;
-- an organization that has any row for a role replaces the defaults for that role.
CREATE TABLE api_key.role_permissions (
    organization_id text,
    role            text NOT NULL CHECK (length(role) BETWEEN 1 AND 64),
    permission      text NOT NULL CHECK (permission IN ('create', 'read', 'update', 'delete')),
    UNIQUE NULLS NOT DISTINCT (organization_id, role, permission)
);
COMMENT ON TABLE api_key.role_permissions IS 'api_key:<permission> granted to organization roles; organization_id NULL = defaults, overridden per organization and role';
INSERT INTO api_key.role_permissions (organization_id, role, permission) VALUES
    (NULL, 'owner', 'create'), (NULL, 'owner', 'read'), (NULL, 'owner', 'update'), (NULL, 'owner', 'delete'),
    (NULL, 'admin', 'create'), (NULL, 'admin', 'read'), (NULL, 'admin', 'update'), (NULL, 'admin', 'delete'),
    (NULL, 'member', 'read');

-- Where membership is read from: absent row = api_key.members.
CREATE TABLE api_key.membership_source (
    singleton           boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    relation            regclass NOT NULL,
    organization_column name NOT NULL,
    user_column         name NOT NULL,
    role_column         name NOT NULL
);
COMMENT ON TABLE api_key.membership_source IS 'Application table that membership is read from live (set with api_key_use_membership_table); empty = api_key.members';

-- Custom owner kinds ('project', 'store', …) and the function that authorizes actors on them.
CREATE TABLE api_key.reference_types (
    reference_type text PRIMARY KEY CHECK (reference_type ~ '^[a-z][a-z0-9_]{0,62}$' AND reference_type NOT IN ('user', 'organization')),
    authorizer     regprocedure NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE api_key.reference_types IS 'Custom reference types and their authorizer(actor text, reference_id text, action text) returns boolean';

CREATE TABLE api_key.audit_log (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at             timestamptz NOT NULL DEFAULT now(),
    actor          text,
    database_role  text NOT NULL,
    action         text NOT NULL,
    key_id         uuid,
    reference_type text,
    reference_id   text,
    detail         jsonb
);
COMMENT ON TABLE api_key.audit_log IS 'Management actions (create, update, revoke, rotate, …): who (actor, or the service role), what, on which key and reference';
CREATE INDEX audit_log_by_reference ON api_key.audit_log (reference_type, reference_id, at);

-- 0.3.0: verification analytics (src/analytics). Counts are added up in memory and written
-- in batches as minute rows; completed hours are rolled up into hour rows and completed days
-- into day rows by the flush (api_key.usage_rollup says how far), and the views add up what
-- is not rolled up yet. Minute and hour rows are removed after api_key.usage_minute_retention
-- / usage_hour_retention once rolled up. Read through api_key.usage_by_minute, _hour and _day.
CREATE TABLE api_key.usage (
    resolution     text NOT NULL CHECK (resolution IN ('minute', 'hour', 'day')),
    bucket         timestamptz NOT NULL,
    key_id         uuid,
    code           text NOT NULL,
    tags           text[] NOT NULL,
    reference_type text,
    reference_id   text,
    config_id      text,
    verifications  bigint NOT NULL,
    credits_spent  bigint NOT NULL,
    CONSTRAINT usage_bucket UNIQUE NULLS NOT DISTINCT (resolution, bucket, key_id, code, tags)
);
COMMENT ON TABLE api_key.usage IS 'Verifications per key, bucket (minute, hour, day), code and tag set, with the credits they spent; written in batches (see api_key_flush_usage). Read it through api_key.usage_by_minute, _hour and _day.';
COMMENT ON COLUMN api_key.usage.key_id IS 'NULL for verifications of keys that were not found';
COMMENT ON COLUMN api_key.usage.reference_id IS 'The key''s owner when the counts were written; NULL for keys not found, or deleted before their counts were written';
CREATE INDEX usage_by_reference ON api_key.usage (reference_type, reference_id, resolution, bucket);
CREATE INDEX usage_by_key ON api_key.usage (key_id, resolution, bucket);
CREATE TABLE api_key.usage_rollup (
    resolution text PRIMARY KEY CHECK (resolution IN ('hour', 'day')),
    through    timestamptz NOT NULL
);
COMMENT ON TABLE api_key.usage_rollup IS 'How far the usage is rolled up: hour rows count the minute rows before through (resolution hour), day rows the hour rows before it (day). No row: nothing rolled up yet.';

-- pg_dump keeps the extension's data (only its definitions come from CREATE EXTENSION). The
-- rows created at install ('default' configuration, default role permissions) are left out:
-- the restore's CREATE EXTENSION makes them again. Rate-limit windows are transient.
SELECT pg_catalog.pg_extension_config_dump('api_key.configs', 'WHERE id <> ''default''');
SELECT pg_catalog.pg_extension_config_dump('api_key.keys', '');
SELECT pg_catalog.pg_extension_config_dump('api_key.key_secrets', '');
SELECT pg_catalog.pg_extension_config_dump('api_key.organizations', '');
SELECT pg_catalog.pg_extension_config_dump('api_key.members', '');
SELECT pg_catalog.pg_extension_config_dump('api_key.role_permissions', 'WHERE organization_id IS NOT NULL');
SELECT pg_catalog.pg_extension_config_dump('api_key.membership_source', '');
SELECT pg_catalog.pg_extension_config_dump('api_key.reference_types', '');
SELECT pg_catalog.pg_extension_config_dump('api_key.audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('api_key.audit_log_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('api_key.usage', '');
SELECT pg_catalog.pg_extension_config_dump('api_key.usage_rollup', '');
