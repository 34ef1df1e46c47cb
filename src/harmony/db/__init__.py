"""Persistence: tables, the SQL unit of work, the engine and migrations."""
