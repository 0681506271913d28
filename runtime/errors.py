"""The one exception type that reaches the user as a single line.

Anything the user can get wrong (a path, a file that is not a model, a prompt that
does not fit) raises UserError with a message that names the problem and the fix;
the command line prints it on one line and exits with status 2.
"""


class UserError(Exception):
    exit_code = 2
