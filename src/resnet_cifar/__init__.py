"""resnet_cifar: He et al. 2016 ResNets on CIFAR-10, small enough to read in one sitting.
Train with `from resnet_cifar.train import train`; the module map is in the book's manual page."""
from .config import TrainConfig, lr_at
from .data import (CIFAR10, DataError, Normalizer, augment, load_cifar10, prepare_data,
                   resolve_data_dir, train_val_split)
from .models import build_model, count_parameters, flop_count, plain, resnet, resnet34_imagenet
from .runs import RunError, RunResult, load_run

__all__ = ["TrainConfig", "lr_at", "CIFAR10", "DataError", "Normalizer", "augment", "load_cifar10",
           "prepare_data", "resolve_data_dir", "train_val_split", "build_model", "count_parameters",
           "flop_count", "plain", "resnet", "resnet34_imagenet", "RunError", "RunResult",
           "load_run"]
__version__ = "0.1.0"
