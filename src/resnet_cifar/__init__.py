"""resnet_cifar: He et al. 2016 ResNets on CIFAR-10, small enough to read in one sitting.

models.py  the networks (Sec. 4.2)        data.py   CIFAR-10, split, mean, augmentation
train.py   TrainConfig, train, evaluate    analysis.py  param/FLOP tables and figures
"""
from .data import CIFAR10, DataError, Normalizer, augment, load_cifar10, resolve_data_dir, train_val_split
from .models import build_model, count_parameters, plain, resnet, resnet34_imagenet
from .train import RunError, RunResult, TrainConfig, evaluate, load_run, lr_at, train

__all__ = ["CIFAR10", "DataError", "Normalizer", "augment", "load_cifar10", "resolve_data_dir",
           "train_val_split", "build_model", "count_parameters", "plain", "resnet", "resnet34_imagenet",
           "RunError", "RunResult", "TrainConfig", "evaluate", "load_run", "lr_at", "train"]
__version__ = "0.1.0"
