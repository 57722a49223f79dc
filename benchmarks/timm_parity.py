"""bit_tf against the real timm: bit_tf's timm files in timm, timm's files in bit_tf, same outputs.

Not part of the test suite (it needs PyTorch and timm beside bit_tf, e.g. in a throw-away
environment: `pip install torch timm`). On CPU, in float32, with relative errors as the tests
measure them (max abs difference over max abs reference):

1. the R14x1 fixture (../shared/fixtures), written by `bit_tf.save_timm_weights`, loaded into
   timm's ResNetV2 as timm builds BiT (`_create_resnetv2_bit`: fixed stem padding, StdConv2d with
   epsilon 1e-8), against the authors' reference outputs;
2. BiT-M-R50x1 with random weights and a 5-class head, written by `save_timm_weights`, loaded by
   `timm.create_model("local-dir:<folder>", pretrained=True)` and by
   `timm.create_model("resnetv2_50x1_bit", pretrained=True, pretrained_cfg_overlay=...)`,
   against bit_tf's logits for the same images;
3. timm's resnetv2_50x1_bit (random weights, 7 classes) written by timm (`save_for_hf`,
   safetensors), read by bit_tf (`weights=".../model.safetensors"`), against timm's logits;
4. the size of timm's epsilon: timm's logits with epsilon 1e-8 against the same model with the
   authors' 1e-10.

    python benchmarks/timm_parity.py

Writes benchmarks/results/<UTC time>-timm-parity.json (`--results_dir=` for none).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.environ.get(
    "BIT_TF_FIXTURES", os.path.join(os.path.dirname(REPOSITORY), "shared", "fixtures")
)


def relative_error(actual, expected) -> float:
    import numpy as np

    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def to_torch(images):
    """NHWC images in [0, 1] as timm's BiT configuration feeds them: NCHW, mean = std = 0.5."""
    import torch

    return (torch.from_numpy(images).permute(0, 3, 1, 2) - 0.5) / 0.5


def set_epsilon(model, epsilon: float) -> None:
    from timm.layers import StdConv2d

    for module in model.modules():
        if isinstance(module, StdConv2d):
            module.eps = epsilon


def fixture_in_timm(folder: str) -> dict:
    """Check 1: the authors' R14x1 fixture through bit_tf's timm file, in timm's model."""
    import numpy as np
    import torch
    from safetensors.torch import load_file
    from timm.layers import StdConv2d
    from timm.models.resnetv2 import ResNetV2

    import bit_tf
    from bit_tf.models.resnet_v2 import resnet_v2

    model = resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=10)
    bit_tf.load_official_weights(model, os.path.join(FIXTURES, "bit_r14x1_official.npz"))
    path = bit_tf.save_timm_weights(model, os.path.join(folder, "r14x1"))
    with np.load(os.path.join(FIXTURES, "bit_r14x1_reference_outputs.npz")) as reference:
        images, logits, features = reference["images"], reference["logits"], reference["features"]
    timm_model = ResNetV2(
        layers=[1, 1, 1, 1],
        num_classes=10,
        stem_type="fixed",
        conv_layer=functools.partial(StdConv2d, eps=1e-8),
    ).eval()
    timm_model.load_state_dict(load_file(path), strict=True)
    with torch.no_grad():
        inputs = to_torch(images)
        timm_logits = timm_model(inputs).numpy()
        pooled = timm_model.forward_head(timm_model.forward_features(inputs), pre_logits=True)
        set_epsilon(timm_model, 1e-10)
        timm_logits_authors_epsilon = timm_model(inputs).numpy()
    return {
        "logits_vs_reference": relative_error(timm_logits, logits),
        "features_vs_reference": relative_error(pooled.numpy(), features),
        "logits_vs_reference_epsilon_1e-10": relative_error(timm_logits_authors_epsilon, logits),
    }


def bit_tf_files_in_timm(folder: str, images) -> dict:
    """Check 2 and 4: BiT-M-R50x1 written by bit_tf, loaded by timm.create_model."""
    import keras
    import numpy as np
    import timm
    import torch

    import bit_tf
    from bit_tf.models.weights import official_arrays

    rng = np.random.default_rng(0)
    model = bit_tf.create_model("BiT-M-R50x1", num_classes=5)
    head = model.get_layer("head")
    head.kernel.assign(rng.normal(0, 0.05, head.kernel.shape).astype("float32"))
    head.bias.assign(rng.normal(0, 0.05, head.bias.shape).astype("float32"))
    bit_logits = keras.ops.convert_to_numpy(model(images))
    export = os.path.join(folder, "r50x1")
    path = bit_tf.save_timm_weights(model, export)
    variances = np.concatenate(
        [
            array.reshape(-1, array.shape[-1]).var(axis=0)
            for key, array in official_arrays(model).items()
            if array.ndim == 4 and "head" not in key
        ]
    )
    with torch.no_grad():
        local_dir = timm.create_model(f"local-dir:{export}", pretrained=True).eval()
        overlay = dict(file=path, custom_load=False, num_classes=5)
        by_file = timm.create_model(
            "resnetv2_50x1_bit", pretrained=True, num_classes=5, pretrained_cfg_overlay=overlay
        ).eval()
        inputs = to_torch(images)
        local_dir_logits = local_dir(inputs).numpy()
        by_file_logits = by_file(inputs).numpy()
        set_epsilon(local_dir, 1e-10)
        authors_epsilon_logits = local_dir(inputs).numpy()
    return {
        "local_dir_vs_bit_tf": relative_error(local_dir_logits, bit_logits),
        "pretrained_cfg_overlay_vs_bit_tf": relative_error(by_file_logits, bit_logits),
        "timm_with_epsilon_1e-10_vs_bit_tf": relative_error(authors_epsilon_logits, bit_logits),
        "timm_epsilon_1e-8_vs_1e-10": relative_error(local_dir_logits, authors_epsilon_logits),
        "kernel_variance_min": float(variances.min()),
        "kernel_variance_median": float(np.median(variances)),
    }


def timm_files_in_bit_tf(folder: str, images) -> dict:
    """Check 3: timm's resnetv2_50x1_bit written by timm, read by bit_tf."""
    import keras
    import timm
    import torch
    from timm.models._hub import save_for_hf

    from bit_cli import common

    torch.manual_seed(0)
    timm_model = timm.create_model("resnetv2_50x1_bit", pretrained=False, num_classes=7).eval()
    torch.nn.init.normal_(timm_model.head.fc.weight, std=0.05)
    export = os.path.join(folder, "written_by_timm")
    save_for_hf(timm_model, export, safe_serialization=True)
    with torch.no_grad():
        timm_logits = timm_model(to_torch(images)).numpy()
    model = common.build_model("", os.path.join(export, "model.safetensors"))
    return {
        "bit_tf_vs_timm": relative_error(keras.ops.convert_to_numpy(model(images)), timm_logits)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results_dir", default=None, help="'' for no data file")
    arguments = parser.parse_args()
    started = time.time()

    import harness
    import numpy as np

    images = np.random.default_rng(1).uniform(0, 1, (2, 224, 224, 3)).astype("float32")
    with tempfile.TemporaryDirectory() as folder:
        results = {
            "fixture_r14x1_in_timm": fixture_in_timm(folder),
            "bit_tf_r50x1_in_timm": bit_tf_files_in_timm(folder, images),
            "timm_r50x1_in_bit_tf": timm_files_in_bit_tf(folder, images),
        }
    for check, values in results.items():
        for name, value in values.items():
            print(f"{check}.{name}: {value:.3g}")
    run = {
        "schema": "bit_tf-timm-parity/1",
        "benchmark": (
            "relative errors between bit_tf and timm, CPU float32: the R14x1 fixture against the "
            "authors' outputs in timm; BiT-M-R50x1 (random weights, 5 classes, 2 images "
            "224x224) written by bit_tf in timm; timm's resnetv2_50x1_bit (random, 7 classes) "
            "written by timm in bit_tf"
        ),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": harness.machine(),
        "versions": harness.versions(
            ("tensorflow", "keras", "numpy", "torch", "timm", "safetensors", "huggingface_hub")
        ),
        "git": harness.git_commit(),
        "results": results,
    }
    folder = arguments.results_dir
    if folder is None:
        folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    if folder:
        print("wrote", harness.write_results(folder, "timm-parity", run, started))


if __name__ == "__main__":
    main()
