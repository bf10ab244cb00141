"""The exception types the command line turns into a one-line message and an exit code."""


class RadfieldError(Exception):
    """Bad user input: a missing file, a malformed dataset, an unknown option value.

    The message is one line and names the file (or option) and the problem, e.g.
    ``data/lego/transforms_train.json: no frames``.
    """


def check_choice(option: str, value, choices, what: str = "choice") -> None:
    """RadfieldError unless ``value`` is one of ``choices``, e.g. ``train.depth.l2_form: unknown
    form 'median' (choose from: expected, termination, log)`` for ``what = "form"``."""
    if value not in choices:
        raise RadfieldError(f"{option}: unknown {what} {value!r} (choose from: {', '.join(choices)})")


class MissingSplitError(RadfieldError):
    """A dataset has no file for the requested split (as opposed to a malformed one)."""


class PeerLost(RadfieldError):
    """Another process of a distributed run died or stopped answering (not bad input: the
    command line prints the one-line message and exits 1)."""


class RankZeroError(RadfieldError):
    """Rank 0's error, received by the other processes of a distributed run: rank 0 prints it,
    they exit with the same code without printing it again."""
