"""The one exception type the command line turns into a one-line message and exit code 2."""


class RadfieldError(Exception):
    """Bad user input: a missing file, a malformed dataset, an unknown option value.

    The message is one line and names the file (or option) and the problem, e.g.
    ``data/lego/transforms_train.json: no frames``.
    """


class MissingSplitError(RadfieldError):
    """A dataset has no file for the requested split (as opposed to a malformed one)."""
