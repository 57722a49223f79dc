"""bit-pretrain checks its flags before it starts: a value that cannot work ends the command with
one line naming it and status 2, and nothing is written."""

import os
import subprocess
import sys

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_wrong_values_end_in_one_line_with_status_2_and_write_nothing(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    data = tmp_path / "train-00000.tfrecord"
    data.write_bytes(b"")
    missing = tmp_path / "no" / "such" / "photos"
    module = tmp_path / "module"  # another run's TF-Hub module, to be kept
    module.mkdir()
    (module / "saved_model.pb").write_bytes(b"another run's")
    cases = {
        "hub_export_dir": (
            [f"--dataset={data}", f"--hub_export_dir={module}"],
            f"bit-pretrain: error: --hub_export_dir='{module}' already holds files, and "
            f"--checkpoint_dir='{tmp_path / 'hub_export_dir'}' holds no run that could have "
            "written them; choose another folder, or pass --overwrite to replace them.",
        ),
        "dataset": (
            [f"--dataset={missing}"],
            f"bit-pretrain: error: --dataset='{missing}': no such file or folder.",
        ),
        "glob": (
            [f"--dataset={tmp_path}/val-*"],
            f"bit-pretrain: error: --dataset='{tmp_path}/val-*': no files match.",
        ),
        "size": (
            [f"--dataset={data}", "--global_batch_size=0"],
            "bit-pretrain: error: --global_batch_size must be positive, got 0.",
        ),
        "kind": (
            [f"--dataset={data}", "--steps_per_loop=many"],
            "bit-pretrain: error: flag --steps_per_loop=many: invalid literal for int() with "
            "base 10: 'many'",
        ),
        "checkpoint_dir": (
            [f"--dataset={data}", f"--checkpoint_dir={a_file}/run"],
            f"bit-pretrain: error: --checkpoint_dir='{a_file}/run' is under the file {a_file}; "
            "give a folder (it is made if missing).",
        ),
    }
    environment = dict(os.environ, PYTHONPATH=REPOSITORY, TF_CPP_MIN_LOG_LEVEL="2")
    processes = {}
    for name, (flags, _) in cases.items():
        checkpoint_dir = [] if name == "checkpoint_dir" else [f"--checkpoint_dir={tmp_path / name}"]
        processes[name] = subprocess.Popen(
            [sys.executable, "-m", "bit_cli.pretrain", *checkpoint_dir, *flags],
            cwd=tmp_path,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 2, (name, stderr[-2000:])
        assert "Traceback" not in stderr, (name, stderr[-2000:])
        # Only the command's own line (TensorFlow may log that this machine has no GPU).
        lines = [line for line in stderr.splitlines() if line.startswith("bit-pretrain")]
        assert lines == [cases[name][1]], (name, stderr[-2000:])
        assert stdout == ""
        assert not (tmp_path / name).exists(), name
    assert sorted(os.listdir(tmp_path)) == ["module", "notes.txt", "train-00000.tfrecord"]
    assert os.listdir(module) == ["saved_model.pb"]
