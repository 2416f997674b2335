"""Data-parallel training: a plain user script under ``torchrun`` (2 processes, CPU, gloo), and the strategy's rules.

The script (``tests/scripts/ddp_digits.py``) runs twice under torchrun for the whole module: once for every scenario
and a run cut after 3 epochs, once to resume that run. Each launch has a timeout that kills its process group, so a
rank left waiting in a collective fails the tests instead of blocking them. The references are the same functions
run here, in one process, with the same global batch.
"""

from __future__ import annotations

import csv
import importlib.util
import itertools
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, IterableDataset, TensorDataset, WeightedRandomSampler

from kerasish import KerasModel
from kerasish.callbacks import CallbackList
from kerasish.distributed import DataParallel, Strategy
from kerasish.sharding import ContiguousShard
from tests.helpers import launch, rank_outputs, regression_batches

SCRIPT = Path(__file__).resolve().parent / "scripts" / "ddp_digits.py"
LAUNCH_TIMEOUT = 180  # seconds
FIRST_LAUNCH = ("parity", "stops", "accumulate", "shuffled", "wrapped", "batchnorm", "refused", "cut", "whole")
HISTORY_TOLERANCE = 1e-5

# Installed into both ranks through PYTHONPATH: records every file the process opens for writing, renames or
# deletes under the output folder, so a test can tell which rank wrote what.
AUDIT = """
import atexit, os, re, sys
_folder, _log = os.environ["AUDIT_FOLDER"], os.environ["AUDIT_LOG"] + "-" + os.environ.get("RANK", "x")
_seen = []
def _hook(event, args):
    if event in ("open", "os.rename", "os.remove") and args and isinstance(args[0], (str, os.PathLike)):
        path = os.path.abspath(os.fspath(args[1] if event == "os.rename" else args[0]))
        writes = event != "open" or (isinstance(args[1], str) and any(c in args[1] for c in "wax+"))
        name = os.path.basename(path)
        # The script's own records (<scenario>-rank<r>.pt, and a hand-saved file) are not kerasish's writes.
        if writes and path.startswith(_folder) and not re.search(r"-rank\\d\\.pt$|^prefixed\\.pt$", name):
            _seen.append(f"{event} {name}")
sys.addaudithook(_hook)
@atexit.register
def _dump():
    with open(_log, "w") as f:
        f.write("\\n".join(_seen))
"""


def _script_module():
    spec = importlib.util.spec_from_file_location("ddp_digits", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torchrun(folder: Path, logs: Path, scenarios: tuple[str, ...], env: dict[str, str]) -> None:
    launch([str(SCRIPT), str(folder), *scenarios], logs=logs, env=env, timeout=LAUNCH_TIMEOUT)


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> Path:
    """The output folder of both launches; ``logs/`` holds each launch's per-rank stdout, ``audit-*`` its writes."""
    folder = tmp_path_factory.mktemp("ddp").resolve()
    hooks = folder / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(AUDIT)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(hooks), str(SCRIPT.parents[2])]),
        "OMP_NUM_THREADS": "1",
        "AUDIT_FOLDER": str(folder / "out"),
    }
    (folder / "out").mkdir()
    torchrun(folder / "out", folder / "logs-first", FIRST_LAUNCH, {**env, "AUDIT_LOG": str(folder / "audit-first")})
    torchrun(folder / "out", folder / "logs-resume", ("resume",), {**env, "AUDIT_LOG": str(folder / "audit-resume")})
    return folder


def record(launched: Path, name: str, rank: int) -> dict:
    return torch.load(launched / "out" / f"{name}-rank{rank}.pt", weights_only=False)


def one_process(scenario: str, tmp_path: Path, name: str) -> dict:
    """The scenario in this process, without distribution, with batches of 32: the 2-process run's global batch."""
    getattr(_script_module(), scenario)(tmp_path, batch_size=32, strategy=None)
    return torch.load(tmp_path / f"{name}-rank0.pt", weights_only=False)


def assert_same_weights(first: dict, second: dict, atol: float = 0.0) -> None:
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=atol, msg=key)


def assert_close_history(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for column in first:
        assert first[column] == pytest.approx(second[column], rel=HISTORY_TOLERANCE, abs=HISTORY_TOLERANCE), column


@pytest.mark.parametrize(
    "name", ["parity", "early", "one_rank_stop", "accumulate", "wrapped", "batchnorm", "whole", "resumed"]
)
def test_both_ranks_record_the_same_history_and_weights(launched, name):
    first, second = record(launched, name, 0), record(launched, name, 1)
    assert first["world_size"] == second["world_size"] == 2
    assert first["history"] == second["history"]
    assert first["time"] == second["time"]  # the slowest rank's pass times, reduced with the sums
    assert_same_weights(first["weights"], second["weights"])


def test_history_evaluate_and_predict_equal_one_process_with_the_same_global_batch(launched, tmp_path):
    distributed, reference = record(launched, "parity", 0), one_process("parity", tmp_path, "parity")
    assert distributed["history"]["epoch"] == [1, 2, 3, 4]
    assert_close_history(distributed["history"], reference["history"])
    assert distributed["evaluate"] == pytest.approx(reference["evaluate"], rel=HISTORY_TOLERANCE)
    assert distributed["predict"].shape == (397, 10)  # every val sample once, in order, on every rank
    torch.testing.assert_close(distributed["predict"], reference["predict"], rtol=1e-4, atol=1e-5)
    assert_same_weights(distributed["weights"], reference["weights"], atol=1e-5)


def test_val_accuracy_counts_each_of_the_397_samples_once(launched):
    # DistributedSampler would pad 397 samples to 398 with a repeat; each epoch's val_acc is a count out of 397.
    for value in record(launched, "parity", 1)["history"]["val_acc"]:
        assert value * 397 == pytest.approx(round(value * 397), abs=1e-3)
        assert value * 398 != pytest.approx(round(value * 398), abs=1e-3)


def test_each_epoch_the_ranks_shuffled_shards_cover_the_train_set_once(launched):
    reads = [record(launched, "shuffled", rank)["read"] for rank in (0, 1)]
    epochs = [[read[epoch * 700 : (epoch + 1) * 700] for read in reads] for epoch in (0, 1)]
    for first, second in epochs:
        assert sorted(first + second) == list(range(1400))  # one seed for both ranks: disjoint halves
    assert epochs[0][0] != epochs[1][0] and sorted(epochs[0][0]) != sorted(epochs[1][0])  # reshuffled per epoch


def test_accumulation_with_a_short_last_window_equals_one_process(launched, tmp_path):
    distributed, reference = record(launched, "accumulate", 1), one_process("accumulate", tmp_path, "accumulate")
    assert_close_history(distributed["history"], reference["history"])
    assert_same_weights(distributed["weights"], reference["weights"], atol=1e-5)
    # 44 batches a pass: DDP all-reduces only the last micro-batch of each of the 14 full windows (no_sync before
    # it); the short window's gradients are averaged once at the pass's end, outside DDP's hook. Two epochs.
    assert distributed["all_reduces"] == 2 * 14


def test_early_stopping_and_a_stop_asked_for_by_one_rank_end_every_rank_at_the_same_epoch(launched):
    for rank in (0, 1):
        # val_acc can never beat epoch 1's by 0.5: patience 2 ends the fit at epoch 3.
        assert record(launched, "early", rank)["history"]["epoch"] == [1, 2, 3]
        # Rank 1 alone asked, in a batch hook of epoch 2: both ranks finished that epoch's passes, then stopped.
        assert record(launched, "one_rank_stop", rank)["history"]["epoch"] == [1, 2]


def test_only_rank_0_prints_and_writes_files(launched):
    first = sorted(launched.glob("audit-first-*"))
    writes = {path.name[-1]: set(path.read_text().split("\n")) - {""} for path in first}
    assert writes["1"] == set()
    written = {line.split()[-1] for line in writes["0"]}
    assert {"best.pt", "history.csv", "state.pt", "run_state.pt", "wrapped_best.pt", "epoch03.pt"} <= written
    assert "os.remove epoch01.pt" in writes["0"]  # keep_last's rotation, by rank 0 alone
    stdout = rank_outputs(launched / "logs-first")
    assert "epoch 4/4  train_loss=" in stdout["0"] and "restored the weights of epoch 4" in stdout["0"]
    assert stdout["1"] == ""


def test_files_hold_the_shared_history_and_plain_weight_names(launched):
    out, history = launched / "out", record(launched, "parity", 0)["history"]
    with open(out / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(row["val_loss"]) for row in rows] == history["val_loss"]
    best = torch.load(out / "best.pt", weights_only=True)
    assert not any(key.startswith("module.") for key in best)
    # The best epoch (the last, val_loss still falling) is back in both ranks' nets and in the checkpoint.
    for rank in (0, 1):
        assert_same_weights(best, record(launched, "parity", rank)["weights"])
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["ranks"]) == 2 and state["epoch"] == 4


def test_a_net_wrapped_by_hand_is_used_as_it_is_and_saves_plain_names(launched):
    wrapped = record(launched, "wrapped", 0)
    assert wrapped["step_net_is_users"] == "DistributedDataParallel"
    saved = torch.load(launched / "out" / "wrapped_best.pt", weights_only=True)
    assert list(saved) == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert_same_weights(saved, wrapped["weights"])  # and load_ckpt took the module.-prefixed file


def test_bad_input_raises_the_same_clear_error_on_every_rank_before_any_step(launched):
    first, second = record(launched, "refused", 0), record(launched, "refused", 1)
    assert first["errors"] == second["errors"]
    read, sampler = first["errors"]
    assert "best.pt' is not a kerasish training state: it holds a dict with keys" in read  # read by rank 0 alone
    assert sampler.startswith("train_data has a custom WeightedRandomSampler, which kerasish cannot shard across 2")
    assert first["history"] == {}  # no fit began
    untrained = _script_module().build(strategy=None).net.state_dict()
    assert_same_weights(first["weights"], untrained)  # neither fit took a step


def test_resume_under_torchrun_ends_as_the_uninterrupted_run(launched):
    assert record(launched, "cut", 0)["history"]["epoch"] == [1, 2, 3]
    for rank in (0, 1):
        whole, resumed = record(launched, "whole", rank), record(launched, "resumed", rank)
        assert resumed["history"] == whole["history"]
        assert_same_weights(resumed["weights"], whole["weights"])
        assert resumed["written"] == whole["written"]
        assert resumed["evaluate"] == whole["evaluate"]
    # Each rank resumed its own dropout stream: the two ranks' saved random states differ.
    state = torch.load(launched / "out" / "run_state.pt", weights_only=True)
    assert not torch.equal(state["ranks"][0]["rng"]["torch"], state["ranks"][1]["rng"]["torch"])


def test_resuming_on_another_number_of_processes_is_an_error(launched, tmp_path):
    state = tmp_path / "state.pt"
    state.write_bytes((launched / "out" / "run_state.pt").read_bytes())
    model = KerasModel(nn.Linear(3, 1), nn.MSELoss(), device="cpu")
    with pytest.raises(ValueError, match=r"trained on 2 process\(es\) and this fit runs on 1; resume with the same"):
        model.fit(regression_batches(), epochs=5, state_path=state, resume=True, verbose=0)


# --- the strategy's rules, in this process ---------------------------------------------------------------------


@pytest.fixture
def group():
    """A 1-process gloo group, as an initialised torchrun process would have; destroyed after the test."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def digits_like(n: int = 10) -> TensorDataset:
    return TensorDataset(torch.randn(n, 3), torch.randn(n, 1))


ENDS_IN_A_COLLECTIVE = """
import torch
from torch import nn
from kerasish import KerasModel
torch.manual_seed(0)
x = torch.randn(64, 4)
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, (x.sum(1) > 0).long()), batch_size=16)
net = nn.Linear(4, 2)
model = KerasModel(net, loss_fn=nn.CrossEntropyLoss(), optimizer=torch.optim.SGD(net.parameters(), lr=0.1))
model.fit(loader, loader, epochs=1, verbose=0)
model.evaluate(loader, verbose=0)
"""


def test_a_script_whose_last_line_is_a_collective_exits_cleanly(tmp_path):
    # gloo frees the last gather's tensors on its own threads, after evaluate returns; at interpreter exit that used
    # to abort a rank (SIGABRT) in more than half the runs of this script. Two launches catch most regressions.
    script = tmp_path / "ends_in_evaluate.py"
    script.write_text(ENDS_IN_A_COLLECTIVE)
    for attempt in range(2):
        launch([str(script)], logs=tmp_path / f"logs-{attempt}", timeout=LAUNCH_TIMEOUT)


def test_one_process_goes_through_the_base_strategy_that_does_nothing():
    model = KerasModel(nn.Linear(3, 1), nn.MSELoss(), device="cpu")
    assert type(model.strategy) is Strategy
    assert (model.rank, model.world_size, model.is_main_process) == (0, 1, True)
    assert model.step_net is model.net and model.eval_net is model.net
    loader = DataLoader(digits_like(), batch_size=4)
    assert model.strategy.train_loader(loader) is loader


def test_auto_uses_an_initialised_process_group_and_wraps_the_net_once(group):
    net = nn.Linear(3, 1)
    model = KerasModel(net, nn.MSELoss(), device="cpu", ddp_kwargs={"find_unused_parameters": True})
    assert isinstance(model.strategy, DataParallel)
    assert model.net is net and isinstance(model.step_net, DistributedDataParallel) and model.eval_net is net
    assert model.step_net.find_unused_parameters
    history = model.fit(DataLoader(digits_like(), batch_size=4), epochs=2, verbose=0)
    assert list(history["epoch"]) == [1, 2] and list(model.net.state_dict()) == ["weight", "bias"]


def test_strategy_none_never_distributes_and_its_metrics_never_sync(group):
    from torchmetrics.regression import MeanSquaredError

    model = KerasModel(nn.Linear(3, 1), nn.MSELoss(), {"mse": MeanSquaredError()}, device="cpu", strategy=None)
    assert type(model.strategy) is Strategy and model.step_net is model.net
    runner = model._epoch_runner("val", CallbackList(), verbose=0)
    assert runner.step_runner.metrics.stateful["mse"].sync_on_compute is False
    with pytest.raises(ValueError, match=r"net is a DistributedDataParallel but strategy=None trains in one process"):
        KerasModel(DistributedDataParallel(nn.Linear(3, 1)), nn.MSELoss(), device="cpu", strategy=None)


def test_ddp_without_torchrun_or_a_group_says_what_is_missing(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(
        RuntimeError, match=r"strategy='ddp' needs several processes, but no process group .* lacks RANK"
    ):
        KerasModel(nn.Linear(3, 1), nn.MSELoss(), device="cpu", strategy="ddp")
    assert type(KerasModel(nn.Linear(3, 1), device="cpu").strategy) is Strategy  # "auto" falls back to one process


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"strategy": "fsdp"}, ValueError, r"strategy='fsdp' is not valid; use 'auto' .*'ddp' .* or None"),
        ({"ddp_kwargs": ["static_graph"]}, TypeError, r"ddp_kwargs=\['static_graph'\] is not valid; use a dict"),
        ({"ddp_kwargs": {"device_ids": [0]}}, ValueError, r"ddp_kwargs\['device_ids'\] is set by kerasish"),
        (
            {"ddp_kwargs": {"find_unused": True}},
            ValueError,
            r"\['find_unused'\] is not an argument of Distrib.*valid: .*find_unused_parameters",
        ),
    ],
)
def test_bad_strategy_arguments_fail_before_any_process_group(kwargs, error, match):
    with pytest.raises(error, match=match):
        KerasModel(nn.Linear(3, 1), device="cpu", **kwargs)
    assert not dist.is_initialized()


def test_train_loaders_are_sharded_keeping_their_settings(group):
    model = KerasModel(nn.Linear(3, 1), nn.MSELoss(), device="cpu")
    generator = torch.Generator().manual_seed(7)
    loader = DataLoader(digits_like(11), batch_size=4, shuffle=True, drop_last=True, generator=generator)
    sharded = model.strategy.train_loader(loader)
    sampler = sharded.sampler
    assert type(sampler).__name__ == "DistributedSampler"
    assert (sampler.shuffle, sampler.seed, sampler.drop_last, sampler.num_replicas) == (True, 7, True, 1)
    assert (sharded.batch_size, sharded.drop_last, sharded.generator) == (4, True, generator)
    own = DataLoader(digits_like(11), sampler=torch.utils.data.DistributedSampler(digits_like(11)))
    assert model.strategy.train_loader(own) is own
    batches = regression_batches()
    assert model.strategy.train_loader(batches) is batches  # not a DataLoader: the user's to shard


class Indexed(TensorDataset):
    """Records the index of every sample read, in order."""

    def __init__(self, n: int) -> None:
        super().__init__(torch.randn(n, 3), torch.randn(n, 1))
        self.read: list[int] = []

    def __getitem__(self, index):
        self.read.append(int(index))
        return super().__getitem__(index)


def test_each_epoch_reshuffles_by_seed_and_epoch_as_a_resumed_run_would(group):
    data = Indexed(12)
    loader = DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(7))
    KerasModel(nn.Linear(3, 1), nn.MSELoss(), device="cpu").fit(loader, epochs=3, verbose=0)
    expected = []
    for epoch in (1, 2, 3):
        sampler = torch.utils.data.DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=7)
        sampler.set_epoch(epoch)
        expected += list(sampler)
    assert data.read == expected
    assert data.read[:12] != data.read[12:24]


def test_an_iterable_dataset_is_used_as_given(group):
    class Stream(IterableDataset):
        def __iter__(self):
            return iter(digits_like(8))

    model = KerasModel(nn.Linear(3, 1), nn.MSELoss(), device="cpu")
    loader = DataLoader(Stream(), batch_size=4)
    assert model.strategy.train_loader(loader) is loader
    assert model.strategy.eval_loader(loader) == (loader, False)


def test_a_custom_sampler_is_a_clear_error_not_a_silent_swap(group):
    model = KerasModel(nn.Linear(3, 1), nn.MSELoss(), device="cpu")
    weights = WeightedRandomSampler(torch.ones(10), num_samples=10)
    loader = DataLoader(digits_like(), batch_size=4, sampler=weights)
    with pytest.raises(ValueError, match=r"train_data has a custom WeightedRandomSampler, which kerasish cannot shard"):
        model.fit(loader, epochs=1, verbose=0)
    assert model.history.empty

    class MyLoader(DataLoader):
        pass

    with pytest.raises(ValueError, match=r"data is a MyLoader, a DataLoader subclass kerasish cannot rebuild"):
        model.evaluate(MyLoader(digits_like(), batch_size=4))


@pytest.mark.parametrize("size", [0, 1, 5, 8, 13])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_contiguous_shards_cover_every_index_once_in_order(size, world_size):
    shards = [list(ContiguousShard(size, rank, world_size)) for rank in range(world_size)]
    assert list(itertools.chain(*shards)) == list(range(size))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [len(ContiguousShard(size, rank, world_size)) for rank in range(world_size)] == list(map(len, shards))


def test_load_ckpt_takes_files_with_a_wrappers_prefix(tmp_path):
    source, target = nn.Linear(3, 2), nn.Linear(3, 2)
    torch.save({f"module.{key}": value for key, value in source.state_dict().items()}, tmp_path / "ddp.pt")
    model = KerasModel(target, device="cpu")
    model.load_ckpt(tmp_path / "ddp.pt")
    assert_same_weights(target.state_dict(), source.state_dict())
    with pytest.raises(RuntimeError, match="Missing key"):
        model.load_ckpt(_save({"module.other": torch.zeros(1)}, tmp_path / "other.pt"))


def _save(state: dict, path: Path) -> Path:
    torch.save(state, path)
    return path


def test_under_torchrun_on_gpus_each_process_takes_cuda_local_rank(monkeypatch):
    from kerasish import distributed

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)  # so MPS is refused as MPS, not as absent
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert distributed._ddp_device(None, 3) == torch.device("cuda", 3)
    assert distributed._ddp_device("cuda", 1) == torch.device("cuda", 1)
    assert distributed._ddp_device("cuda:0", 1) == torch.device("cuda", 0)  # an index given is kept
    assert distributed._ddp_device("cpu", 1) == torch.device("cpu")
    monkeypatch.setenv("LOCAL_RANK", "2")  # independent workers (strategy=None) under torchrun
    assert distributed._worker_device(None) == torch.device("cuda", 2)
    assert chosen == [
        torch.device("cuda", 3),
        torch.device("cuda", 1),
        torch.device("cuda", 0),
        torch.device("cuda", 2),
    ]
    with pytest.raises(ValueError, match=r"device='mps': MPS has no multi-process backend"):
        distributed._ddp_device("mps", 0)
