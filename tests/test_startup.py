"""Start-up, in real subprocesses: bit_tf's oneDNN warning only where it is true, and the
command-line programs' first lines their own (no TensorFlow C++ log) unless the user asks."""

import os
import re
import subprocess
import sys

import pytest

from bit_tf.kernels import onednn

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# conftest.py sets TF_CPP_MIN_LOG_LEVEL, and its `import bit_tf` TF_ENABLE_ONEDNN_OPTS: a user
# who set neither starts without them.
USER_ENVIRONMENT = {
    name: value
    for name, value in os.environ.items()
    if name not in ("TF_CPP_MIN_LOG_LEVEL", onednn.ENVIRONMENT_VARIABLE)
}
USER_ENVIRONMENT["PYTHONPATH"] = REPOSITORY
# TensorFlow's own line where its oneDNN kernels are on (tensorflow/core/util/port.cc).
TENSORFLOW_ONEDNN_ON = "oneDNN custom operations are on"
# A line of TensorFlow's C++ log: "I0000 00:00:1796596192.695268    4437 port.cc:153] ...";
# the commands' own absl lines name a .py file instead.
NATIVE_LOG_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ [^\]\s]+\.(cc|h):\d+\] ", re.MULTILINE)
BEFORE_INITIALIZE_LOG = "All log messages before absl::InitializeLog() is called"
SCRIPTS = ("bit-finetune", "bit-export", "bit-pretrain", "bit-vtab")


def python(code: str, **environment: str) -> subprocess.CompletedProcess:
    """Runs `python -c code` as a user would, with these environment variables added."""
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**USER_ENVIRONMENT, **environment},
        capture_output=True,
        text=True,
        timeout=300,
    )


def console_script(name: str) -> str:
    """The installed console script `name`, next to this Python (pip install -e . puts it there)."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    if not os.path.exists(path):
        pytest.skip(f"{path} is not installed (pip install -e .)")
    return path


# --- bit_tf.kernels.onednn: TensorFlow's rule, from CPU features given as arguments -------------


@pytest.mark.parametrize("feature", sorted(onednn.X86_FEATURES))
def test_any_one_neural_network_feature_turns_onednn_on_on_x86(feature):
    assert onednn.default_for({"sse4_2", "avx2", "fma", feature}, machine="x86_64") is True


@pytest.mark.parametrize(
    "features",
    [
        {"sse4_2", "avx", "avx2", "fma"},  # AMD Zen 2 and 3, Intel Haswell to Comet Lake
        {"avx2", "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"},  # Skylake-SP
        {"avx512_fp16", "avx_vnni_int8", "amx_fp16"},  # features TensorFlow's rule does not test
        set(),
    ],
)
def test_onednn_stays_off_on_x86_without_them(features):
    assert onednn.default_for(features, machine="x86_64") is False


def test_arm64_turns_onednn_on_for_neoverse_v1_only():
    assert onednn.default_for({"asimd", "bf16", onednn.NEOVERSE_V1}, machine="aarch64") is True
    assert onednn.default_for({"asimd", "bf16", "sve"}, machine="aarch64") is False
    assert onednn.default_for({"avx512_vnni"}, machine="aarch64") is False


def test_other_architectures_are_unknown():
    assert onednn.default_for({"avx512_vnni"}, machine="ppc64le") is None


def test_cpu_features_reads_the_first_processor_of_cpuinfo():
    x86 = (
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 AVX512_BF16\n\n"
        "processor\t: 1\nflags\t\t: fpu amx_tile\n"
    )
    assert onednn.cpu_features(x86) == {"fpu", "avx2", "avx512_bf16"}
    neoverse_v1 = (
        "processor\t: 0\nFeatures\t: fp asimd sve bf16\nCPU implementer\t: 0x41\n"
        "CPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: 0xd40\n"
    )
    assert onednn.cpu_features(neoverse_v1) == {"fp", "asimd", "sve", "bf16", onednn.NEOVERSE_V1}
    neoverse_n1 = neoverse_v1.replace("0xd40", "0xd0c")
    assert onednn.NEOVERSE_V1 not in onednn.cpu_features(neoverse_n1)


# --- bit_tf imported after TensorFlow, as `import keras; import bit_tf` does ------------------


@pytest.fixture(scope="module")
def keras_then_bit_tf() -> subprocess.CompletedProcess:
    """`import keras; import bit_tf` with TensorFlow's full log, and bit_tf's decision on stdout."""
    result = python(
        "import keras; import bit_tf; print(bit_tf.kernels.onednn.tensorflow_default())",
        TF_CPP_MIN_LOG_LEVEL="0",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_tensorflow_default_agrees_with_tensorflows_own_log(keras_then_bit_tf):
    decision = keras_then_bit_tf.stdout.split()[-1]
    if decision == "None":
        pytest.skip("TensorFlow's oneDNN default is not known on this platform")
    tensorflow_turned_it_on = TENSORFLOW_ONEDNN_ON in keras_then_bit_tf.stderr
    assert decision == str(tensorflow_turned_it_on), keras_then_bit_tf.stderr[-3000:]


def test_late_import_warns_only_where_tensorflow_left_onednn_off(keras_then_bit_tf):
    # On a CPU where TensorFlow turns oneDNN on by itself (AVX512_VNNI, AVX512_BF16, AVX_VNNI,
    # AMX), importing bit_tf after Keras lost nothing: no warning.
    warned = "bit_tf could not turn them on" in keras_then_bit_tf.stderr
    assert warned == (onednn.tensorflow_default() is False), keras_then_bit_tf.stderr[-3000:]


def test_an_explicit_setting_is_kept_and_never_warned_about():
    result = python(
        "import warnings; warnings.filterwarnings('error', 'TensorFlow was imported before')\n"
        "import tensorflow, bit_tf, os; print(os.environ['TF_ENABLE_ONEDNN_OPTS'])",
        TF_ENABLE_ONEDNN_OPTS="0",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == "0"


# --- the command-line programs ------------------------------------------------------------------


def test_console_scripts_start_with_their_own_lines():
    processes = {  # all four at once: each run is mostly TensorFlow's import
        name: subprocess.Popen(
            [console_script(name), "--help"],
            env=USER_ENVIRONMENT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in SCRIPTS
    }
    for name, process in processes.items():
        output, errors = process.communicate(timeout=300)
        assert output.startswith(f"{name}: "), (name, output[:300], errors[-3000:])
        assert not NATIVE_LOG_LINE.search(errors), (name, errors[-3000:])
        assert BEFORE_INITIALIZE_LOG not in errors, (name, errors[-3000:])


def test_a_users_log_level_is_kept():
    result = subprocess.run(
        [console_script("bit-finetune"), "--help"],
        env={**USER_ENVIRONMENT, "TF_CPP_MIN_LOG_LEVEL": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.stdout.startswith("bit-finetune: "), result.stderr[-3000:]
    assert NATIVE_LOG_LINE.search(result.stderr), result.stderr[-3000:]


def test_lines_logged_while_loading_are_held_to_the_level_and_all_else_passes():
    code = (
        "import os, sys\n"
        "from bit_cli import native_log_level_while_loading\n"
        "with native_log_level_while_loading(3):\n"
        "    os.write(2, b'I0000 00:00:1.5    7 port.cc:153] info\\n')\n"
        "    os.write(2, b'E0000 00:00:1.5    7 cuda_platform.cc:52] error\\n')\n"
        "    os.write(2, b'F0000 00:00:1.5    7 cpu_feature_guard.cc:1] fatal\\n')\n"
        "    print('a Python warning', file=sys.stderr)\n"
        "    os.write(2, b'another program\\n')\n"
        "print('after', file=sys.stderr)\n"
    )
    result = python(code, TF_CPP_MIN_LOG_LEVEL="3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.splitlines() == [
        "F0000 00:00:1.5    7 cpu_feature_guard.cc:1] fatal",
        "a Python warning",
        "another program",
        "after",
    ]


@pytest.mark.slow
def test_a_short_run_prints_only_its_own_lines(tmp_path):
    # A run, not only --help: a CUDA build of TensorFlow without a GPU logs an error at the
    # first operation ("failed call to cuInit"), which level 2 would still show.
    result = subprocess.run(
        [
            console_script("bit-finetune"),
            "--steps=1",
            "--batch_size=8",
            "--resize=16",
            "--crop=16",
            f"--export_dir={tmp_path / 'out'}",
        ],
        env=USER_ENVIRONMENT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("train: "), result.stdout[:300]
    assert "final validation accuracy: " in result.stdout.splitlines()[-1]
    assert not NATIVE_LOG_LINE.search(result.stderr), result.stderr[-3000:]
    assert BEFORE_INITIALIZE_LOG not in result.stderr, result.stderr[-3000:]
