"""The run-by-run mixed-adapter forward gives peft's own result and gradients, for any order of names."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from copd_lab.vlm.mixed_lora import NameRuns, runs_forward, use_runs_forward


class TwoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = torch.nn.Linear(6, 10), torch.nn.Linear(10, 6)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def _peft_model():
    torch.manual_seed(0)
    model = get_peft_model(TwoLayers(), LoraConfig(r=2, lora_alpha=4, target_modules=["up", "down"]), "slot1")
    model.add_adapter("slot2", LoraConfig(r=3, lora_alpha=3, target_modules=["up", "down"]))
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.requires_grad_(True)
            torch.nn.init.normal_(p, std=0.5)  # B would start at zero: make every adapter change the output
    return model.eval()  # peft takes adapter_names in eval mode only (no dropout here: gradients still flow)


def _lora_layers(model):
    return [m for m in model.modules() if hasattr(m, "lora_A")]


def test_name_runs_by_hand():
    runs = NameRuns()
    assert runs(["a", "a", "b", "__base__", "__base__", "a"]) == [("a", 0, 2), ("b", 2, 3), ("__base__", 3, 5),
                                                                 ("a", 5, 6)]
    assert runs(["x"]) == [("x", 0, 1)]
    assert runs([]) == []


def test_name_runs_recomputed_for_a_new_list_with_equal_ids():
    runs = NameRuns()
    first = ["a", "b"]
    assert runs(first) == [("a", 0, 1), ("b", 1, 2)]
    assert runs(["b", "b"]) == [("b", 0, 2)]


@pytest.mark.parametrize("names", [
    ["slot1"] * 3 + ["slot2"] * 2 + ["__base__"] * 2,           # contiguous, as copd_lab builds batches
    ["slot2", "slot1", "__base__", "slot1", "slot2", "slot2", "slot1"],  # interleaved
    ["slot1"] * 7,
])
def test_runs_forward_equals_peft_mixed_batch_forward(names):
    x = torch.randn(len(names), 5, 6)
    reference, ours = _peft_model(), _peft_model()
    use_runs_forward(_lora_layers(ours))
    out_ref = reference(x, adapter_names=names)
    out = ours(x, adapter_names=names)
    torch.testing.assert_close(out, out_ref, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(out, reference(x, adapter_names=["__base__"] * len(names)))  # adapters matter
    out.square().sum().backward()
    out_ref.square().sum().backward()
    grads = {n: p.grad for n, p in ours.named_parameters() if p.grad is not None}
    grads_ref = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    assert grads.keys() == grads_ref.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], rtol=1e-5, atol=1e-6)


def test_rows_of_the_base_get_no_lora():
    model = _peft_model()
    use_runs_forward(_lora_layers(model))
    x = torch.randn(4, 6)
    out = model(x, adapter_names=["__base__", "__base__", "slot1", "slot1"])
    with model.disable_adapter():  # peft's own way to run the base
        base = model(x)
    torch.testing.assert_close(out[:2], base[:2])
    assert not torch.allclose(out[2:], base[2:])


def test_direct_call_matches_layer_forward():
    model = _peft_model()
    layer = _lora_layers(model)[0]
    x = torch.randn(3, 6)
    names = ["slot2", "slot2", "slot1"]
    torch.testing.assert_close(runs_forward(layer, NameRuns(), x, adapter_names=names),
                               type(layer)._mixed_batch_forward(layer, x, adapter_names=names))
