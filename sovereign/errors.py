"""One root for every error the system raises on purpose: the message names the thing that
is wrong and what would be right, and the error knows the CLI's exit code for it.

- UsageError (exit 2): what the operator gave is wrong: a config, a data file, a
  credential, an argument. Nothing was changed.
- OperationalError (exit 1): the system could not do it as things stand: state on disk,
  the control socket, a backup. Nothing was changed unless the message says so.
RingError (from the C++ core, an OSError) sits beside this root: the CLI catches both.
"""

from __future__ import annotations


class SovereignError(Exception):
    """The root: `sovereign: <message>` and exit `exit_code`."""

    exit_code = 1


class UsageError(SovereignError, ValueError):
    exit_code = 2


class OperationalError(SovereignError, RuntimeError):
    exit_code = 1
