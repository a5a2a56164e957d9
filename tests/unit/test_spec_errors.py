"""Malformed environment files: one clear line naming the file, line and key path; exit 2, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dcforge.checks import CATALOG
from dcforge.errors import ConfigError, ConfigErrors
from dcforge.spec import load_environment

# (edit of Pulumi.prod.yaml, key path expected in the error, words expected in the message)
BAD_PROD_EDITS = [
    pytest.param({"      gpusPerNode: 8\n      nodeCount: 16": "      gpusPerNode: -8\n      nodeCount: 16"},
                 "dcforge:gpuPools[2].gpusPerNode", "greater than or equal to 1", id="negative-gpus"),
    pytest.param({"gpuModel: L40S": "gpuModel: L41S"}, "dcforge:gpuPools[2].gpuModel", "unknown GPU model 'L41S'",
                 id="unknown-gpu-model"),
    pytest.param({'cuda: "12.8"': 'cuda: "13.0"'}, "dcforge:versions.cuda", "needs driver >= 580.65.06",
                 id="cuda-too-new-for-driver"),
    pytest.param({'fabricManager: "570.172.08"': 'fabricManager: "570.158.01"'}, "dcforge:versions.fabricManager",
                 "must equal the driver", id="fabric-manager-differs"),
    pytest.param({'nccl: "2.26.2"': 'nccl: "2.18.5"'}, "dcforge:versions.nccl", "built for CUDA 12.0..12.2",
                 id="nccl-not-built-for-cuda"),
    pytest.param({'system.gpu_count: ">= 8"': 'system.gpu_count: "at least 8"'},
                 "dcforge:acceptance.slos.system.gpu_count", "bad SLO expression", id="bad-slo-expression"),
    pytest.param({"      nodeCount: 16": '      nodeCount: "sixteen"'}, "dcforge:gpuPools[2].nodeCount",
                 "valid integer", id="wrong-type"),
    pytest.param({"    gpuOperator: v25.3.2\n": ""}, "dcforge:versions.gpuOperator", "required key is missing",
                 id="missing-key"),
    pytest.param({"podCidr: 10.244.0.0/14": "podCidr: 10.8.0.0/14"}, "dcforge:network.nodeCidr",
                 "overlaps podCidr", id="overlapping-cidrs"),
    pytest.param({"gpuQuota: {train-a: 512,": "gpuQuota: {train-a: 600,"},
                 "dcforge:security.teams[0].gpuQuota.train-a", "exceeds pool 'train-a' capacity of 512",
                 id="quota-above-capacity"),
    pytest.param({"backend: rook-ceph": "backend: glusterfs"}, "dcforge:storage.backend", "'glusterfs'",
                 id="unknown-storage-backend"),
    pytest.param({'"dcforge.io/pool=train-b:NoSchedule"': '"dcforge.io/pool=train-b:Sometimes"'},
                 "dcforge:gpuPools[1].taints", "not 'key=value:Effect'", id="taint-syntax"),
    pytest.param({"      - {name: training, purpose: training}\n":
                  "      - {name: training, purpose: training}\n      - {name: training, purpose: general}\n"},
                 "dcforge:network.namespaces", "duplicate name 'training'", id="duplicate-namespace"),
    pytest.param({"checks: [system": "checks: [warp_drive, system"}, "dcforge:acceptance.checks[0]",
                 "unknown check 'warp_drive'", id="unknown-check"),
    pytest.param({"    mons: 5": "    mons: 4"}, "dcforge:storage.ceph.mons", "must be odd", id="even-ceph-mons"),
    pytest.param({"kernelModuleType: open": "kernelModuleType: closed"}, "dcforge:versions.kernelModuleType",
                 "'open' or 'proprietary'", id="bad-enum"),
    pytest.param({"  dcforge:versions:": "  dcforge:versionz:"}, "dcforge:versionz", "unknown key",
                 id="typo-top-level-key"),
    # Refusals of a model validator are reported at the key they are about, not at the model.
    pytest.param({"      purpose: inference\n": "      purpose: inference\n      quota: {gpus: 200}\n"},
                 "dcforge:gpuPools[2].quota.gpus", "quota.gpus 200 exceeds the pool's capacity 128",
                 id="pool-quota-above-capacity"),
    pytest.param({"      cidr: 192.168.0.0/18\n": ""}, "dcforge:network.rdma.cidr", "enabled RDMA needs cidr",
                 id="rdma-without-cidr"),
    pytest.param({"failAtStep: 25}": "failAtStep: 25, timeoutS: 800}"},
                 "dcforge:acceptance.settings.train_failover.timeoutS",
                 "no longer a setting here; set dcforge:acceptance.timeoutsS.train_failover instead",
                 id="per-check-timeout-moved-to-timeoutsS"),
]


def _errors(path) -> list[ConfigError]:
    with pytest.raises((ConfigError, ConfigErrors)) as caught:
        load_environment(path=path, checks=CATALOG)
    error = caught.value
    return error.errors if isinstance(error, ConfigErrors) else [error]


@pytest.mark.parametrize("edit, key, words", BAD_PROD_EDITS)
def test_bad_environment_names_file_line_and_key(env_file, edit, key, words):
    path = env_file("prod", replace=edit)
    errors = _errors(path)
    matching = [e for e in errors if e.key == key]
    assert matching, f"no error for {key}; got: {[str(e) for e in errors]}"
    line = str(matching[0])
    assert words in line
    assert line.startswith(str(path.name)) or str(path) in line
    assert "\n" not in line
    # the file part carries the line number of the offending key
    assert ":" in matching[0].file.rsplit("/", 1)[-1]


def test_yaml_syntax_error_gives_line_and_column(env_file):
    path = env_file("prod", replace={"  dcforge:storage:\n": "  dcforge:storage: [oops\n"})
    (error,) = _errors(path)
    assert "YAML syntax error" in str(error)
    assert error.file.endswith(".yaml:37:12") or error.file.count(":") == 2


def test_unknown_environment_lists_known_ones():
    with pytest.raises(ConfigError) as caught:
        load_environment("nosuch")
    assert "no environment 'nosuch'" in str(caught.value)
    assert "local" in str(caught.value) and "prod" in str(caught.value)


def test_not_a_stack_file(env_file):
    (error,) = _errors(env_file(text="just a string\n", name="weird"))
    assert error.key == "config" and "config:' mapping" in str(error)


@pytest.mark.parametrize("name", ["local", "dev", "prod"])
def test_shipped_environments_are_valid(name):
    env = load_environment(name)
    assert env.spec.name == name
    assert len(env.sha256) == 64


def test_prod_is_realistic():
    spec = load_environment("prod").spec
    training = [p for p in spec.gpu_pools if p.purpose == "training"]
    assert len(training) == 2 and all(p.gpu_model == "H100-SXM" and p.gpus_per_node == 8 for p in training)
    assert spec.storage.backend == "rook-ceph" and spec.network.rdma.enabled
    assert any(p.gpu_model == "L40S" and p.purpose == "inference" for p in spec.gpu_pools)


@pytest.mark.parametrize("args", [["validate", "--env-file", "{bad}"], ["accept", "--env-file", "{bad}"],
                                  ["validate", "--env", "nosuch"], ["accept", "--only", "nosuch"]])
def test_cli_bad_input_exits_2_with_one_line_per_problem(env_file, tmp_path, args):
    bad = env_file("prod", replace={"gpuModel: L40S": "gpuModel: L41S"})
    argv = [a.format(bad=bad) for a in args]
    proc = subprocess.run([sys.executable, "-m", "dcforge.cli", *argv], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert lines and all(line.startswith("error: ") for line in lines)


def test_missing_env_file_is_one_clear_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dcforge.cli", "validate", "--env-file", str(tmp_path / "nope.yaml")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: nope.yaml: cannot read: No such file or directory"


def test_report_of_a_folder_without_report_json_is_bad_input(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dcforge.cli", "report", str(tmp_path)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "report.json: cannot read report: No such file or directory" in proc.stderr
