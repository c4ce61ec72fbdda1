"""The Slack surface and the process: CLI, settings, Bolt app, HTTP server, listeners, console."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("jamono")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
