"""Callbacks: hooks into ``fit``. Early stopping, best-weight restore and checkpointing are callbacks too."""

from kerasish.callbacks.base import Callback, CallbackList
from kerasish.callbacks.best_weights import BestWeights
from kerasish.callbacks.early_stopping import EarlyStopping
from kerasish.callbacks.model_checkpoint import ModelCheckpoint
from kerasish.callbacks.reduce_lr_on_plateau import ReduceLROnPlateau

__all__ = ["BestWeights", "Callback", "CallbackList", "EarlyStopping", "ModelCheckpoint", "ReduceLROnPlateau"]
