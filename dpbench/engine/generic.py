"""The generic per-example path: any module that owns trainable parameters book-keeping has no rule for.

Book-keeping (dpbench/engine/bookkeeping.py) derives per-example gradients of Linear, Conv2d, norm and
embedding weights from each layer's recorded input and output gradient. peft's tuners hold raw
parameters instead — IA3 vectors, DoRA magnitudes, LoHa/LoKr factors, OFT rotations, VeRA scales,
FourierFT spectra — used in arbitrary code, sometimes through custom autograd functions (LoHa's
Hadamard product). For those the engine treats a whole module as one *unit*:

- the unit is the nearest enclosing peft tuner layer (``BaseTunerLayer``) of such a parameter, else the
  module that owns it (its parent when the owner is a container such as ``nn.ParameterDict``), or any
  module a user marks with ``dpbench_per_example_unit = True``; a unit claims every trainable parameter
  beneath it (DoRA's lora_A / lora_B too, whose weights its magnitude code reads outside their own
  calls), outermost units win;
- like a book-keeping layer it records each call's inputs in the one forward and gets its output
  gradient G from the one backward; example i's gradient is then the vector–Jacobian product
  Σ_calls J_θ(f(θ, x_i))ᵀ G_i of the module's own function, evaluated per example by
  ``torch.func.vmap(torch.func.grad(...))`` over ``functional_call`` — or, for modules that
  torch.func refuses (an ``autograd.Function`` without a vmap rule, as in LoHa), by one small
  autograd call per example;
- its per-example gradients are instantiated [b, *shape] like an instantiated book-keeping layer, their
  squared norms join the other layers' in the one joint norm, and the clipped sum is w @ G.

Exact (fp64 tests against an explicit per-example loop), in the clip's precision (float32, or float64 for
float64 parameters; autocast off, inputs cast first), for any forward that is a function of the
module's inputs and parameters. Not for randomness inside the unit (dropout: set it to 0).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from dpbench.engine.bookkeeping_layers import WeightedSum, _Layer, _per_example_sum, _squared_norms
from dpbench.engine.memory import is_out_of_memory
from dpbench.errors import UserError

# Modules that hold parameters but are never called: a parameter they own is used by their parent.
_CONTAINERS = (nn.ParameterDict, nn.ParameterList, nn.ModuleDict, nn.ModuleList)
UNIT_FLAG = "dpbench_per_example_unit"


def _is_tuner_layer(module: nn.Module) -> bool:
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(module, BaseTunerLayer)


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _ancestors(name: str) -> list[str]:
    """``name`` and every module above it, nearest first ("" is the model)."""
    out = [name]
    while name:
        name = _parent(name)
        out.append(name)
    return out


def _unit_for(name: str, modules: dict[str, nn.Module]) -> str:
    """The unit that covers a parameter owned by module ``name`` (see the module docstring)."""
    for above in _ancestors(name):
        if _is_tuner_layer(modules[above]):
            return above
    while isinstance(modules[name], _CONTAINERS) and name:
        name = _parent(name)
    return name


def find_units(model: nn.Module, params: list[nn.Parameter], known_types) -> list[tuple[str, nn.Module, list[str]]]:
    """(name, module, trainable parameter names relative to it) of each generic unit, outermost only.

    A parameter starts a unit when its owner's type is not in ``known_types`` (book-keeping has no rule
    for it) or when a module above it is marked with ``dpbench_per_example_unit``."""
    trainable = {id(p) for p in params}
    modules = dict(model.named_modules())
    starts = set()
    for name, module in modules.items():
        if not any(id(p) in trainable for p in module.parameters(recurse=False)):
            continue
        marked = [above for above in _ancestors(name) if getattr(modules[above], UNIT_FLAG, False)]
        if marked:
            starts.add(marked[-1])
        elif type(module) not in known_types:
            starts.add(_unit_for(name, modules))
    outer = [n for n in starts if not any(o != n and (o == "" or n.startswith(o + ".")) for o in starts)]
    units = []
    for name in sorted(outer):
        for inner, module in modules[name].named_modules(prefix=name):
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                raise NotImplementedError(
                    f"{type(module).__name__} (module {inner!r}) couples the examples of a batch through its batch "
                    "statistics: per-example gradients are undefined — use GroupNorm or LayerNorm")
        owned = [attr for attr, p in modules[name].named_parameters() if id(p) in trainable]
        units.append((name, modules[name], owned))
    return units


class _Call:
    """One call of a unit: its positional and keyword arguments (tensors detached) and output."""

    def __init__(self, args: tuple, kwargs: dict, output: torch.Tensor):
        self.args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        self.kwargs = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        self.input = next((a for a in self.args if isinstance(a, torch.Tensor)), output)
        self.rows = len(self.input)
        self.output = output
        self.versions = [t._version for t in self._tensors()]
        self.output_grad: Optional[torch.Tensor] = None

    def _tensors(self) -> list[torch.Tensor]:
        return [t for t in (*self.args, *self.kwargs.values(), self.output) if isinstance(t, torch.Tensor)]

    def changed_in_place(self) -> Optional[str]:
        changed = any(t._version != v for t, v in zip(self._tensors(), self.versions))
        return "input or output" if changed else None


class GenericLayer(_Layer):
    """A unit: per-example gradients of its trainable parameters by differentiating its own forward."""

    def __init__(self, name: str, module: nn.Module, trainable: list[str]):
        super().__init__(name, module, trainable)
        self.weight_path = "instantiate"
        self.per_example_loop = False  # set once torch.func refuses the module

    def record(self, args: tuple, kwargs: dict, output) -> _Call:
        if not isinstance(output, torch.Tensor):
            raise UserError(f"module {self.name!r} ({type(self.module).__name__}) returns "
                            f"{type(output).__name__}, not a tensor: the per-example engine covers modules "
                            "with one tensor output — make a sub-module that returns a tensor own the trainable parameters")
        self.calls.append(_Call(args, kwargs, output))
        return self.calls[-1]

    def per_example(self, batch: int, path) -> tuple[torch.Tensor, dict[str, WeightedSum]]:
        grads: dict[str, torch.Tensor] = {}
        for call in self.calls:
            for attr, g in self._call_gradients(call, batch).items():
                grads[attr] = grads[attr] + g if attr in grads else g
        norms = sum(_squared_norms(g) for g in grads.values())
        return norms, {attr: _per_example_sum(g) for attr, g in grads.items()}

    # ---------------------------------------------------------------------------------------------
    def _call_gradients(self, call: _Call, batch: int) -> dict[str, torch.Tensor]:
        rows = call.rows
        params = {attr: self.module.get_parameter(attr).detach().to(self.dtype) for attr in self.trainable}
        leaves = [*call.args, *call.kwargs.values()]
        # tensors with one row per batch row are split by example; everything else is shared
        batched = [isinstance(t, torch.Tensor) and t.dim() > 0 and len(t) == rows for t in leaves]
        values = [self._cast(t).unflatten(0, (batch, -1)) if b else self._cast(t) for t, b in zip(leaves, batched)]
        grad = call.output_grad.to(self.dtype).unflatten(0, (batch, -1))
        if not self.per_example_loop:
            try:
                return self._vmapped(params, values, batched, grad, len(call.args), list(call.kwargs))
            except Exception as err:  # noqa: BLE001 - torch.func refuses some modules; the loop is exact too
                if is_out_of_memory(err):
                    raise
                self.per_example_loop = True
        return self._looped(params, values, batched, grad, len(call.args), list(call.kwargs))

    def _cast(self, t):
        return t.to(self.dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t

    def _example_loss(self, params, values, grad, n_args, keys) -> torch.Tensor:
        """⟨f(θ, x_i), G_i⟩ for one example: its gradient in θ is the example's gradient."""
        with torch.autocast(grad.device.type, enabled=False):
            out = torch.func.functional_call(self.module, params, tuple(values[:n_args]),
                                             dict(zip(keys, values[n_args:])))
        return (out.to(self.dtype) * grad).sum()

    def _vmapped(self, params, values, batched, grad, n_args, keys):
        def example(p, vals, g):
            return torch.func.grad(lambda q: self._example_loss(q, vals, g, n_args, keys))(p)

        in_dims = (None, [0 if b else None for b in batched], 0)
        # randomness "same": peft draws torch.rand(1) against a module dropout of 0 (LoKr, LoHa) — a draw
        # that cannot change the output. A unit whose output does depend on a draw is refused by the
        # first chunk's coverage check (its recomputed gradients are not the forward's).
        with torch.enable_grad():
            return torch.func.vmap(example, in_dims=in_dims, randomness="same")(params, values, grad)

    def _looped(self, params, values, batched, grad, n_args, keys):
        out = {attr: grad.new_zeros(len(grad), *p.shape) for attr, p in params.items()}
        for i in range(len(grad)):
            leaves = {attr: p.clone().requires_grad_() for attr, p in params.items()}
            vals = [v[i] if b else v for v, b in zip(values, batched)]
            with torch.enable_grad():
                loss = self._example_loss(leaves, vals, grad[i], n_args, keys)
                got = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
            for attr, g in zip(leaves, got):
                if g is not None:
                    out[attr][i] = g
        return out
