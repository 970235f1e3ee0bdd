"""Any peft tuner: options type (loha, lokr, oft, ia3, ...), target, its peft config fields; default lora r 8, attention [tiny: 8,192 trainable]

``{name: peft, options: {type: loha, r: 4, target: conv}}`` injects peft's LoHa adapters into the UNet's
ResNet convolutions: ``type`` names the tuner (peft's ``PeftType``, any case), ``target`` the layer group
(``attention``: the attention projections to_q/to_k/to_v/to_out.0, ``conv``: the ResNet conv1/conv2,
``all``: both), and every other option is a field of that tuner's peft config (``r``, ``alpha``,
``use_dora``, ``n_frequency``, ...), checked against it when the suite is validated. Dropout inside an
adapter is off unless asked for: DP-SGD's per-example gradients are of a deterministic function.

Whatever the tuner trains — raw parameters, custom autograd functions — the engine covers it
(dpbench/engine/generic.py). Tuners that support only linear layers (VeRA, FourierFT, ...) are refused
on ``conv``/``all`` by peft at injection, reported as a one-line error naming the option.

The named built-ins (``dora``, ``loha``, ``lokr``, ``oft``, ``ia3``, ``vera``, ``hra``, ``fourierft``) are
:class:`PeftMethod` subclasses that fix ``type`` and some defaults: one small file each.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch.nn as nn
from pydantic import BaseModel, ConfigDict

from dpbench.errors import UserError
from dpbench.methods.base import Method, select_layers, set_trainable

# Adapter dropout fields of peft's configs: off by default (see the module docstring).
_DROPOUT_FIELDS = ("lora_dropout", "module_dropout", "rank_dropout", "vera_dropout", "dropout")


class PeftOptions(BaseModel):
    """``type`` and ``target``; any other option is passed to the tuner's peft config."""

    model_config = ConfigDict(extra="allow")
    type: str = "lora"
    target: Literal["attention", "conv", "all"] = "attention"


def _config_class(tuner: str, field: str):
    from peft import PeftType
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    key = tuner.upper().replace("-", "_")
    if key not in PeftType.__members__:
        known = ", ".join(sorted(t.lower() for t in PeftType.__members__))
        raise UserError(f"{field}: unknown peft tuner {tuner!r} — choose one of {known}")
    return PEFT_TYPE_TO_CONFIG_MAPPING[key]


class PeftMethod(Method):
    name = "peft"
    Options = PeftOptions
    # A named built-in fixes the tuner and may change defaults (peft's own apply otherwise).
    TUNER: ClassVar[str | None] = None
    DEFAULTS: ClassVar[dict[str, Any]] = {}

    def __init__(self, options: dict | None = None):
        options = dict(options or {})
        if self.TUNER is not None:
            if "type" in options and str(options["type"]).lower() != self.TUNER:
                raise UserError(f"methods[{self.name}].options.type: {self.name} is peft's {self.TUNER} — "
                                f"use method `peft` for another tuner")
            options["type"] = self.TUNER
        own = set(self.Options.model_fields)  # type, target; the other defaults are peft config fields
        options = {**{k: v for k, v in self.DEFAULTS.items() if k in own}, **options}
        super().__init__(options)
        defaults = {k: v for k, v in self.DEFAULTS.items() if k not in own}
        self.config_fields = {**defaults, **(self.options.model_extra or {})}
        self._config(["target"])  # validates the fields now, at suite validation

    def _config(self, target_modules: list[str]):
        cls = _config_class(self.options.type, f"methods[{self.name}].options.type")
        fields = {f: 0.0 for f in _DROPOUT_FIELDS if f in cls.__dataclass_fields__}
        fields.update(self.config_fields)
        unknown = [f for f in fields if f not in cls.__dataclass_fields__ or f in ("target_modules", "peft_type")]
        if unknown:
            raise UserError(f"methods[{self.name}].options.{unknown[0]}: not a field of peft's {cls.__name__} — "
                            f"see its documentation for the allowed fields")
        try:
            return cls(target_modules=target_modules, **fields)
        except (TypeError, ValueError) as err:
            raise UserError(f"methods[{self.name}].options: peft's {cls.__name__} refuses them: "
                            f"{' '.join(str(err).split())}") from None

    def prepare(self, model: nn.Module) -> nn.Module:
        from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

        before = {id(p) for p in model.parameters()}
        config = self._config(select_layers(model, self.options.target))
        try:
            # What peft's inject_adapter_in_model does, which refuses tuners with state shared between
            # layers (VeRA's random projections): the layers hold that state, so keeping the model is enough.
            # The model is already on its device (see Method.prepare): the adapters are created there.
            model = PEFT_TYPE_TO_TUNER_MAPPING[config.peft_type](model, config, adapter_name="default").model
        except (TypeError, ValueError) as err:  # peft's words for "this tuner cannot adapt that layer type"
            raise UserError(f"methods[{self.name}].options.target: peft's {self.options.type} cannot adapt the "
                            f"{self.options.target!r} layers ({' '.join(str(err).split())[:160]}) — "
                            "choose target: attention") from None
        added = [p for p in model.parameters() if id(p) not in before and p.requires_grad]
        if not added:
            raise UserError(f"methods[{self.name}]: peft's {self.options.type} added no trainable parameter")
        set_trainable((p for p in model.parameters() if id(p) in before), False)  # only the adapters train
        set_trainable(added)
        return model


METHOD = PeftMethod
