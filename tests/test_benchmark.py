"""The benchmark harness runs and reports sane fields (no time is asserted: CI machines vary)."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from vae import benchmark


def test_flops_per_image_of_the_small_mlp():
    from configs import mlp_small

    # 784-400-(2x20) encoder, 20-400-784 decoder: about 3.9 MFLOP per image per training step.
    assert benchmark.mlp_train_flops_per_image(mlp_small.get_config(), 784) == pytest.approx(3.9e6, rel=0.01)


@pytest.mark.parametrize("with_torch", [False, True])
def test_benchmark_smoke(tmp_path, with_torch):
    if with_torch:
        pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    args = [sys.executable, "scripts/benchmark.py", "--synthetic", "--train-images", "2048",
            "--epochs", "2", "--step-samples", "5", "--iw-samples", "8", "--iw-images", "8",
            "--batch-sizes", "64,128", "--set", "model.hidden_dims=(32,)", "--out", str(out)]
    if with_torch:
        args.append("--torch")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS="")
    result = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "training (median)" in result.stdout
    report = json.loads(out.read_text())
    assert report["machine"]["cores"] >= 1 and "jax" in report["machine"]["versions"]
    assert report["matmul_peak_gflops"] > 0.1
    assert [run["batch_size"] for run in report["runs"]] == [64, 128]
    for run in report["runs"]:
        assert run["images_per_sec"] > 0 and run["compile_sec"] > 0
        assert 0 < run["share_of_ceiling"] < 1.5
        assert run["step_time_ms"]["p50"] <= run["step_time_ms"]["p99"]
        assert run["eval_images_per_sec"] > 0 and run["iwae_images_per_sec"] > 0
    assert report["memory"]["host_peak_rss_mb"] > 10
    if with_torch:
        first = report["runs"][0]
        assert first["torch_idiomatic_images_per_sec"] > 0 and first["ratio_to_torch_tuned"] > 0
