"""User-facing errors. Each one names the file, node or rule at fault.

The CLI turns any `VerifierError` into a one-line message, an `error` verdict and a
non-zero exit; anything else is a bug and keeps its traceback.
"""
import re


class VerifierError(Exception):
    """Base class for errors caused by the user's input, not by a bug."""


class ModelLoadError(VerifierError):
    """The model file cannot be read or converted."""


class UnsupportedOpError(VerifierError):
    """The network holds an operation that has no bound rule."""


class InputSpecError(VerifierError):
    """The input box or specification is malformed (shape, NaN, lower > upper, ...)."""


class PlanError(VerifierError):
    """A placement plan does not match the graph or asks for an impossible combination."""


class OutputFileError(VerifierError):
    """An output path (the results file) must not be written: a link, a device, a directory, ..."""


class TimeLimitReached(Exception):
    """The run's time limit passed (raised by the verifier's clock; never a user error, never a
    verdict of its own: the pipeline turns it into `timeout`)."""


class DeviceError(VerifierError):
    """The requested device does not exist here (e.g. `--device cuda` on a machine without a GPU)."""


# -- bounded messages: a 1 GiB token must not become a 1 GiB error line (issue 18) --------------
EXCERPT_CHARS = 200      # an error message quotes at most this much of the offending text


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """At most `limit` characters of `text` (printable; the length said when cut): a 1 GiB token
    must not become a 1 GiB error line."""
    cut = text[:limit]
    if not cut.isprintable():
        cut = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in cut)
    return cut if len(text) <= limit else f"{cut}...[{len(text)} characters]"


_LONG_RUN = re.compile(r"\S{%d,}" % (EXCERPT_CHARS + 1))


def bounded_message(msg: str) -> str:
    """Every long run of non-blank characters (a quoted token, a number) cut to an excerpt."""
    if len(msg) <= EXCERPT_CHARS and msg.isprintable():
        return msg
    return excerpt(_LONG_RUN.sub(lambda m: excerpt(m.group()), msg), 4 * EXCERPT_CHARS)
