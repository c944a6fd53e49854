-- An application table protected by API keys, through row-level security.
--
-- Documents belong to organizations. A request authenticates with an organization's API key;
-- the policies then show and accept only that organization's documents, and only for the
-- actions the key's permissions grant ({"documents": ["read", "write"]}).
--
--   psql -f examples/documents.sql        (as a superuser, in a database with api_key)
--
-- then, as the application role:
--
--   BEGIN;
--   SELECT api_key_authenticate('sk_…', permissions => '{"documents": ["read"]}');
--   SELECT * FROM documents;                     -- only this organization's documents
--   COMMIT;

CREATE TABLE IF NOT EXISTS documents (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id text NOT NULL,
    title           text NOT NULL,
    body            text
);
CREATE INDEX IF NOT EXISTS documents_by_organization ON documents (organization_id);

ALTER TABLE documents ENABLE ROW LEVEL SECURITY;
ALTER TABLE documents FORCE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS documents_read ON documents;
CREATE POLICY documents_read ON documents FOR SELECT
    USING (api_key_current_reference_type() = 'organization'
           AND organization_id = api_key_current_reference_id()
           AND api_key_has_permission('documents', 'read'));

DROP POLICY IF EXISTS documents_write ON documents;
CREATE POLICY documents_write ON documents FOR INSERT
    WITH CHECK (api_key_current_reference_type() = 'organization'
                AND organization_id = api_key_current_reference_id()
                AND api_key_has_permission('documents', 'write'));

-- The application role (granted api_key_user, so it can authenticate keys).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'documents_app') THEN
        CREATE ROLE documents_app LOGIN IN ROLE api_key_user;
    END IF;
END
$$;
GRANT SELECT, INSERT ON documents TO documents_app;
