"""The module paths of bit_tf before its modules were grouped by role, kept importable.

`MOVED` maps each old module name to the module that holds its code now; `MovedModuleFinder`,
on `sys.meta_path`, imports the new module when the old name is imported and registers it in
`sys.modules` under the old name too: one module object, reached by both names, so its public
names, its classes and its registered Keras objects are the same. `bit_tf.<old name>` as an
attribute goes through the same table (`bit_tf.__getattr__`).

Example:
    >>> import bit_tf.hyperrule  # the module bit_tf.finetune.hyperrule
    >>> from bit_tf.image_folder import scan_folder  # bit_tf.data.image_folder.scan_folder
    >>> bit_tf.vtab.run_vtab is bit_tf.evaluation.vtab.run_vtab
    True
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import types

#: Old module name -> new module name. `bit_tf.models`, `bit_tf.data`, `bit_tf.finetune`,
#: `bit_tf.distill` and `bit_tf.pretrain` are packages now, of the same names, which export what
#: the old modules did.
MOVED = {
    "bit_tf.archives": "bit_tf.models.archives",
    "bit_tf.bit_model": "bit_tf.models.bit_model",
    "bit_tf.class_names": "bit_tf.models.class_names",
    "bit_tf.download": "bit_tf.models.download",
    "bit_tf.download_progress": "bit_tf.models.download_progress",
    "bit_tf.file_kinds": "bit_tf.models.file_kinds",
    "bit_tf.hf_hub": "bit_tf.models.hf_hub",
    "bit_tf.hub": "bit_tf.models.hub",
    "bit_tf.inference": "bit_tf.models.inference",
    "bit_tf.input_scale": "bit_tf.models.input_scale",
    "bit_tf.layers": "bit_tf.models.layers",
    "bit_tf.noisy_batch_norm": "bit_tf.models.noisy_batch_norm",
    "bit_tf.npz_file": "bit_tf.models.npz_file",
    "bit_tf.registry": "bit_tf.models.registry",
    "bit_tf.timm_weights": "bit_tf.models.timm_weights",
    "bit_tf.weights": "bit_tf.models.weights",
    "bit_tf.onednn": "bit_tf.kernels.onednn",
    "bit_tf.encoded_cache": "bit_tf.data.encoded_cache",
    "bit_tf.example_order": "bit_tf.data.example_order",
    "bit_tf.example_readers": "bit_tf.data.example_readers",
    "bit_tf.image_bytes": "bit_tf.data.image_bytes",
    "bit_tf.image_folder": "bit_tf.data.image_folder",
    "bit_tf.image_integrity": "bit_tf.data.image_integrity",
    "bit_tf.mixup": "bit_tf.data.mixup",
    "bit_tf.orientation": "bit_tf.data.orientation",
    "bit_tf.file_errors": "bit_tf.training.file_errors",
    "bit_tf.finetune_checkpoints": "bit_tf.training.checkpoints",
    "bit_tf.interruption": "bit_tf.training.interruption",
    "bit_tf.micro_batch": "bit_tf.training.micro_batch",
    "bit_tf.optimizers": "bit_tf.training.optimizers",
    "bit_tf.run_lock": "bit_tf.training.run_lock",
    "bit_tf.run_settings": "bit_tf.training.run_settings",
    "bit_tf.hyperrule": "bit_tf.finetune.hyperrule",
    "bit_tf.distill_data": "bit_tf.distill.data",
    "bit_tf.distill_model": "bit_tf.distill.model",
    "bit_tf.distill_optimizer": "bit_tf.distill.optimizer",
    "bit_tf.distill_schedule": "bit_tf.distill.schedule",
    "bit_tf.pretrain_augment": "bit_tf.pretrain.augment",
    "bit_tf.pretrain_bad_images": "bit_tf.pretrain.bad_images",
    "bit_tf.pretrain_data": "bit_tf.pretrain.data",
    "bit_tf.pretrain_labels": "bit_tf.pretrain.labels",
    "bit_tf.pretrain_loop": "bit_tf.pretrain.loop",
    "bit_tf.pretrain_progress": "bit_tf.pretrain.progress",
    "bit_tf.pretrain_records": "bit_tf.pretrain.records",
    "bit_tf.pretrain_schedule": "bit_tf.pretrain.schedule",
    "bit_tf.pretrain_sources": "bit_tf.pretrain.sources",
    "bit_tf.pretrain_workers": "bit_tf.pretrain.workers",
    "bit_tf.vtab": "bit_tf.evaluation.vtab",
}


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old module names of `MOVED`; loading one imports the new module and registers
    it under the old name as well (the module keeps its own `__name__` and `__spec__`).

    Example:
        >>> import sys
        >>> sys.meta_path.append(MovedModuleFinder())
    """

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = importlib.import_module(MOVED[spec.name])
        # The import system sets `__spec__` to the old name's spec; exec_module puts this back.
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        module.__spec__ = module.__spec__.loader_state
