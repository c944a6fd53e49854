-- After loading: fresh statistics and visibility map, everything in shared_buffers, a
-- checkpoint, so that no scenario pays for the load (hint bits, cold cache, WAL backlog).
VACUUM (ANALYZE);
SELECT count(*) AS relations_prewarmed, sum(pg_prewarm(c.oid)) AS blocks
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname IN ('public', 'api_key') AND c.relkind IN ('r', 'i')
   AND c.relpersistence <> 't';
CHECKPOINT;
