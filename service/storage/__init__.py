"""SQL storage: tables, engine and sessions, queries, migrations.

Everything here runs on SQLite (the embedded default) and PostgreSQL (production).
"""
