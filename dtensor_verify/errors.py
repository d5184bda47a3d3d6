"""User-facing errors. Each one names the file, node or rule at fault.

The CLI turns any `VerifierError` into a one-line message, an `error` verdict and a
non-zero exit; anything else is a bug and keeps its traceback.
"""


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
