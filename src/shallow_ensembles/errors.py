"""The exception hierarchy. Each class also subclasses the built-in callers would catch."""

from __future__ import annotations


class ShallowEnsembleError(Exception):
    """Base class of every error raised on purpose by this package."""


class DataError(ShallowEnsembleError, ValueError):
    """Bad input data: names the file, frame and key where known."""

    def __init__(self, message: str, *, file=None, frame=None, key=None):
        where = ", ".join(
            part
            for part in (
                str(file) if file is not None else None,
                f"frame {frame}" if frame is not None else None,
                f"key '{key}'" if key is not None else None,
            )
            if part
        )
        super().__init__(f"{where}: {message}" if where else message)
        self.file, self.frame, self.key = file, frame, key
        self.detail = message
        """The message without the location prefix."""

    def located(self, *, file=None, frame=None) -> DataError:
        """A copy of this error (same class) with ``file``/``frame`` filled in where unknown."""
        return type(self)(self.detail, file=self.file if self.file is not None else file,
                          frame=self.frame if self.frame is not None else frame, key=self.key)


class ElementError(DataError):
    """A structure holds an element the model does not know."""


class ConfigError(ShallowEnsembleError, ValueError):
    """Bad configuration: names the dotted config path."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.detail = message
        """The message without the path."""

    def under(self, prefix: str) -> ConfigError:
        """This error with its path inside the section ``prefix`` (``prefix.path``)."""
        return ConfigError(f"{prefix}.{self.path}" if self.path else prefix, self.detail)


class ModelFileError(ShallowEnsembleError, ValueError):
    """A model file that is missing, corrupt, truncated or not ours."""

    def __init__(self, file, message: str):
        super().__init__(f"{file}: {message}")
        self.file = file


class ThresholdExceeded(ShallowEnsembleError):  # noqa: N818 - a signal, not a failure
    """Raised by an uncertainty monitor to stop a run; carries where and why."""

    def __init__(self, step: int, quantity: str, value: float, threshold: float, level: str):
        super().__init__(
            f"step {step}: {quantity} = {value:.6g} reached the '{level}' level ({threshold:.6g})"
        )
        self.step, self.quantity, self.value = step, quantity, value
        self.threshold, self.level = threshold, level
