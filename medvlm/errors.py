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


class TrainingError(MedvlmError):
    """Training diverged (NaN/inf loss) or cannot proceed."""
