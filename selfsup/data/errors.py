"""The one exception type of the data package."""

from __future__ import annotations


class DataError(Exception):
    """A problem with the user's data: a missing path, an empty folder, a bad download.

    The message is a single line that names the offending path or value; the command line
    prints it as ``error: <message>`` without a traceback.
    """
