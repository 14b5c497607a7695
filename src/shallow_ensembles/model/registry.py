"""The backbone registry: ``model.backbone: {kind: ..., options}`` → a backbone module.

A backbone kind is one :class:`BackboneKind` entry: a frozen options dataclass (its fields are
the YAML options under ``model.backbone``, each with a unit in its name where it has one and
``cutoff_A`` always) and a ``build(options, species, batch)`` function. Adding a backbone is one
module that calls :func:`register_backbone`; the ensemble, training, calibration, calculator, MD,
i-PI and active learning need no edit. ``tests/test_backbones.py`` runs every registered kind
through the same conformance checks.

What a built backbone must provide (the :class:`~shallow_ensembles.model.backbone.Backbone`
protocol): ``cutoff`` (Å), ``species``, ``n_features`` F, ``options`` (the resolved options,
everything needed to rebuild it without data) and ``forward(batch, edge_vectors)`` returning
per-atom features (N, F) and a per-atom energy shared by every member (N,) eV or ``None``.
Optionally ``explicit_vjp(batch, cotangents_of, stress)``: a cheaper route to the position
gradients of many per-atom feature contractions at once (member forces); without it the ensemble
takes min(M, d) backward passes through the retained graph.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ..config import from_dict, template, to_dict
from ..errors import ConfigError


@dataclasses.dataclass(frozen=True)
class BackboneKind:
    """One registered backbone kind."""

    options: type
    """Frozen dataclass of its options (with a ``cutoff_A`` field)."""
    build: Callable[..., Any]
    """``build(options, species, batch=None) -> nn.Module``; with a batch of training
    structures it may set data-dependent parts (normalisations, average neighbour counts)."""
    extra: str | None = None
    """The optional dependency it needs (named in the error when it is missing)."""


BACKBONES: dict[str, BackboneKind] = {}
"""Registered kinds by name (``power-spectrum``, ``mace``, ...)."""

DEFAULT_KIND = "power-spectrum"


def register_backbone(kind: str, options: type, build: Callable[..., Any],
                      extra: str | None = None) -> None:
    """Register ``kind`` (replacing an earlier entry of the same name)."""
    BACKBONES[kind] = BackboneKind(options, build, extra)


def resolve_options(spec: dict | None, path: str = "model.backbone"):
    """The options dataclass of a ``{kind: ..., options}`` mapping; ConfigError naming ``path``."""
    spec = dict(spec or {})
    kind = spec.pop("kind", DEFAULT_KIND)
    if kind not in BACKBONES:
        raise ConfigError(f"{path}.kind", f"unknown backbone {kind!r} (known: "
                          f"{', '.join(sorted(BACKBONES))})")
    return from_dict(BACKBONES[kind].options, spec, path)


def backbone_spec(options) -> dict:
    """``{kind: ..., options}`` (plain YAML data) of a resolved options dataclass."""
    for kind, entry in BACKBONES.items():
        if type(options) is entry.options:
            return {"kind": kind, **to_dict(options)}
    raise ValueError(f"{type(options).__name__} is not the options class of a registered backbone")


def resolved_spec(spec: dict | None, path: str = "model.backbone") -> dict:
    """``spec`` checked against its kind's options and completed with their defaults."""
    return backbone_spec(resolve_options(spec, path))


def build_backbone(spec: dict | None, species, batch=None, path: str = "model.backbone"):
    """Build the backbone of ``spec`` for ``species`` (optionally fitted to ``batch``)."""
    options = resolve_options(spec, path)
    kind = (spec or {}).get("kind", DEFAULT_KIND)
    try:
        return BACKBONES[kind].build(options, sorted(int(z) for z in species), batch)
    except ImportError as err:
        extra = BACKBONES[kind].extra
        raise ConfigError(f"{path}.kind", f"the {kind} backbone needs the optional dependency "
                          f"{extra or err.name} ({err}); install it with "
                          f"pip install 'shallow-ensembles[{kind}]'") from None


def cutoff_of(spec: dict | None, path: str = "model.backbone") -> float:
    """The cutoff (Å) a ``model.backbone`` mapping asks for (to build neighbour lists)."""
    return float(resolve_options(spec, path).cutoff_A)


def options_template() -> str:
    """Commented YAML of every registered kind's options (for ``train --print-defaults``)."""
    lines = ["# model.backbone: one of these kinds with its options (defaults shown):"]
    for kind in sorted(BACKBONES):
        lines.append(f"#   backbone:\n#     kind: {kind}")
        lines += [f"#   {line}" for line in template(BACKBONES[kind].options, 2).splitlines()]
    return "\n".join(lines)
