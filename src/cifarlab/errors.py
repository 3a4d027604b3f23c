"""The one exception type for a user's mistake.

Anything raised as :class:`CifarlabError` is shown by the CLI as a single line
(``cifarlab: error: ...``) with exit status 2; anything else is a bug and keeps
its traceback.
"""


class CifarlabError(Exception):
    """A problem with the user's input: files, flags, data or environment."""
