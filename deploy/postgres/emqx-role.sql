-- The read-only role EMQX's PostgreSQL authenticator logs in as (cluster profile). It may read only the
-- three columns its query needs: never telemetry, residents or users. Run after `carewatch migrate`:
--   psql -v emqx_role=carewatch_emqx -v emqx_password="$EMQX_DB_PASSWORD" -f emqx-role.sql
-- Idempotent: re-running updates the password (rotation) and the grants.
\set ON_ERROR_STOP on
SELECT format('CREATE ROLE %I LOGIN', :'emqx_role')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'emqx_role') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'emqx_role', :'emqx_password') \gexec
SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), :'emqx_role') \gexec
SELECT format('GRANT USAGE ON SCHEMA public TO %I', :'emqx_role') \gexec
SELECT format('REVOKE ALL ON devices FROM %I', :'emqx_role') \gexec
SELECT format('GRANT SELECT (id, secret_hash, enabled) ON devices TO %I', :'emqx_role') \gexec
