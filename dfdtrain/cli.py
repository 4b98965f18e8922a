"""The ``dfdtrain`` command line: one module per subcommand under dfdtrain/commands.

Every subcommand has --help; a bad argument, path or input exits with status 2 and one line naming the
problem (no traceback), so scripts and people both see what went wrong.
"""

import importlib
import os
import sys

from dfdtrain import __version__
from dfdtrain.commands._common import OneLineArgumentParser
from dfdtrain.core.errors import DfdError, printable

# name -> module under dfdtrain.commands; each module has HELP, add_arguments(parser) and run(args) -> int.
COMMANDS = ("synth", "index", "shard", "preview", "embed", "train", "evaluate", "calibrate", "protocol",
            "predict", "serve", "export", "bench", "model", "demo")


def build_parser():
    parser = OneLineArgumentParser(
        prog="dfdtrain",
        description="Distributed training toolkit for deepfake video detection.",
    )
    parser.add_argument("--version", action="version", version=f"dfdtrain {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineArgumentParser)
    subparsers.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"dfdtrain.commands.{name}")
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def _say(line):
    """One line to stderr in one write: the ranks of a job share the stream, and print's separate write of the
    newline let two ranks' lines run together."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _fail(command, problem):
    """The error line of a command that failed (printable: a file name may hold a newline); exit status 2."""
    _say(f"dfdtrain {command}: error: {printable(problem)}")
    return 2


def main(argv=None):
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse cannot take positionals after a flag that follows positionals (`a=1 --quiet b=2`):
    # config overrides that land there still belong to the command's overrides
    if extra and hasattr(args, "overrides") and all("=" in item and not item.startswith("-") for item in extra):
        args.overrides = list(args.overrides or []) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.run(args) or 0)
    except (DfdError, FileNotFoundError, NotADirectoryError, PermissionError) as error:
        return _fail(args.command, error)
    except OSError as error:
        from dfdtrain.data.storage import is_no_space, no_space_line

        if not is_no_space(error):
            raise
        # a full file system (or quota) wherever the command wrote: one line naming the file and the free space
        if error.filename:  # atomic_open and the other writers name their file on the error
            line = no_space_line(os.fspath(error.filename), error)
        else:
            line = f"{error.strerror or 'no space left on device'} while writing (the system named no file)"
        return _fail(args.command, line)
    except KeyboardInterrupt:
        _say(f"dfdtrain {args.command}: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
