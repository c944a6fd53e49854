-- A 0.2.0 database with every kind of object and state, made through 0.2.0's own functions
-- (run as a superuser, which is the service). The plaintexts go to public.upgrade_keys, the
-- test's own table, so that the same keys can be verified after the upgrade.
\set ON_ERROR_STOP 1
CREATE TABLE public.upgrade_keys (label text PRIMARY KEY, key text NOT NULL, key_id uuid);

-- Configurations: a custom one, an Argon2id one.
SELECT id FROM api_key_config_create('live', prefix => 'sk_live_', max_expires_in => '1 year',
                                     default_expires_in => '90 days', name_required => true,
                                     default_permissions => '{"files": ["read"]}');
SELECT id FROM api_key_config_create('slow', hash_algorithm => 'argon2id', body_length => 40, prefix => 'pk_');
-- 0.2.0: what actors may do, per configuration.
SELECT id FROM api_key_config_create('partner', prefix => 'pt_', actor_may_create => false);
SELECT id FROM api_key_config_create('selfserve', actor_may_create => true,
                                     actor_may_raise => '{remaining,rate_limit}');

-- Membership: organizations, members, role overrides.
INSERT INTO api_key.organizations (id, name) VALUES ('acme', 'Acme'), ('globex', 'Globex');
INSERT INTO api_key.members (organization_id, user_id, role) VALUES
    ('acme', 'alice', 'owner'), ('acme', 'bob', 'member'), ('globex', 'carol', 'admin,member');
INSERT INTO api_key.role_permissions (organization_id, role, permission) VALUES
    ('acme', 'member', 'read'), ('acme', 'member', 'create'), ('acme', 'auditor', 'read');

-- A custom reference type with an authorizer.
CREATE SCHEMA upgrade_app;
CREATE TABLE upgrade_app.project_members (project_id text, user_id text);
INSERT INTO upgrade_app.project_members VALUES ('p1', 'dana');
CREATE FUNCTION upgrade_app.authz(actor text, reference_id text, action text) RETURNS boolean
LANGUAGE sql STABLE AS $$ SELECT EXISTS (SELECT 1 FROM upgrade_app.project_members m
                                          WHERE m.project_id = reference_id AND m.user_id = actor) $$;
SELECT api_key_register_reference_type('project', 'upgrade_app.authz(text,text,text)');

-- Keys of every kind.
INSERT INTO public.upgrade_keys (label, key, key_id)
SELECT 'plain', key, id FROM api_key_create(reference_id => 'alice', name => 'plain');
INSERT INTO public.upgrade_keys (label, key, key_id)
SELECT 'permissions', key, id FROM api_key_create(reference_id => 'alice', name => 'perm',
       permissions => '{"files": ["read", "write"], "users": ["read"]}', metadata => '{"team": "core", "n": 1}');
INSERT INTO public.upgrade_keys (label, key, key_id)
SELECT 'credits', key, id FROM api_key_create(reference_id => 'alice', remaining => 100);
INSERT INTO public.upgrade_keys (label, key, key_id)
SELECT 'refill', key, id FROM api_key_create(reference_id => 'alice', remaining => 5, refill_amount => 50,
       refill_interval => '1 day');
INSERT INTO public.upgrade_keys (label, key, key_id)
SELECT 'rate_limited', key, id FROM api_key_create(reference_id => 'alice', rate_limit_max => 1000,
       rate_limit_window => '1 hour');
INSERT INTO public.upgrade_keys (label, key, key_id)
SELECT 'expiring', key, id FROM api_key_create(reference_id => 'alice', expires_in => '30 days');
INSERT INTO public.upgrade_keys (label, key, key_id)
SELECT 'organization', key, id FROM api_key_create(reference_type => 'organization', reference_id => 'acme',
       name => 'deploy');
INSERT INTO public.upgrade_keys (label, key, key_id)
SELECT 'project', key, id FROM api_key_create(reference_type => 'project', reference_id => 'p1');
INSERT INTO public.upgrade_keys (label, key, key_id)
SELECT 'live', key, id FROM api_key_create(reference_id => 'bob', config_id => 'live', name => 'prod');
INSERT INTO public.upgrade_keys (label, key, key_id)
SELECT 'argon2id', key, id FROM api_key_create(reference_id => 'bob', config_id => 'slow');
INSERT INTO public.upgrade_keys (label, key, key_id)
SELECT 'disabled', key, id FROM api_key_create(reference_id => 'bob', name => 'off');
SELECT 1 FROM api_key_update((SELECT key_id FROM public.upgrade_keys WHERE label = 'disabled'), enabled => false);
INSERT INTO public.upgrade_keys (label, key, key_id)
SELECT 'expired', key, id FROM api_key_create(reference_id => 'bob', expires_in => '1 second');
SELECT pg_sleep(1.1);  -- an expiry set by update must be in the future since 0.2.0
-- Rotated: the old secret keeps working for its grace period.
INSERT INTO public.upgrade_keys (label, key, key_id)
SELECT 'rotated_old', key, id FROM api_key_create(reference_id => 'bob', name => 'rotating', remaining => 10);
INSERT INTO public.upgrade_keys (label, key, key_id)
SELECT 'rotated_new', key, id FROM api_key_rotate((SELECT key_id FROM public.upgrade_keys WHERE label = 'rotated_old'),
                                                  grace => '7 days');
-- Revoked: gone, with its audit entry.
INSERT INTO public.upgrade_keys (label, key, key_id)
SELECT 'revoked', key, id FROM api_key_create(reference_id => 'bob');
SELECT api_key_revoke((SELECT key_id FROM public.upgrade_keys WHERE label = 'revoked'));
-- Usage state: credits spent, a rate-limit window open, last_used_at written.
SELECT code FROM api_key_verify((SELECT key FROM public.upgrade_keys WHERE label = 'credits'), cost => 7);
SELECT code FROM api_key_verify((SELECT key FROM public.upgrade_keys WHERE label = 'rate_limited'));
SELECT code FROM api_key_verify((SELECT key FROM public.upgrade_keys WHERE label = 'refill'));
UPDATE api_key.keys SET last_used_at = now() - interval '1 day'
 WHERE id = (SELECT key_id FROM public.upgrade_keys WHERE label = 'plain');
-- 0.2.0: keys of the new configurations; an actor's own key within its configuration.
INSERT INTO public.upgrade_keys (label, key, key_id)
SELECT 'partner', key, id FROM api_key_create(reference_type => 'organization', reference_id => 'globex',
       config_id => 'partner', permissions => '{"billing": ["write"]}');
BEGIN;
SET LOCAL api_key.actor = 'carol';
INSERT INTO public.upgrade_keys (label, key, key_id)
SELECT 'selfserve', key, id FROM api_key_create(reference_id => 'carol', config_id => 'selfserve',
       remaining => 20, rate_limit_max => 10, rate_limit_window => '1 minute');
COMMIT;
-- An organization key made by a member who then left (for keys_without_creator).
BEGIN;
SET LOCAL api_key.actor = 'alice';
INSERT INTO public.upgrade_keys (label, key, key_id)
SELECT 'by_alice', key, id FROM api_key_create(reference_type => 'organization', reference_id => 'acme');
COMMIT;
DELETE FROM api_key.members WHERE organization_id = 'acme' AND user_id = 'alice';
