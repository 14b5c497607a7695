"""Actions on trust levels: one class per ``actions[k].kind``, each owning its ``fire``.

An action sees frames at its ``level`` or worse (only ``level`` itself with
``include_worse: false``). :meth:`Action.due` decides, step by step, whether it fires: it counts
consecutive steps at the level and fires once the count reaches ``patience_steps``, then at
most once every ``min_spacing_steps``. :meth:`Action.fire` then acts through the monitor
(writing frames, logging, raising :class:`~shallow_ensembles.errors.ThresholdExceeded` to stop).

Adding an action is one subclass with a ``kind`` and a ``fire`` plus :func:`register_action`;
``ActionConfig`` checks its ``kind`` and options against :data:`ACTIONS`
(``tests/test_md_registries.py`` registers a toy one). Actions fire in ``order`` within a step
(log, save, callback, then stop and rollback, which end the run).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, ClassVar

from ..errors import ConfigError, ThresholdExceeded
from ..thresholds import FAILED, LEVEL_ORDER

if TYPE_CHECKING:
    from .config import ActionConfig
    from .measure import StepRecord
    from .monitor import MonitorEvent


class Action:
    """An action of the monitor: its config, its firing state and what it does."""

    kind: ClassVar[str]
    """The YAML name (``actions[k].kind``)."""
    order: ClassVar[int] = 0
    """Position among the actions that fire at the same step (stopping ones last)."""
    options: ClassVar[frozenset[str]] = frozenset()
    """Kind-specific ``ActionConfig`` fields it uses (``filename``, ``callback``); the others
    must stay null."""
    required: ClassVar[frozenset[str]] = frozenset()
    """Kind-specific fields it cannot do without."""
    keeps_trusted_frames: ClassVar[bool] = False
    """Whether the monitor must keep a copy of the last trusted frame for it (rollback)."""

    def __init__(self, config: ActionConfig, index: int,
                 callbacks: Mapping[str, Callable] | None = None):
        self.config, self.index = config, index
        self.count = 0
        """Consecutive monitored steps at the level."""
        self.last_fired: int | None = None

    def due(self, record: StepRecord) -> bool:
        """Update the counters with ``record``; whether the action fires at this step.

        A partial step (no force σ) only proves exceedances; an exact-level action also
        needs to know that the frame is not worse, which only the failed level tells.
        """
        config = self.config
        rank, target = LEVEL_ORDER[record.level], LEVEL_ORDER[config.level]
        hit = rank == target or (config.include_worse and rank > target)
        known = record.complete or (hit and (config.include_worse or record.level == FAILED))
        if not known:
            return False
        if not hit:
            self.count = 0
            return False
        self.count += 1
        if self.count < config.patience_steps:
            return False
        if self.last_fired is not None \
                and record.step - self.last_fired < config.min_spacing_steps:
            return False
        self.last_fired = record.step
        return True

    def fire(self, event: MonitorEvent) -> None:
        """Act on ``event`` (``event.monitor`` gives the run's files and state)."""
        raise NotImplementedError


ACTIONS: dict[str, type[Action]] = {}
"""Registered action kinds by name."""


def register_action(cls: type[Action]) -> type[Action]:
    """Add the action class ``cls`` to :data:`ACTIONS` under ``cls.kind`` (a decorator)."""
    ACTIONS[cls.kind] = cls
    return cls


def action_class(kind: str, path: str = "actions[].kind") -> type[Action]:
    """The registered class of ``kind``; a ConfigError listing the kinds otherwise."""
    if kind not in ACTIONS:
        raise ConfigError(path, f"expected one of {sorted(ACTIONS)}, got {kind!r}")
    return ACTIONS[kind]


def build_actions(configs, callbacks: Mapping[str, Callable] | None = None) -> list[Action]:
    """The actions of ``configs`` (``ActionConfig`` each), in firing order."""
    from .config import ActionConfig

    actions = []
    for index, config in enumerate(configs):
        if not isinstance(config, ActionConfig):
            raise ConfigError(f"actions[{index}]", f"expected an ActionConfig, got {config!r}")
        actions.append(action_class(config.kind, f"actions[{index}].kind")(
            config, index, callbacks))
    return sorted(actions, key=lambda action: action.order)


@register_action
class LogAction(Action):
    """A line in ``events.log`` (and the log) naming the frame's level and σ."""

    kind = "log"

    def fire(self, event: MonitorEvent) -> None:
        record = event.record
        event.monitor.log(f"step {record.step} ({record.time_fs:.2f} fs): {record.level} frame "
                          f"({record.describe()})")


@register_action
class SaveAction(Action):
    """Append the frame with every σ (member forces computed if the step had none) to
    ``filename`` (default ``candidates.extxyz`` or ``failed.extxyz``)."""

    kind, order, options = "save", 1, frozenset({"filename"})

    def fire(self, event: MonitorEvent) -> None:
        event.monitor.save_frame(self.config.save_filename)


@register_action
class CallbackAction(Action):
    """Call a Python function with the event; it may raise ThresholdExceeded to stop."""

    kind, order = "callback", 2
    options = required = frozenset({"callback"})

    def __init__(self, config, index, callbacks=None):
        super().__init__(config, index, callbacks)
        function = config.callback
        if isinstance(function, str):
            callbacks = callbacks or {}
            if function not in callbacks:
                known = ", ".join(sorted(callbacks)) or "none were given"
                raise ConfigError(f"actions[{index}].callback",
                                  f"no callback named '{function}' (known: {known})")
            function = callbacks[function]
        if not callable(function):
            raise ConfigError(f"actions[{index}].callback", f"not callable: {function!r}")
        self.function = function

    def fire(self, event: MonitorEvent) -> None:
        try:
            self.function(event)
        except ThresholdExceeded as exc:
            event.monitor.stopped("callback", event.step, exc)
            raise


@register_action
class StopAction(Action):
    """End the run (exit status 3 from the command line)."""

    kind, order = "stop", 3

    def fire(self, event: MonitorEvent) -> None:
        exc = event.monitor.exceeded(event.record)
        event.monitor.stopped("stop", event.step, exc)
        raise exc


@register_action
class RollbackAction(Action):
    """Restore the last trusted frame (written to ``rollback.extxyz``), then end the run."""

    kind, order, keeps_trusted_frames = "rollback", 3, True

    def fire(self, event: MonitorEvent) -> None:
        exc = event.monitor.exceeded(event.record)
        frame_step = event.monitor.rollback()
        event.monitor.stopped("rollback", event.step, exc, frame_step)
        raise exc
