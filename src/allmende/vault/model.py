"""A small torch classifier, its content address, and training with differential privacy.

A model is a spec (`inputs`, `hidden`, `classes`; hidden = 0 is logistic regression)
plus its parameters as numpy arrays. Saved to a folder (`spec.json`, `weights.npz`)
its id is the manifest hash of those two files, like every other model id in Allmende.

Training in a vault is full-batch DP gradient descent (Abadi et al.'s per-example
clipping with Gaussian noise, without subsampling): every step clips each row's
gradient to `clip`, rounds it to a grid of step γ = clip·2⁻²⁰, sums the integers, adds
discrete Gaussian noise of σ = noise·clip (in grid units, from the OS CSPRNG, see
`allmende.vault.noise`) and divides by the row count. The row count is public
(`/v1/info`, and the step divides by it), so neighbouring datasets have the same size
and differ in one row replaced by another: one step is the discrete Gaussian mechanism
with L2 sensitivity Δ = 2·(clip + γ·√d/2) (two clipped rows, each with the rounding of
its d coordinates), so it is ρ = Δ² / (2σ²) zero-concentrated DP; steps compose by adding ρ, and ρ converts to
(ε, δ) as ε = ρ + 2·sqrt(ρ·ln(1/δ)) (Bun & Steinke 2016).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from eth_utils import keccak

from allmende.core.manifest import Manifest, ManifestEntry
from allmende.core.privacy import MICRO as MICRO  # re-exported: the vault and its tests count in it
from allmende.core.privacy import epsilon_of as epsilon_of
from allmende.core.privacy import micro_epsilon as micro_epsilon
from allmende.vault.noise import RandomBytes, discrete_gaussian

if TYPE_CHECKING:
    import torch
    from torch import nn

# torch is imported by the functions that build, run or train a module, not with this module: a
# vault imports it here, and one serving only tables needs it at its first training or evaluation
# job, not to start (importing torch was about half of a vault's start-up CPU)

GRID_BITS = 20  # DP-GD rounds each clipped row gradient to multiples of clip·2⁻²⁰
# Neighbouring datasets differ in one row replaced by another (the row count is public), so
# a clipped sum moves by up to twice one row's bound: every sensitivity is this many rows.
REPLACED_ROWS = 2


@functools.cache
def _standardize() -> type[nn.Module]:
    """The Standardize module class (made at first use, with torch)."""
    import torch
    from torch import nn

    class Standardize(nn.Module):
        """(x − shift) / scale per feature: fixed numbers of the model's spec, not trained."""

        shift: torch.Tensor
        scale: torch.Tensor

        def __init__(self, shift: tuple[float, ...], scale: tuple[float, ...]) -> None:
            super().__init__()
            self.register_buffer("shift", torch.tensor(shift, dtype=torch.float64))
            self.register_buffer("scale", torch.tensor(scale, dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x - self.shift.to(x.dtype)) / self.scale.to(x.dtype)

    return Standardize


@dataclass(frozen=True)
class ModelSpec:
    inputs: int
    classes: int
    hidden: int = 0
    # the model standardises each feature with these (fitted on public data by `federated init`;
    # part of the spec, so of the model id, and never trained): raw rows go in as they are
    shift: tuple[float, ...] | None = None
    scale: tuple[float, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"inputs": self.inputs, "hidden": self.hidden, "classes": self.classes}
        if self.shift is not None and self.scale is not None:
            out["shift"], out["scale"] = list(self.shift), list(self.scale)
        return out

    @classmethod
    def from_json(cls, data: object) -> ModelSpec:
        if not isinstance(data, dict):
            raise ValueError("model spec must be an object")
        values = {k: data.get(k, 0 if k == "hidden" else None) for k in ("inputs", "hidden", "classes")}
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 4096 for v in values.values()):
            raise ValueError("model spec needs integer inputs, classes (and hidden) in [0, 4096]")
        if values["inputs"] == 0 or values["classes"] < 2:  # type: ignore[operator]
            raise ValueError("model spec needs inputs ≥ 1 and classes ≥ 2")
        inputs = int(values["inputs"])  # type: ignore[arg-type]
        shift, scale = data.get("shift"), data.get("scale")
        if (shift is None) != (scale is None):
            raise ValueError("model spec: give both shift and scale, or neither")
        if shift is not None:
            shift, scale = _floats(shift, inputs, "shift"), _floats(scale, inputs, "scale")
            if not all(v > 0 for v in scale):
                raise ValueError("model spec: every scale must be positive")
        return cls(inputs, int(values["classes"]), int(values["hidden"]), shift, scale)  # type: ignore[arg-type]

    def module(self) -> nn.Module:
        from torch import nn

        layers: list[nn.Module] = []
        if self.shift is not None and self.scale is not None:
            layers.append(_standardize()(self.shift, self.scale))
        if self.hidden:
            layers += [nn.Linear(self.inputs, self.hidden), nn.ReLU(), nn.Linear(self.hidden, self.classes)]
        else:
            layers.append(nn.Linear(self.inputs, self.classes))
        return nn.Sequential(*layers)

    def init(self, seed: int = 0) -> list[np.ndarray]:
        import torch

        torch.manual_seed(seed)
        return [p.detach().double().numpy().copy() for p in self.module().parameters()]

    def standardized(self, features: np.ndarray) -> ModelSpec:
        """This spec with each feature's mean and standard deviation over `features` (public rows)."""
        x = np.asarray(features, dtype=np.float64)
        std = x.std(axis=0)
        scale = np.where(std > 1e-12, std, 1.0)
        return ModelSpec(self.inputs, self.classes, self.hidden, tuple(map(float, x.mean(axis=0))),
                         tuple(map(float, scale)))  # fmt: skip


def _floats(value: object, n: int, name: str) -> tuple[float, ...]:
    if (
        not isinstance(value, list)
        or len(value) != n
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    ):
        raise ValueError(f"model spec: {name} must be {n} finite numbers, one per input")
    return tuple(float(v) for v in value)


def check_params(spec: ModelSpec, params: list[np.ndarray]) -> None:
    """Raises ValueError unless `params` have the shapes `spec`'s module needs."""
    shapes = [tuple(p.shape) for p in spec.module().parameters()]
    if [tuple(np.shape(a)) for a in params] != shapes:
        raise ValueError(f"parameters do not fit the spec: expected shapes {shapes}")


def _module_with(spec: ModelSpec, params: list[np.ndarray]) -> nn.Module:
    import torch

    check_params(spec, params)
    module = spec.module().double()
    with torch.no_grad():
        for p, a in zip(module.parameters(), params, strict=True):
            p.copy_(torch.from_numpy(np.asarray(a, dtype=np.float64)))
    return module


def predict(spec: ModelSpec, params: list[np.ndarray], features: np.ndarray) -> np.ndarray:
    """Class probabilities, (rows, classes)."""
    import torch

    module = _module_with(spec, params)
    with torch.no_grad():
        logits = module(torch.from_numpy(np.asarray(features, dtype=np.float64)))
        return torch.softmax(logits, dim=1).numpy()


def train(
    spec: ModelSpec,
    params: list[np.ndarray],
    features: np.ndarray,
    labels: np.ndarray,
    steps: int,
    lr: float,
    clip: float | None = None,
    noise: float = 0.0,
    random_bytes: RandomBytes = os.urandom,
) -> list[np.ndarray]:
    """Full-batch gradient descent; with `clip`, DP-GD (per-row clipping, rounding to the
    grid, discrete Gaussian noise drawn from `random_bytes`, the OS CSPRNG unless a test
    injects another source)."""
    import torch
    from torch import nn
    from torch.func import functional_call, grad, vmap

    module = _module_with(spec, params)
    x = torch.from_numpy(np.asarray(features, dtype=np.float64))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    names = [n for n, _ in module.named_parameters()]
    loss_fn = nn.functional.cross_entropy

    def row_loss(weights: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(module, weights, (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0))

    per_row = vmap(grad(row_loss), in_dims=(None, 0, 0))
    weights = {n: p.detach().clone() for n, p in module.named_parameters()}
    rows = max(1, x.shape[0])
    for _ in range(steps):
        if clip is None:
            weights_req = {n: w.requires_grad_(True) for n, w in weights.items()}
            loss = loss_fn(functional_call(module, weights_req, (x,)), y)
            grads = torch.autograd.grad(loss, [weights_req[n] for n in names])
            update = dict(zip(names, grads, strict=True))
            weights = {n: (w - lr * update[n]).detach() for n, w in weights.items()}
            continue
        g = per_row(weights, x, y)  # name -> (rows, *shape)
        norms = torch.sqrt(sum(g[n].reshape(g[n].shape[0], -1).pow(2).sum(1) for n in names))
        scale = torch.clamp(clip / (norms + 1e-12), max=1.0)
        grid = clip * 2.0**-GRID_BITS
        new = {}
        for n in names:
            # integers on the grid: the noisy sum can only take values the data does not choose
            ticks = torch.round(g[n] * scale.view(-1, *([1] * (g[n].dim() - 1))) / grid).to(torch.int64).sum(0)
            if noise > 0:
                draw = discrete_gaussian(noise * clip / grid, ticks.numel(), random_bytes)
                ticks = ticks + torch.from_numpy(draw).view(ticks.shape)
            new[n] = weights[n] - lr * (ticks.to(torch.float64) * grid) / rows
        weights = new
    return [weights[n].detach().numpy().copy() for n in names]


def accuracy(spec: ModelSpec, params: list[np.ndarray], features: np.ndarray, labels: np.ndarray) -> float:
    if features.shape[0] == 0:
        return 0.0
    return float((predict(spec, params, features).argmax(1) == labels).mean())


# ------------------------------------------------------------ accounting


def rho_of(steps: int, noise: float, dimension: int = 0) -> float:
    """zCDP cost of `steps` full-batch DP-GD steps with noise multiplier `noise` on a model
    of `dimension` parameters (its rounding to the grid widens the sensitivity a little)."""
    if steps == 0:
        return 0.0
    if noise <= 0:
        return math.inf
    # Δ/clip: a row replaced, each clipped (with a margin for float rounding of its norm) and rounded
    sensitivity = REPLACED_ROWS * (1.0 + 1e-9 + 2.0**-GRID_BITS * math.sqrt(dimension) / 2.0)
    return steps * sensitivity * sensitivity / (2.0 * noise * noise)


# --------------------------------------------------------- serialisation


def params_to_bytes(params: list[np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, *[np.asarray(p, dtype=np.float64) for p in params])
    return buffer.getvalue()


MAX_PARAMETERS = 1 << 22  # the most parameters a vault decodes for one request (32 MiB of float64)
_NPY_HEADER = 4096  # room for an .npy member's header


def shapes_of(spec: ModelSpec) -> list[tuple[int, ...]]:
    """The parameter shapes `spec`'s module has; ValueError beyond MAX_PARAMETERS."""
    shapes = [tuple(p.shape) for p in spec.module().parameters()]
    if sum(math.prod(s) for s in shapes) > MAX_PARAMETERS:
        raise ValueError(f"the model has more than {MAX_PARAMETERS} parameters, the most a vault decodes")
    return shapes


def params_from_bytes(data: bytes, shapes: list[tuple[int, ...]] | None = None) -> list[np.ndarray]:
    """The arrays of an .npz. With `shapes` (what a request's spec needs), nothing is inflated
    before the archive is checked: exactly one member per array, named as `np.savez` names them,
    each declaring no more bytes than its float64 array and an .npy header need, and each
    header declaring exactly its shape in little-endian float64; so one request decodes at most
    the model's own size (zipfile stops inflating a member at its declared size)."""
    if shapes is None:
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            return [f[f"arr_{i}"] for i in range(len(f.files))]
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = archive.infolist()
        if [m.filename for m in members] != [f"arr_{i}.npy" for i in range(len(shapes))]:
            raise ValueError(f"the weights must be {len(shapes)} arrays arr_0.npy … as np.savez writes them")
        for member, shape in zip(members, shapes, strict=True):
            if member.file_size > 8 * math.prod(shape) + _NPY_HEADER:
                raise ValueError(f"{member.filename} declares {member.file_size} bytes; shape {shape} needs fewer")
        out = []
        for member, shape in zip(members, shapes, strict=True):
            with archive.open(member) as f:
                version = np.lib.format.read_magic(f)
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else (np.lib.format.read_array_header_2_0)
                )
                declared, fortran, dtype = read_header(f)
                if tuple(declared) != shape or fortran or dtype != np.dtype("<f8"):
                    raise ValueError(f"{member.filename} is not a {shape} array of little-endian float64")
                raw = f.read(8 * math.prod(shape) + 1)
            if len(raw) != 8 * math.prod(shape):
                raise ValueError(f"{member.filename} holds {len(raw)} bytes of data, not {8 * math.prod(shape)}")
            out.append(np.frombuffer(raw, dtype="<f8").reshape(shape).copy())
        return out


MODEL_FILES = ("spec.json", "weights.npz")


def _files(spec: ModelSpec, params: list[np.ndarray]) -> dict[str, bytes]:
    return {
        "spec.json": (json.dumps(spec.to_json(), sort_keys=True) + "\n").encode(),
        "weights.npz": params_to_bytes(params),
    }


def _id_of(files: dict[str, bytes]) -> bytes:
    """The manifest hash of the model's two files (other files in its folder, such as
    run.json, are not part of the model)."""
    entries = tuple(ManifestEntry(n, len(files[n]), hashlib.sha256(files[n]).hexdigest()) for n in MODEL_FILES)
    return keccak(Manifest(entries).canonical())


def model_id(spec: ModelSpec, params: list[np.ndarray]) -> bytes:
    """The id `save_model` gives, without touching the disk."""
    return _id_of(_files(spec, params))


def save_model(folder: str | Path, spec: ModelSpec, params: list[np.ndarray]) -> bytes:
    """Write the model's files; returns its content-addressed id."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    files = _files(spec, params)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return _id_of(files)


def load_model(folder: str | Path) -> tuple[ModelSpec, list[np.ndarray], bytes]:
    root = Path(folder)
    files = {name: (root / name).read_bytes() for name in MODEL_FILES}
    spec = ModelSpec.from_json(json.loads(files["spec.json"]))
    return spec, params_from_bytes(files["weights.npz"]), _id_of(files)
