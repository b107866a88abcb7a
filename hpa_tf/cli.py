"""What every hpa-tf command does with errors: a user's mistake (a missing file, a bad value, a full
disk) is one line naming the file or key and the fix, and exit code 2, never a traceback. The
traceback is there for the asking: ``--debug`` or ``HPA_TF_DEBUG=1``.

    def main(argv=None) -> int: ...
    if __name__ == "__main__":
        sys.exit(run(main))
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence

DEBUG_ENV = "HPA_TF_DEBUG"


def debugging(argv: Sequence[str] | None = None) -> bool:
    """Whether tracebacks were asked for (``--debug`` among the arguments, or ``HPA_TF_DEBUG=1``)."""
    args = sys.argv[1:] if argv is None else argv
    return "--debug" in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Call ``main(argv)`` (``--debug`` removed) and turn an exception into one line on stderr."""
    debug = debugging(argv)
    args = None if argv is None else [a for a in argv if a != "--debug"]
    if argv is None and "--debug" in sys.argv:
        sys.argv.remove("--debug")
    try:
        return main(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception as err:  # noqa: BLE001 - the point of this function
        if debug:
            raise
        message = str(err).strip() or type(err).__name__
        name = type(err).__name__
        print(f"error: {message}" if _is_users(err) else f"error ({name}): {message}", file=sys.stderr)
        print(f"(run with --debug or {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        return 2


def doc_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A parser whose description is the first paragraph of ``doc`` (a module docstring) and whose
    epilog, shown as written, is the rest; reStructuredText's double backticks and roles read as `code`.

    >>> doc_parser("tool", "Does a thing.\\n\\n    tool --x 1").description
    'Does a thing.'
    """
    # Plain text on a terminal: ``code`` and Sphinx roles (:mod:`x`) as `code`.
    doc = re.sub(r":(?:mod|func|class|meth|attr|data):`", "`", doc).replace("``", "`")
    head, _, rest = doc.partition("\n\n")
    parser = argparse.ArgumentParser(prog=prog_name(prog), description=head, epilog=rest,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help=f"show the traceback of an error (or {DEBUG_ENV}=1)")
    return parser


def prog_name(default: str) -> str:
    """The name the command was called by: a console script (``hpa-tf-train``) or a top-level script
    (``train_tpu.py``) by its own name, else ``default`` (``python -m hpa_tf.train``)."""
    called = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return called if called.startswith("hpa-tf-") or called in ("train_tpu.py", "predict.py") else default


def at_least(minimum: float, kind: type = int) -> Callable[[str], float]:
    """An argparse ``type`` that accepts numbers >= ``minimum``: ``add_argument("--workers", type=at_least(1))``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below the smallest allowed value, {minimum}")
        return value

    return parse


def require_writable(folder: str, what: str = "the output folder") -> None:
    """Create ``folder`` and write a probe file in it, or raise an OSError that names it (before any
    work is done). ``require_writable("runs/x", "--out")``"""
    from hpa_tf import fs

    probe = fs.join(folder, f".hpa-tf-write-test-{os.getpid()}")
    try:
        fs.makedirs(folder)
        fs.write_bytes(probe, b"")
        fs.remove(probe)
    except Exception as err:  # noqa: BLE001 - gfile raises its own error types
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OSError(f"{what} {folder}: cannot write there ({reason}); pick a folder you can write to") from err


def _is_users(err: Exception) -> bool:
    """Errors whose message is written for the user (they name the file or key and the fix)."""
    return isinstance(err, (ValueError, OSError, KeyError, RuntimeError))
