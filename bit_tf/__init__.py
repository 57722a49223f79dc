"""bit-tf: Big Transfer (BiT) for Keras 3 and TensorFlow.

The model code (`layers`, `models`, `weights`) needs only Keras, so it runs on the JAX backend
too; the TensorFlow-only parts (fine-tuning pipelines, pre-training, TF-Hub layers) are imported
on first use.

Example:
    >>> import bit_tf
    >>> model = bit_tf.create_model("BiT-M-R50x1", num_classes=10, weights="BiT-M-R50x1")
    >>> logits = model(images)  # float32 images in [0, 1], NHWC, any size
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
import types
import warnings


def _load_onednn() -> types.ModuleType:
    """`bit_tf.kernels.onednn`, loaded from its file without running `bit_tf.kernels`' __init__,
    which imports Keras (and with it TensorFlow) before the oneDNN switch below is set.

    `bit_tf.kernels` finds it in `sys.modules` when it is imported later.
    """
    name = f"{__name__}.kernels.onednn"
    path = os.path.join(os.path.dirname(__file__), "kernels", "onednn.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# TensorFlow turns its oneDNN kernels on by itself only on CPUs with AVX512_VNNI, AVX512_BF16,
# AVX_VNNI or AMX (bit_tf.kernels.onednn); on others (AVX2 machines such as AMD EPYC Zen 2/3)
# BiT trains about 4x faster with them. Set before Keras imports TensorFlow, with a warning where
# TensorFlow came first and left them off; an explicit TF_ENABLE_ONEDNN_OPTS always wins.
_onednn = _load_onednn()
if _onednn.too_late_to_enable():
    warnings.warn(_onednn.TOO_LATE, stacklevel=2)
os.environ.setdefault(_onednn.ENVIRONMENT_VARIABLE, "1")

# The module paths from before the modules were grouped by role (`bit_tf.hyperrule`, ...) import
# the modules that hold their code now.
from bit_tf._aliases import MOVED, MovedModuleFinder  # noqa: E402

if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.append(MovedModuleFinder())

# hyperrule registers the schedule that saved .keras files refer to.
from bit_tf.finetune import hyperrule  # noqa: E402
from bit_tf.models.create import create_model  # noqa: E402
from bit_tf.models.layers import (  # noqa: E402
    GroupNormalization,
    PreActBasic,
    PreActBottleneck,
    StandardizedConv2D,
)
from bit_tf.models.registry import list_models, list_released_checkpoints  # noqa: E402
from bit_tf.models.resnet_v2 import resnet_v2  # noqa: E402
from bit_tf.models.timm_weights import load_timm_weights, save_timm_weights  # noqa: E402
from bit_tf.models.weights import (  # noqa: E402
    CheckpointError,
    load_official_weights,
    save_official_weights,
)

# FusedMomentumSGD: registered for saved .keras files.
from bit_tf.training.optimizers import FusedMomentumSGD  # noqa: E402

__version__ = "0.1.0"

# Public names whose modules import TensorFlow: loaded lazily so that the model code runs
# on the JAX backend without TensorFlow installed.
_LAZY = {
    "finetune": "bit_tf.finetune",
    "distill": "bit_tf.distill",
    "HubLayer": "bit_tf.models.hub",
    "from_hub": "bit_tf.models.hub",
}


# The package's public submodules, by file name (no import needed to list them).
_SUBMODULES = frozenset(
    module.name for module in pkgutil.iter_modules(__path__) if not module.name.startswith("_")
)


# Submodules that are also their main function.
_CALLABLE = ("finetune", "distill")


class _CallableModule(types.ModuleType):
    """A submodule that is also its main function: `bit_tf.finetune(...)` calls
    `bit_tf.finetune.finetune(...)` (and `bit_tf.distill(...)` `bit_tf.distill.distill(...)`),
    however the submodule was imported first."""

    def __call__(self, *args, **kwargs):
        return getattr(self, self.__name__.rsplit(".", 1)[-1])(*args, **kwargs)


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        # The import system binds an imported submodule onto its package under the same
        # name as the function it is named after; make that module callable.
        if name in _CALLABLE and isinstance(value, types.ModuleType):
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
# Bound before the class was set: `bit_tf.finetune`, by the import of its hyperrule above.
for _name in _CALLABLE:
    if _name in globals():
        setattr(sys.modules[__name__], _name, globals()[_name])


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        return module if name in _CALLABLE else getattr(module, name)
    # Submodules too, on first use, as the docstrings write them: `bit_tf.data.from_arrays`,
    # and the old module paths: `bit_tf.hyperrule.get_schedule`.
    if name in _SUBMODULES or f"{__name__}.{name}" in MOVED:
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ImportError as error:  # e.g. TensorFlow missing on a JAX-only install
            raise AttributeError(
                f"module 'bit_tf' has no attribute {name!r}: bit_tf.{name} could not be "
                f"imported ({error})"
            ) from error
    raise AttributeError(f"module 'bit_tf' has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "FusedMomentumSGD",
    "GroupNormalization",
    "PreActBasic",
    "PreActBottleneck",
    "StandardizedConv2D",
    "create_model",
    "hyperrule",
    "list_models",
    "list_released_checkpoints",
    "load_official_weights",
    "load_timm_weights",
    "resnet_v2",
    "save_official_weights",
    "save_timm_weights",
    *_LAZY,
]
