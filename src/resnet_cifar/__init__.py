"""resnet_cifar: He et al. 2016 ResNets on CIFAR-10, small enough to read in one sitting.

models.py   the networks (Sec. 4.2), parameter and FLOP counts
data.py     CIFAR-10, the 45k/5k split, per-pixel mean, batched augmentation on the device
config.py   TrainConfig: the paper's recipe as defaults; the learning-rate schedule
train.py    train(config) -> RunResult, train_step, evaluate
runs.py     run folders: records, reuse / resume, the lock
devices.py  device choice and names, numerics (TF32, bf16)

Train with `from resnet_cifar.train import train` (the module is `resnet_cifar.train`).
"""
from .config import TrainConfig, lr_at
from .data import CIFAR10, DataError, Normalizer, augment, load_cifar10, prepare_data, resolve_data_dir, train_val_split
from .models import build_model, count_parameters, flop_count, plain, resnet, resnet34_imagenet
from .runs import RunError, RunResult, load_run

__all__ = ["TrainConfig", "lr_at", "CIFAR10", "DataError", "Normalizer", "augment", "load_cifar10", "prepare_data",
           "resolve_data_dir", "train_val_split", "build_model", "count_parameters", "flop_count", "plain", "resnet",
           "resnet34_imagenet", "RunError", "RunResult", "load_run"]
__version__ = "0.1.0"
