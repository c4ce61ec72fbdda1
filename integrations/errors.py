"""Errors every integration client raises, so callers can tell users what failed."""

from __future__ import annotations


class IntegrationError(Exception):
    """A failed call to an outside service, with a message fit to show a Slack user.

    ``integration`` names the service (``jira``, ``calendar`` …). The message never holds a
    credential or a traceback; say what failed and, where known, what to do next.
    """

    def __init__(self, integration: str, message: str) -> None:
        super().__init__(message)
        self.integration = integration
