"""kerasish: a Keras-style ``fit`` / ``evaluate`` / ``predict`` for PyTorch, written once and out of your way."""

from kerasish.callbacks import (
    BestWeights,
    Callback,
    CSVLogger,
    EarlyStopping,
    LambdaCallback,
    LivePlot,
    ModelCheckpoint,
    ReduceLROnPlateau,
    TensorBoard,
    TerminateOnNaN,
)
from kerasish.model import KerasModel
from kerasish.monitor import BestSoFar, Monitor
from kerasish.plotting import plot_history
from kerasish.runners import EpochRunner, StepRunner
from kerasish.seeding import seed_everything
from kerasish.summary import ModelSummary, summary

__version__ = "0.1.0"

__all__ = [
    "BestSoFar",
    "BestWeights",
    "CSVLogger",
    "Callback",
    "EarlyStopping",
    "EpochRunner",
    "KerasModel",
    "LambdaCallback",
    "LivePlot",
    "ModelCheckpoint",
    "ModelSummary",
    "Monitor",
    "ReduceLROnPlateau",
    "StepRunner",
    "TensorBoard",
    "TerminateOnNaN",
    "__version__",
    "plot_history",
    "seed_everything",
    "summary",
]
