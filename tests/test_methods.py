"""Methods: what trains, parameter counts, and LoDA ≡ LoRA when g ≡ 0."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from dpbench.engine.trainer import prepare_model
from dpbench.errors import UserError
from dpbench.methods.loda import LoDALayer
from dpbench.models.diffusion import build_unet, count_parameters
from dpbench.registry import METHODS



@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return build_unet("tiny", 8, 1, 10)


@pytest.mark.parametrize("layer", [nn.Linear(12, 7), nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(4, 6, 3, stride=2)])
def test_loda_with_g_zero_equals_peft_lora(layer):
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    holder = nn.Sequential(copy.deepcopy(layer))
    lora = inject_adapter_in_model(LoraConfig(r=3, lora_alpha=6, target_modules=["0"], lora_dropout=0.0), holder)[0]
    with torch.no_grad():
        lora.lora_B["default"].weight.normal_()
    loda = LoDALayer(copy.deepcopy(layer), rank=3, hidden=0, alpha=6)
    with torch.no_grad():
        loda.A.weight.copy_(lora.lora_A["default"].weight)
        loda.B.weight.copy_(lora.lora_B["default"].weight)
    x = torch.randn(4, 12) if isinstance(layer, nn.Linear) else torch.randn(2, layer.in_channels, 9, 9)
    assert torch.allclose(loda(x), lora(x), atol=1e-6)
    assert not torch.allclose(loda(x), layer(x), atol=1e-3), "the adapter must contribute"


def test_loda_nonlinearity_adds_capacity_but_starts_at_identity():
    torch.manual_seed(0)
    base = nn.Conv2d(4, 6, 3, padding=1)
    layer = LoDALayer(copy.deepcopy(base), rank=2, hidden=8)
    x = torch.randn(2, 4, 5, 5)
    assert torch.equal(layer(x), base(x)), "B = 0 at initialisation"
    with torch.no_grad():
        layer.B.weight.normal_()
    no_g = LoDALayer(copy.deepcopy(base), rank=2, hidden=0)
    with torch.no_grad():
        no_g.A.weight.copy_(layer.A.weight)
        no_g.B.weight.copy_(layer.B.weight)
    assert not torch.allclose(layer(x), no_g(x)), "g ≠ 0 changes the function"


@pytest.mark.parametrize("name", ["full", "bias", "attention", "lora", "loda"])
def test_trainable_sets(unet, name):
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    model = prepare_model(unet, METHODS.get(name)(), 10, "cpu")
    trainable, total = count_parameters(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(n.startswith("class_embedding") for n in names), "the private class embedding always trains"
    own = [n for n in names if not n.startswith("class_embedding")]
    assert own, "the method itself must make something trainable"
    base_total = sum(p.numel() for p in unet.parameters())
    if name == "full":
        assert trainable == total == base_total
    elif name == "bias":
        assert all(n.endswith(".bias") for n in own)
    elif name == "attention":
        assert all(".attentions." in n for n in own)
    else:
        assert all(("lora_" in n or ".A." in n or ".B." in n or ".g." in n) for n in own)
        assert total > base_total
    assert 0 < trainable < total or name == "full"
    # the pretrained model itself is left untouched: same parameters, same values, no adapters
    after = unet.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_bad_method_options_are_user_errors():
    with pytest.raises(UserError, match="rnak"):
        METHODS.get("lora")({"rnak": 2})
    with pytest.raises(UserError, match="rank"):
        METHODS.get("loda")({"rank": 0})


def test_unknown_method_suggests():
    with pytest.raises(UserError, match="did you mean 'loda'"):
        METHODS.get("lodaa")


def test_adding_a_method_is_one_file(tmp_path, monkeypatch):
    """The template, copied as a new file into a folder of the methods package, is discovered and trains
    what it marks — with nothing else changed (and nothing written into the installed package)."""
    import dpbench.methods as pkg
    from dpbench.registry import Registry

    (tmp_path / "zz_template_copy.py").write_text((Path(pkg.__file__).parent / "_template.py").read_text())
    monkeypatch.setattr(pkg, "__path__", [*pkg.__path__, str(tmp_path)])
    fresh = Registry("method")
    pkg.discover(fresh)
    assert "zz_template_copy" in fresh.names() and set(METHODS.names()) < set(fresh.names())
    method = fresh.get("zz_template_copy")()
    torch.manual_seed(0)
    model = prepare_model(build_unet("tiny", 8, 1, 10), method, 10, "cpu")
    own = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("class_embedding")]
    assert own == ["conv_out.weight", "conv_out.bias"], "the template's prepare decides what trains"
