"""User-facing errors.

Anything a user can fix (a bad parameter, a missing file, a NaN loss) is raised as
`MedvlmError`; the CLI prints it as one line, marks the MLflow run FAILED and exits 2.
Every other exception is a bug in medvlm and keeps its traceback.
"""


class MedvlmError(Exception):
    """A problem the user can fix. The message names the problem and the fix."""


class ConfigError(MedvlmError):
    """An invalid parameter, YAML key or spec."""


class DataError(MedvlmError):
    """A missing, corrupt or inconsistent dataset."""


class ModelError(MedvlmError):
    """An unknown model or missing weights."""


class TrackingError(MedvlmError):
    """The tracking server cannot be reached, or stopped answering during a run."""


class Superseded(MedvlmError):
    """A study trial was declared lost and retried elsewhere while this worker still ran it."""


class TrainingError(MedvlmError):
    """Training diverged (NaN/inf loss) or cannot proceed."""


def one_line(exc: BaseException) -> str:
    """The first line of an error, for the CLI and the `medvlm.error` tag.

    A DataLoader worker re-raises a worker's error as "Caught X in DataLoader worker ..." plus the
    worker's traceback; the useful line (naming the file) is the traceback's last one.
    """
    text = str(exc).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text.splitlines()[0] if text else type(exc).__name__
