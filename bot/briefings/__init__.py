"""Scheduled channel briefings: schedules, sections and their sources, Block Kit rendering,
delivery (exactly once per subscription and fire time) and their management.

The scheduler that fires them is bot/scheduler.py.
"""
