"""summary(): rows in call order, output shapes, parameter totals (frozen, tied, own), modes and hooks restored."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from kerasish.summary import LayerRow, ModelSummary, format_shape, shape_of, summary
from tests.helpers import mlp


def param_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def table(result: ModelSummary) -> list[tuple]:
    return [(row.name, row.type, row.output_shape, row.params) for row in result.rows]


def assert_rows_add_up(result: ModelSummary, net: nn.Module) -> None:
    assert result.total_params == param_count(net)
    assert sum(row.params for row in result.rows) == result.total_params


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, kernel_size=3)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 3 * 3, 10)

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


class TiedLM(nn.Module):
    """Embedding and output projection share one weight; the block runs twice."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.block = nn.Linear(4, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens):
        return self.head(self.block(self.block(self.embed(tokens))))


class Scaled(nn.Module):
    """Holds its own parameter next to its children."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))
        self.inner = nn.Linear(2, 3)

    def forward(self, x):
        return self.inner(x) * self.scale


class KwargsNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)

    def forward(self, features, mask):
        logits = self.proj(features * mask)
        return {"logits": logits, "loss": logits.mean(), "note": "not a tensor"}


class TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)

    def forward(self, x):
        out = self.proj(x)
        return out, out.sum(dim=1)


@dataclass
class Output:
    logits: torch.Tensor
    loss: torch.Tensor | None = None


class ObjectNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)

    def forward(self, x):
        return Output(self.proj(x))


# --- rows, shapes and totals ----------------------------------------------------------------------------------------


def test_mlp_rows_follow_the_forward_pass_and_add_up_to_the_total():
    net = mlp()
    result = summary(net, torch.zeros(5, 64))
    assert table(result) == [
        ("0", "Linear", (5, 32), 64 * 32 + 32),
        ("1", "ReLU", (5, 32), 0),
        ("2", "Linear", (5, 10), 32 * 10 + 10),
    ]
    assert (result.total_params, result.trainable_params, result.non_trainable_params) == (2410, 2410, 0)
    assert result.output_shape == (5, 10)
    assert_rows_add_up(result, net)


def test_a_frozen_layer_counts_as_non_trainable():
    net = mlp()
    net[0].requires_grad_(False)
    result = summary(net, torch.zeros(2, 64))
    assert result.total_params == param_count(net)
    assert result.trainable_params == sum(p.numel() for p in net.parameters() if p.requires_grad) == 330
    assert result.non_trainable_params == 2080


def test_cnn_output_shapes_match_hand_computed_ones():
    net = SmallCNN()
    result = summary(net, torch.zeros(2, 1, 8, 8))
    # 8x8 -> conv 3x3, no padding: 6x6 -> pool 2: 3x3 -> flatten 4*3*3 = 36 -> 10
    assert table(result) == [
        ("conv", "Conv2d", (2, 4, 6, 6), 4 * 1 * 3 * 3 + 4),
        ("relu", "ReLU", (2, 4, 6, 6), 0),
        ("pool", "MaxPool2d", (2, 4, 3, 3), 0),
        ("fc", "Linear", (2, 10), 36 * 10 + 10),
    ]
    assert_rows_add_up(result, net)


def test_a_tied_weight_is_counted_once_and_a_reused_layer_keeps_one_row():
    net = TiedLM()
    result = summary(net, torch.tensor([[1, 2, 3]]))
    assert table(result) == [
        ("embed", "Embedding", (1, 3, 4), 40),
        ("block", "Linear", (1, 3, 4), 20),
        ("head", "Linear", (1, 3, 10), 0),
    ]
    assert [(row.calls, row.shared_params) for row in result.rows] == [(1, 0), (2, 0), (1, 40)]
    assert result.total_params == 60
    assert_rows_add_up(result, net)


def test_a_module_with_its_own_parameter_shows_first_with_only_that_parameter():
    net = Scaled()
    result = summary(net, torch.zeros(2, 2))
    assert table(result) == [("", "Scaled", (2, 3), 3), ("inner", "Linear", (2, 3), 9)]
    assert_rows_add_up(result, net)


def test_a_dict_of_keyword_arguments_in_and_a_dict_out():
    net = KwargsNet()
    result = summary(net, {"features": torch.zeros(2, 4), "mask": torch.ones(2, 4)})
    assert result.output_shape == {"logits": (2, 3), "loss": ()}
    assert table(result) == [("proj", "Linear", (2, 3), 15)]


def test_a_tuple_of_positional_arguments_in_and_a_tuple_out():
    result = summary(TupleNet(), (torch.zeros(5, 4),))
    assert result.output_shape == ((5, 3), (5,))


def test_an_output_object_shows_its_tensor_attributes():
    assert summary(ObjectNet(), torch.zeros(2, 4)).output_shape == {"logits": (2, 3)}


def test_depth_one_collapses_each_top_level_child():
    net = nn.Sequential(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), nn.Sequential(nn.Linear(8, 2)), nn.Flatten())
    result = summary(net, torch.zeros(3, 4), depth=1)
    assert table(result) == [
        ("0", "Sequential", (3, 8), 40),
        ("1", "Sequential", (3, 2), 18),
        ("2", "Flatten", (3, 2), 0),
    ]
    assert_rows_add_up(result, net)
    assert [row.name for row in summary(net, torch.zeros(3, 4)).rows] == ["0.0", "0.1", "1.0", "2"]


def test_a_container_that_never_runs_is_ordered_by_its_first_child_to_run():
    class Stack(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(3, 1)
            self.layers = nn.ModuleList([nn.Linear(3, 3), nn.Linear(3, 3)])

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return self.head(x)

    net = Stack()
    result = summary(net, torch.zeros(1, 3), depth=1)
    assert [(row.name, row.output_shape, row.params, row.calls) for row in result.rows] == [
        ("layers", None, 24, 0),
        ("head", (1, 1), 4, 1),
    ]


def test_a_layer_that_never_runs_is_listed_last_so_the_rows_still_add_up():
    net = TupleNet()
    net.unused = nn.Linear(2, 2)
    result = summary(net, torch.zeros(1, 4))
    assert (result.rows[-1].name, result.rows[-1].calls, result.rows[-1].output_shape) == ("unused", 0, None)
    assert_rows_add_up(result, net)


# --- modes, hooks, devices ------------------------------------------------------------------------------------------


class ModeProbe(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x):
        self.seen.append((self.training, torch.is_grad_enabled()))
        if x.shape[-1] != 2:
            raise ValueError("wants 2 features")
        return self.linear(x)


@pytest.mark.parametrize("training", [True, False])
def test_the_pass_runs_in_eval_mode_without_grad_and_both_are_restored(training):
    net = ModeProbe().train(training)
    summary(net, torch.zeros(1, 2))
    assert net.seen == [(False, False)]
    assert (net.training, net.linear.training, torch.is_grad_enabled()) == (training, training, True)


def test_hooks_are_removed():
    net = SmallCNN()
    summary(net, torch.zeros(1, 1, 8, 8))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_a_failing_example_names_the_problem_restores_the_mode_and_removes_the_hooks():
    net = ModeProbe().train()
    with pytest.raises(
        RuntimeError, match=r"example could not run through the net: ValueError: wants 2 features"
    ) as info:
        summary(net, torch.zeros(1, 5))
    assert isinstance(info.value.__cause__, ValueError)
    assert "The example had shape (1, 5)" in str(info.value)
    assert (net.training, torch.is_grad_enabled()) == (True, True)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_the_example_is_moved_to_the_device_asked_for():
    seen = []

    class Spy(nn.Linear):
        def forward(self, x):
            seen.append(x.device)
            return super().forward(x)

    summary(Spy(2, 1), torch.zeros(1, 2), device="cpu")
    assert seen == [torch.device("cpu")]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cpu_example_follows_a_cuda_net():
    net = SmallCNN().cuda()
    result = summary(net, torch.zeros(2, 1, 8, 8))
    assert result.output_shape == (2, 10)
    assert_rows_add_up(result, net)


# --- rendering and errors -------------------------------------------------------------------------------------------


def test_str_shows_a_table_with_totals_and_thousands_separators():
    net = mlp()
    net[0].requires_grad_(False)
    text = str(summary(net, torch.zeros(1, 64)))
    lines = text.splitlines()
    assert lines[0].split() == ["Layer", "(type)", "Output", "shape", "Params"]
    assert "0 (Linear)" in lines[2] and lines[2].endswith("2,080")
    assert lines[-3:] == ["Total params: 2,410", "Trainable params: 330", "Non-trainable params: 2,080"]
    assert len({len(line) for line in lines[:-3]}) == 1  # every table line has the same width


def test_str_marks_reused_layers_and_shared_weights():
    text = str(summary(TiedLM(), torch.tensor([[1, 2]])))
    assert "block (Linear) ×2" in text
    assert "0 (+40 shared)" in text


def test_to_frame_has_one_row_per_layer():
    frame = summary(SmallCNN(), torch.zeros(1, 1, 8, 8)).to_frame()
    assert list(frame.columns) == ["name", "type", "output_shape", "params", "shared_params", "calls"]
    assert frame["name"].tolist() == ["conv", "relu", "pool", "fc"]
    assert frame["params"].sum() == 40 + 370


def test_shapes_of_nested_outputs():
    hidden = (torch.zeros(1, 2, 5), torch.zeros(1, 2, 5))
    assert shape_of((torch.zeros(2, 3), hidden)) == ((2, 3), ((1, 2, 5), (1, 2, 5)))
    assert shape_of([torch.zeros(1), None]) == [(1,), None]
    assert shape_of(torch.return_types.max((torch.zeros(2), torch.zeros(2)))) == ((2,), (2,))
    assert format_shape(((2, 3), [(4,)], {"a": ()})) == "((2, 3), [(4,)], {a: ()})"
    assert format_shape(((2,),)) == "((2,),)"


def test_a_row_is_a_plain_dataclass():
    assert LayerRow("fc", "Linear", (1, 2), 6) == LayerRow("fc", "Linear", (1, 2), 6, shared_params=0, calls=1)


def test_net_must_be_a_module():
    with pytest.raises(TypeError, match=r"net must be a torch.nn.Module; got function"):
        summary(lambda x: x, torch.zeros(1))


@pytest.mark.parametrize("depth", [0, -1, 1.5, True, "1"])
def test_depth_must_be_a_positive_int(depth):
    with pytest.raises(ValueError, match=rf"depth must be None \(every layer\) or an int >= 1.*got {depth!r}"):
        summary(mlp(), torch.zeros(1, 64), depth=depth)
