"""Callbacks: hooks into ``fit``. Early stopping, best-weight restore and checkpointing are callbacks too."""

from kerasish.callbacks.base import Callback, CallbackList
from kerasish.callbacks.best_weights import BestWeights
from kerasish.callbacks.csv_logger import CSVLogger
from kerasish.callbacks.early_stopping import EarlyStopping
from kerasish.callbacks.lambda_callback import LambdaCallback
from kerasish.callbacks.live_plot import LivePlot
from kerasish.callbacks.model_checkpoint import ModelCheckpoint
from kerasish.callbacks.reduce_lr_on_plateau import ReduceLROnPlateau
from kerasish.callbacks.tensorboard import TensorBoard
from kerasish.callbacks.terminate_on_nan import TerminateOnNaN

__all__ = [
    "BestWeights",
    "CSVLogger",
    "Callback",
    "CallbackList",
    "EarlyStopping",
    "LambdaCallback",
    "LivePlot",
    "ModelCheckpoint",
    "ReduceLROnPlateau",
    "TensorBoard",
    "TerminateOnNaN",
]
