"""Persistence: SQLAlchemy models, engine setup, tenant-scoped repositories.

Imports nothing from ``bot``, ``agents`` or ``integrations``.
"""
