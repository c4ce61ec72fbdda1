"""Alembic environment and versions for Jamono's schema (SQLite and PostgreSQL)."""
