-- A least-privilege PostgreSQL role for wapool: owns its own database, nothing else.
-- Run as a superuser (psql -v password="'...'" -f deploy/postgres-role.sql), once per server.
-- wapool needs no superuser: `wapool migrate` creates its tables as this role.
CREATE ROLE wapool LOGIN PASSWORD :password NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
CREATE DATABASE wapool OWNER wapool;
REVOKE ALL ON DATABASE wapool FROM PUBLIC;
\connect wapool
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO wapool;
