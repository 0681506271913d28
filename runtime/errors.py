"""The one exception type that reaches the user as a single line.

Anything the user can get wrong (a path, a file that is not a model, a prompt that
does not fit) raises UserError with a message that names the problem and the fix;
the command line prints it on one line and exits with status 2.
"""

import sys


class UserError(Exception):
    exit_code = 2


def exit_code_of(fn, *args):
    """Run fn(*args) for a command line: its result, or for a UserError one line on
    stderr and the error's exit code, or 130 for Ctrl-C."""
    try:
        return fn(*args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
