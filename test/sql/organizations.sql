-- Organizations, actors and row-level security at psql. The application connects as an
-- ordinary role (here reached with SET ROLE: superusers bypass RLS, ordinary roles do not).
CREATE EXTENSION api_key;
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'regress_app') THEN CREATE ROLE regress_app; END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'regress_service') THEN CREATE ROLE regress_service; END IF;
END $$;
GRANT api_key_user TO regress_app;
GRANT api_key_admin TO regress_service;

-- The service writes membership with plain SQL.
INSERT INTO api_key.organizations (id, name) VALUES ('acme', 'Acme');
INSERT INTO api_key.members (organization_id, user_id, role) VALUES
    ('acme', 'olivia', 'owner'), ('acme', 'adam', 'admin'), ('acme', 'mia', 'member'), ('acme', 'ray', 'reader');
-- In acme, 'reader' is a custom role that may read and create.
INSERT INTO api_key.role_permissions (organization_id, role, permission) VALUES ('acme', 'reader', 'read'), ('acme', 'reader', 'create');

SET ROLE regress_service;
-- The service needs no user to create an organization key.
SELECT reference_type, reference_id, name FROM api_key_create(reference_type => 'organization', reference_id => 'acme', name => 'deploy');
RESET ROLE;

SET ROLE regress_app;
-- No actor: an application role may not manage keys.
SELECT api_key_create(reference_id => 'mia');
SELECT count(*) AS visible_without_actor FROM api_key.keys;

BEGIN;
SET LOCAL api_key.actor = 'adam';
SELECT id AS adam_key_id, key AS adam_key FROM api_key_create(reference_type => 'organization', reference_id => 'acme', name => 'by adam') \gset
SELECT name, created_by FROM api_key.keys ORDER BY name;
COMMIT;

-- Permissions and usage limits are the service's to grant: an admin creates keys within the
-- configuration (the default one grants no permissions).
BEGIN;
SET LOCAL api_key.actor = 'adam';
SELECT api_key_create(reference_type => 'organization', reference_id => 'acme', permissions => '{"files": ["read"]}');
ROLLBACK;

BEGIN;
SET LOCAL api_key.actor = 'mia';
SELECT name FROM api_key.keys ORDER BY name;                     -- member: read
SELECT api_key_create(reference_type => 'organization', reference_id => 'acme');
ROLLBACK;
BEGIN;
SET LOCAL api_key.actor = 'mia';
SELECT api_key_revoke(:'adam_key_id');
ROLLBACK;

BEGIN;
SET LOCAL api_key.actor = 'ray';
SELECT name FROM api_key_create(reference_type => 'organization', reference_id => 'acme', name => 'by ray');
SELECT api_key_update(:'adam_key_id', name => 'renamed');
ROLLBACK;

-- For a stranger, acme's keys do not exist: an id answers exactly as an unknown one does
-- (P0002, "API key <id> does not exist"), and there is nothing to revoke.
BEGIN;
SET LOCAL api_key.actor = 'stranger';
SELECT count(*) AS stranger_sees FROM api_key.keys;
SELECT api_key_revoke(:'adam_key_id') AS stranger_revoked;
\set VERBOSITY sqlstate
SELECT api_key_get(:'adam_key_id');
\set VERBOSITY default
ROLLBACK;

BEGIN;
SET LOCAL api_key.actor = 'mia';
SELECT name FROM api_key_create(reference_id => 'mia', name => 'mine');   -- her own user key
SELECT reference_type, name FROM api_key.keys ORDER BY name;
SELECT api_key_create(reference_id => 'olivia');                        -- someone else's
ROLLBACK;

-- Hashes are out of reach, and nothing is changed behind the functions' back.
SELECT * FROM api_key.key_secrets;
UPDATE api_key.keys SET enabled = false;
DELETE FROM api_key.keys;
RESET ROLE;

-- Keys outlive members: adam leaves, his key works, and the audit view shows it.
DELETE FROM api_key.members WHERE user_id = 'adam';
SELECT code FROM api_key_verify(:'adam_key');
SELECT name, created_by FROM api_key.keys_without_creator;

-- Authenticated transactions: bound until COMMIT, unforgeable.
SET ROLE regress_app;
BEGIN;
SELECT code FROM api_key_authenticate(:'adam_key');
SELECT api_key_current_reference_type(), api_key_current_reference_id(), api_key_current_key_id() = :'adam_key_id' AS same_key;
SELECT set_config('api_key.current_reference_id', 'evil', true);
SELECT api_key_current_reference_id();
COMMIT;
SELECT api_key_current_reference_id() IS NULL AS unbound_after_commit;
SELECT api_key_authenticate('sk_nope');
RESET ROLE;

REVOKE api_key_user FROM regress_app;
REVOKE api_key_admin FROM regress_service;
DROP EXTENSION api_key;
