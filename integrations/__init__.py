"""Clients for the outside world (Jira, calendar, cross-session), each usable alone.

Never imports ``bot`` or ``agents``.
"""
