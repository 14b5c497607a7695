"""The ``mace`` backbone kind: shallow-ensemble heads on a mace-torch ``ScaleShiftMACE``.

MACE's last readout is ``linear_2(φ(linear_1(h)))`` on the scalar channels h (N, C) of the last
interaction, φ SiLU normalised to unit second moment (e3nn: φ = c·SiLU). Here the backbone
returns h, the ensemble's bottleneck ``Linear(C, d) + SiLU`` plays ``linear_1`` + SiLU and the M
heads play ``linear_2`` (with c folded into their weights), so a member is a MACE model whose last
layer differs. Everything else MACE computes — E0s, the readouts of earlier interactions, the
ZBL pair term, the scale and shift — is the backbone's *shared* per-atom energy (the same in
every member): scale·(pair + Σ earlier readouts) + shift + E0.

MACE receives this package's pair vectors r_j − r_i + S (centre i, neighbour j) as its own edge
vectors (sender i, receiver j: the convention of ``mace.data``), so forces and stress come from
the ensemble's differentiable pair vectors like for any backbone; MACE's own ``forward`` (which
differentiates positions itself) is never called.

Model files stay ``weights_only``-loadable: the options hold MACE's constructor configuration as
plain data (``mace_config``: class and function names, irreps as strings, numbers as lists) and
the module is rebuilt from it on load. Unpickling a foreign MACE file (``mace_run_train``'s
``*.model``) happens only in :func:`import_mace_model`, on the explicit ``init_model`` path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..data.batch import Batch
from ..errors import ConfigError, ModelFileError
from .registry import register_backbone

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MaceOptions:
    """Options of ``model.backbone: {kind: mace}`` (needs ``pip install
    'shallow-ensembles[mace]'``). With ``mace_config`` (written when a MACE model file is
    imported) the architecture is that configuration and the other options are ignored."""

    cutoff_A: float = 5.0
    """Radial cutoff r_max, Å."""
    channels: int = 32
    """Channels per irrep of the hidden features (MACE's ``num_channels``)."""
    max_L: int = 1
    """Highest angular momentum of the hidden features (0: invariant MACE, 1, 2)."""
    correlation: int = 3
    """Body order − 1 of the symmetric contraction."""
    num_interactions: int = 2
    """Message-passing layers."""
    max_ell: int = 3
    """Highest spherical-harmonic degree of the edge attributes."""
    num_radial: int = 8
    """Bessel radial basis functions."""
    num_cutoff_basis: int = 5
    """Order p of the polynomial cutoff envelope."""
    radial_mlp: tuple[int, ...] = (64, 64, 64)
    """Hidden widths of the radial MLP."""
    avg_num_neighbors: float | None = None
    """Neighbour-sum normalisation; null: the mean neighbour count of the training data."""
    interaction: str = "RealAgnosticResidualInteractionBlock"
    """Interaction block class of ``mace.modules`` (the first layer uses the non-residual one)."""
    mace_config: dict | None = None
    """MACE's constructor configuration as plain data (set when a MACE file is imported)."""

    def __post_init__(self):
        if self.cutoff_A <= 0:
            raise ConfigError("model.backbone.cutoff_A", f"expected > 0, got {self.cutoff_A}")
        if self.max_L not in (0, 1, 2, 3):
            raise ConfigError("model.backbone.max_L", f"expected 0 to 3, got {self.max_L}")
        for name in ("channels", "correlation", "num_interactions", "num_radial"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.backbone.{name}",
                                  f"expected >= 1, got {getattr(self, name)}")


class MaceBackbone(nn.Module):
    """A ``ScaleShiftMACE`` whose last readout is replaced by the ensemble's layers.

    ``forward(batch, edge_vectors)`` → scalar channels of the last interaction (N, C) and the
    shared per-atom energy (N,) eV.
    """

    shares_energy = True

    def __init__(self, mace_module: nn.Module, options: MaceOptions):
        super().__init__()
        self.options = options
        self.mace = mace_module
        self.cutoff = float(mace_module.r_max)
        self.species = [int(z) for z in mace_module.atomic_numbers.tolist()]
        last = mace_module.readouts[-1]
        if not hasattr(last, "linear_1"):
            raise ConfigError("model.backbone", "the MACE model's last readout has no hidden "
                              f"layer ({type(last).__name__}); only MACE models with a "
                              "non-linear last readout (the default) are supported")
        irreps = last.linear_1.irreps_in
        self.register_buffer("scalar_columns", _scalar_columns(irreps), persistent=False)
        self.n_features = int(self.scalar_columns.numel())
        mace_module.readouts[-1] = nn.Identity()  # the ensemble's bottleneck and heads
        lookup = torch.full((max(self.species) + 1,), -1, dtype=torch.long)
        lookup[torch.tensor(self.species)] = torch.arange(len(self.species))
        self.register_buffer("species_index", lookup, persistent=False)

    def forward(self, batch: Batch, edge_vectors: torch.Tensor):
        """Features h (N, C) and the shared per-atom energy (N,) eV, float64."""
        mace = self.mace
        dtype = edge_vectors.dtype
        node_attrs = nn.functional.one_hot(self.species_index[batch.numbers],
                                           len(self.species)).to(dtype)
        edge_index = torch.stack([batch.i, batch.j])  # sender i, receiver j, vector r_j − r_i
        heads = torch.zeros_like(batch.numbers)
        arange = torch.arange(batch.numbers.shape[0], device=batch.numbers.device)
        lengths = torch.linalg.norm(edge_vectors, dim=-1, keepdim=True)
        node_feats = mace.node_embedding(node_attrs)
        edge_attrs = mace.spherical_harmonics(edge_vectors)
        edge_feats, cutoff = mace.radial_embedding(lengths, node_attrs, edge_index,
                                                   mace.atomic_numbers)
        shared = node_attrs.new_zeros(batch.numbers.shape[0])
        if hasattr(mace, "pair_repulsion_fn"):
            shared = shared + mace.pair_repulsion_fn(lengths, node_attrs, edge_index,
                                                     mace.atomic_numbers)
        feats = []
        for k, (interaction, product) in enumerate(zip(mace.interactions, mace.products,
                                                      strict=True)):
            node_feats, sc = interaction(node_attrs=node_attrs, node_feats=node_feats,
                                         edge_attrs=edge_attrs, edge_feats=edge_feats,
                                         edge_index=edge_index, cutoff=cutoff,
                                         first_layer=(k == 0), lammps_class=None,
                                         lammps_natoms=(0, 0))
            node_feats = product(node_feats=node_feats, sc=sc, node_attrs=node_attrs)
            feats.append(node_feats)
        for k, readout in enumerate(list(mace.readouts)[:-1]):
            shared = shared + readout(feats[k], heads)[arange, heads]
        scale = torch.atleast_1d(mace.scale_shift.scale)[0].to(dtype)
        shift = torch.atleast_1d(mace.scale_shift.shift)[0].to(dtype)
        e0 = mace.atomic_energies_fn.atomic_energies.reshape(-1, len(self.species))[0]
        # E0 (~10³ eV per atom) is added in float64: in float32 it would round away the
        # position-dependent part (~10⁻⁴ eV steps, i.e. noisy finite-difference forces)
        shared = (scale * shared + shift).double() + e0.double()[self.species_index[batch.numbers]]
        return feats[-1][:, self.scalar_columns], shared


def _scalar_columns(irreps) -> torch.Tensor:
    """Column indices of the 0e channels of an e3nn irreps string/object."""
    import_mace()
    from e3nn import o3

    columns, start = [], 0
    for mul, ir in o3.Irreps(str(irreps)):
        if ir.l == 0 and ir.p == 1:
            columns.extend(range(start, start + mul))
        start += mul * ir.dim
    return torch.tensor(columns, dtype=torch.long)


# --- building from options (plain data) ---------------------------------------------------------

def import_mace():
    """Import mace-torch (and e3nn) without leaking its process-wide setting.

    ``import mace`` sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` in ``os.environ`` (e3nn 0.4.4
    loads its constants with a bare ``torch.load``, refused by torch ≥ 2.6 otherwise); that would
    make every later ``torch.load`` without an explicit ``weights_only`` — and every child
    process — unpickle arbitrary code. The variable is restored once e3nn is loaded.
    """
    key = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
    before = os.environ.get(key)
    try:
        # torch's warning that the variable is set; mace's print that cuequivariance (a GPU
        # accelerator) is absent, which would land in the stdout of our commands
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.filterwarnings("ignore", message=".*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
            import mace.modules  # noqa: F401 - sets the variable, then loads e3nn under it
            import mace.tools.scripts_utils  # noqa: F401
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def _fresh_config(options: MaceOptions, species, avg_num_neighbors: float) -> dict:
    """MACE's constructor configuration (plain data) for a model trained from scratch."""
    hidden = " + ".join(f"{options.channels}x{l}{'e' if l % 2 == 0 else 'o'}"
                        for l in range(options.max_L + 1))
    return {
        "r_max": float(options.cutoff_A), "num_bessel": options.num_radial,
        "num_polynomial_cutoff": options.num_cutoff_basis, "max_ell": options.max_ell,
        "interaction_cls": options.interaction,
        "interaction_cls_first": "RealAgnosticInteractionBlock",
        "num_interactions": options.num_interactions, "num_elements": len(species),
        "hidden_irreps": hidden, "MLP_irreps": "16x0e", "gate": "silu",
        "atomic_energies": [0.0] * len(species), "avg_num_neighbors": float(avg_num_neighbors),
        "atomic_numbers": list(species), "correlation": options.correlation,
        "radial_MLP": list(options.radial_mlp), "atomic_inter_scale": 1.0,
        "atomic_inter_shift": 0.0,
    }


def _module_from_config(config: dict) -> nn.Module:
    """Rebuild a ``ScaleShiftMACE`` from the plain-data configuration."""
    import numpy as np

    import_mace()
    from e3nn import o3
    from mace import modules
    from mace.modules import blocks

    kwargs = dict(config)
    kwargs["interaction_cls"] = modules.interaction_classes[kwargs["interaction_cls"]]
    kwargs["interaction_cls_first"] = modules.interaction_classes[kwargs["interaction_cls_first"]]
    if "readout_cls" in kwargs:
        kwargs["readout_cls"] = getattr(blocks, kwargs["readout_cls"])
    kwargs["gate"] = {"silu": nn.functional.silu, None: None}[kwargs["gate"]]
    for key in ("hidden_irreps", "MLP_irreps", "edge_irreps"):
        if kwargs.get(key) is not None:
            kwargs[key] = o3.Irreps(kwargs[key])
    kwargs["atomic_energies"] = np.asarray(kwargs["atomic_energies"], dtype=float)
    for key in ("atomic_inter_scale", "atomic_inter_shift"):
        kwargs[key] = np.asarray(kwargs[key], dtype=float)
    if kwargs.get("radial_MLP") is not None:
        kwargs["radial_MLP"] = list(kwargs["radial_MLP"])
    return modules.ScaleShiftMACE(**kwargs)


def build_mace(options: MaceOptions, species, batch: Batch | None = None) -> MaceBackbone:
    """The registry's builder (imports mace-torch; ImportError when it is not installed)."""
    import_mace()

    config = options.mace_config
    if config is None:
        avg = options.avg_num_neighbors
        if avg is None:
            avg = float(batch.i.shape[0] / batch.numbers.shape[0]) if batch is not None else 1.0
        options = dataclasses.replace(options, avg_num_neighbors=avg)
        config = _fresh_config(options, species, avg)
    else:
        missing = sorted(set(species) - {int(z) for z in config["atomic_numbers"]})
        if missing:
            raise ConfigError("model.backbone.mace_config.atomic_numbers",
                              f"the MACE model knows elements {config['atomic_numbers']}, not "
                              f"{missing} of the data; use a MACE model trained on them")
    with _default_dtype(torch.float64):
        module = _module_from_config(config)
    return MaceBackbone(module.float(), options)


class _default_dtype:
    """Build in float64 (e3nn makes some constants in the default dtype), then cast; e3nn's
    ``torch.jit.script`` calls while building warn about TorchScript, which users cannot act on."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.warnings = warnings.catch_warnings()

    def __enter__(self):
        self.old = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        self.warnings.__enter__()
        warnings.filterwarnings("ignore", message=".*TorchScript.*")
        warnings.filterwarnings("ignore", message=".*torch.jit.*")

    def __exit__(self, *exc):
        self.warnings.__exit__(*exc)
        torch.set_default_dtype(self.old)


register_backbone("mace", MaceOptions, build_mace, extra="mace-torch")


# --- importing a foreign MACE model file -------------------------------------------------------

def is_mace_file(path: str | Path) -> bool:
    """Whether ``path`` is a torch zip whose pickle names a ``mace.modules`` class (read without
    unpickling: the pickle's bytes are searched, nothing is executed)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("data.pkl")]
            return bool(names) and b"mace.modules" in archive.read(names[0])
    except (OSError, zipfile.BadZipFile):
        return False


def plain_mace_config(module: nn.Module) -> dict:
    """MACE's constructor configuration of ``module`` as plain data (YAML/JSON-safe)."""
    import_mace()
    from mace.tools.scripts_utils import extract_config_mace_model

    config = extract_config_mace_model(module)
    if "error" in config:
        raise ConfigError("init_model", config["error"])
    for key in ("embedding_specs", "cueq_config", "edge_irreps", "distance_transform"):
        if config.get(key) not in (None, False, "None"):
            raise ConfigError("init_model", f"MACE models with {key}={config[key]!r} are not "
                              "supported; use a ScaleShiftMACE without it")
    gate = config.get("gate")
    gate_name = None if gate is None else getattr(gate, "__name__", str(gate))
    if gate_name not in (None, "silu"):
        raise ConfigError("init_model", f"the MACE model's readout uses {gate_name}; only SiLU "
                          "(MACE's default) is supported")
    plain = {}
    for key, value in config.items():
        if key in ("distance_transform", "embedding_specs", "cueq_config", "edge_irreps"):
            continue
        if isinstance(value, type):
            value = value.__name__
        elif key == "gate":
            value = gate_name
        elif hasattr(value, "tolist"):
            value = value.tolist()
        elif key in ("hidden_irreps", "MLP_irreps"):
            value = str(value)
        plain[key] = value
    if len(plain.get("heads", ["Default"])) > 1:
        raise ConfigError("init_model", f"multi-head MACE models ({plain['heads']}) are not "
                          "supported; export one head first")
    plain.pop("heads", None)
    return plain


def import_mace_model(path: str | Path, n_members: int, dtype: str = "float32"):
    """A shallow ensemble whose members all equal the MACE model in ``path`` (then sample heads).

    Unpickles the file (``weights_only=False``: a MACE file is a whole pickled module), so call
    it only for a file the user named. The bottleneck takes ``linear_1`` (e3nn normalisation
    folded in), every head the effective ``linear_2`` weights (with e3nn's activation constant
    and MACE's scale), the shared shift and E0s stay in the backbone.

    Returns
    -------
    ShallowEnsemble with M identical heads (feature centre 0, β = 0, μ = 0, s_Z = 1).
    """
    from .config import ModelConfig
    from .ensemble import ShallowEnsemble

    import_mace()
    path = Path(path)
    LOG.warning("%s: unpickling a MACE model file (torch.load weights_only=False): only load "
                "files you trust", path)
    try:
        module = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - pickle errors of any type
        raise ModelFileError(path, f"cannot be read as a MACE model ({type(err).__name__}: "
                             f"{err})") from None
    if type(module).__name__ != "ScaleShiftMACE":
        raise ModelFileError(path, f"holds a {type(module).__name__}, not a ScaleShiftMACE "
                             "(the model mace_run_train writes as NAME.model)")
    module = module.double().eval()
    config = plain_mace_config(module)
    readout = module.readouts[-1]
    with torch.no_grad():
        probe = torch.zeros(1, readout.linear_1.irreps_in.dim, dtype=torch.float64)
        columns = _scalar_columns(readout.linear_1.irreps_in)
        eye = torch.eye(columns.numel(), dtype=torch.float64)
        inputs = probe.repeat(columns.numel(), 1)
        inputs[:, columns] = eye
        first = readout.linear_1(inputs) - readout.linear_1(probe)  # (C, 16)
        hidden = first.shape[1]
        act = readout.non_linearity(torch.ones(1, hidden, dtype=torch.float64))
        act_constant = float(act[0, 0] / nn.functional.silu(torch.ones(1, dtype=torch.float64)))
        second = readout.linear_2(torch.eye(hidden, dtype=torch.float64))[:, 0]  # (16,)
        scale = float(torch.atleast_1d(module.scale_shift.scale)[0])
    options = MaceOptions(cutoff_A=float(module.r_max), mace_config=config)
    model_config = ModelConfig(backbone={"kind": "mace", **dataclasses.asdict(options)},
                               bottleneck=hidden, n_members=n_members, dtype=dtype)
    model = ShallowEnsemble.from_config(model_config, config["atomic_numbers"])
    state = {k: v for k, v in module.state_dict().items()
             if not k.startswith(f"readouts.{len(module.readouts) - 1}.")}
    model.backbone.mace.load_state_dict(state)  # cast to the model's dtype
    with torch.no_grad():
        linear = model.bottleneck[0]
        linear.weight.copy_(first.T)
        linear.bias.zero_()
        model.head.weight.copy_((act_constant * scale * second).expand(n_members, -1))
        model.scale.fill_(1.0)
        model.shift.zero_()
        model.composition.zero_()
    return model
