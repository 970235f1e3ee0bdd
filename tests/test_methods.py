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


@pytest.mark.parametrize("name", ["", "zzzzzz"])
def test_an_unknown_method_with_no_close_name_is_told_the_fix(name):
    """No close match (an empty name, say): the one-line error still names the fix after " — " — it lists
    what to use instead (it said "(known: ...)" with no fix, which the suite fuzzer found)."""
    with pytest.raises(UserError) as err:
        METHODS.get(name, "methods[1].name")
    assert str(err.value).startswith("methods[1].name: unknown method")
    assert " — use one of: " in str(err.value) and "loda" in str(err.value)


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


PEFT_TUNERS = {"dora": "lora_", "loha": "hada_", "lokr": "lokr_", "oft": "oft_", "ia3": "ia3_", "vera": "vera_lambda_",
               "hra": "hra_", "fourierft": "fourierft_"}


@pytest.mark.parametrize("name", list(PEFT_TUNERS))
def test_peft_tuners_train_only_their_adapters(unet, name):
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    model = prepare_model(unet, METHODS.get(name)(), 10, "cpu")
    own = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("class_embedding")]
    assert own and all(PEFT_TUNERS[name] in n for n in own), own[:3]
    targets = {n.split(f".{PEFT_TUNERS[name]}")[0].rsplit(".", 1)[-1] for n in own}
    attention_only = name in ("vera", "fourierft", "loha", "oft", "hra")  # linear-only tuners, or slow on convs
    assert targets == ({"to_q", "to_k", "to_v", "0"} if attention_only else {"to_q", "to_k", "to_v", "0", "conv1", "conv2"})
    after = unet.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_ls_methods_states_each_methods_trainable_count_on_the_tiny_preset(unet):
    """The count `dpbench ls methods` prints ("[tiny: N trainable]", adapters only) is the real one."""
    import re

    for entry in METHODS.entries():
        if ":" in entry.name:  # a plug-in named by its import target
            continue
        stated = re.search(r"\[tiny: ([\d,]+) trainable\]", entry.description)
        assert stated, f"{entry.name}: `ls methods` states no count"
        model = prepare_model(unet, METHODS.get(entry.name)(), 10, "cpu")
        own = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and not n.startswith("class_embedding"))
        assert own == int(stated.group(1).replace(",", "")), entry.name


def test_the_generic_peft_method_takes_any_tuner_and_its_config_fields(unet):
    model = prepare_model(unet, METHODS.get("peft")({"type": "LoHa", "r": 2, "target": "conv"}), 10, "cpu")
    own = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("class_embedding")]
    assert own and all("hada_" in n and (".conv1." in n or ".conv2." in n) for n in own)
    assert model.get_submodule("down_blocks.0.resnets.0.conv1").hada_w1_a["default"].shape[1] == 2  # r = 2


@pytest.mark.parametrize("options, field", [
    ({"type": "loha", "rank": 4}, r"options\.rank: not a field of peft's LoHaConfig"),
    ({"type": "lohaa"}, r"options\.type: unknown peft tuner 'lohaa'"),
    ({"type": "oft", "r": 4, "oft_block_size": 4}, r"peft's OFTConfig refuses them"),
    ({"type": "loha", "target": "everything"}, r"options\.target"),
])
def test_bad_peft_options_are_user_errors(options, field):
    with pytest.raises(UserError, match=field):
        METHODS.get("peft")(options)


def test_a_linear_only_tuner_on_convolutions_is_a_user_error(unet):
    with pytest.raises(UserError, match=r"methods\[fourierft\]\.options\.target: .* choose target: attention"):
        prepare_model(unet, METHODS.get("fourierft")({"target": "conv"}), 10, "cpu")
    with pytest.raises(UserError, match=r"options\.type: fourierft is peft's"):
        METHODS.get("fourierft")({"type": "lora"})


@pytest.mark.parametrize("name", list(PEFT_TUNERS) + ["peft"])
def test_every_trainable_parameter_moves_in_dp_training(name):
    """opacus#820: peft adapters that never update. One private step on the default engine moves them all
    (DPTrainer.train asserts it; the comparison here makes the test fail on its own if that check went)."""
    from dpbench.config.suite import TrainingSettings
    from dpbench.engine.trainer import DPTrainer, TrainerSetup
    from dpbench.models.diffusion import make_noise_scheduler
    from dpbench.privacy.accounting import ClippingRule, DPStep

    torch.manual_seed(0)
    model = prepare_model(build_unet("tiny", 8, 1, 3), METHODS.get(name)(), 3, "cpu")
    step = DPStep(private=True, noise_multiplier=1.0, clipping=ClippingRule(mode="fixed", max_grad_norm=1.0),
                  sample_rate=0.5, steps=1, expected_batch_size=4, physical_batch_size=4, noise_multiplicity=1,
                  num_examples=8)
    trainer = DPTrainer(model, make_noise_scheduler(), torch.rand(8, 1, 8, 8) * 2 - 1, torch.arange(8) % 3,
                        TrainerSetup(step, TrainingSettings(optimizer="sgd", lr=0.1, ema_decay=None), 0), "cpu")
    before = [p.detach().clone() for p in trainer.params]
    trainer.train(progress=False)
    assert all(not torch.equal(p0, p.detach()) for p0, p in zip(before, trainer.params))
