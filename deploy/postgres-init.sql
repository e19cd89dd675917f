-- Runs once, when the postgres container initialises an empty data volume (files in
-- /docker-entrypoint-initdb.d are ignored on later starts). The image has already created the
-- `stockpred` database and role from POSTGRES_DB / POSTGRES_USER; this adds the MLflow tracking
-- server's database. It is owned by the same role (the one running this script): one server, one
-- credential for the local stack. Give MLflow its own role in a shared or production database.
CREATE DATABASE mlflow;
