-- api_key_list_for_reference: first page (page_size 100, newest first) of organization
-- "org_big", which owns 100,000 keys, called by the service (superuser, no api_key.actor).
SELECT count(*) AS ok FROM api_key_list_for_reference(reference_id => 'org_big', reference_type => 'organization') \gset
\set chk 1 / (:ok / 100)
