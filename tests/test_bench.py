"""`jaxtrain bench --quick`: schema and sanity (no timing is asserted)."""

import json
import subprocess
import sys

import pytest

from jaxtrain.bench import epoch_flop, fastest_floor

VARIANT_KEYS = ["name", "epoch_seconds", "test_seconds", "compile_seconds", "samples_per_second", "gflops",
                "peak_rss_mb", "ratio_to_torch_tutorial", "ratio_to_shape_floor"]


def test_epoch_flop_is_the_exact_matmul_count():
    # per sample: forward 2*(784*512 + 512*512 + 512*10) = 1,337,344; weight grads the same;
    # input grads of layers 2 and 3 only: 2*(512*512 + 512*10) = 534,528
    assert epoch_flop(60000) == 60000 * (1_337_344 * 2 + 534_528) == 192_552_960_000


def test_the_shape_floor_keeps_each_gemms_best_round():
    def gemm(m, per_epoch, jax, torch):
        seconds = {"jax": jax, "torch": torch}
        return {"m": m, "k": 1, "n": 1, "per_epoch": per_epoch, "seconds": seconds, "best": min(seconds, key=seconds.get)}

    quiet_first = {"shapes": [gemm(64, 10, 1.0, 2.0), gemm(32, 1, 5.0, 4.0)]}
    loaded_first = {"shapes": [gemm(64, 10, 3.0, 3.0), gemm(32, 1, 1.5, 4.0)]}
    floor = fastest_floor([quiet_first, loaded_first])
    assert floor["seconds"] == 10 * 1.0 + 1 * 1.5
    assert [g["best"] for g in floor["shapes"]] == ["jax", "jax"] and {g["rounds"] for g in floor["shapes"]} == {2}


@pytest.mark.corpus  # 70-130 s: with the long checks (`make corpus`), to keep `make test` under 20 minutes
@pytest.mark.parametrize("scaling", [False, True])
def test_quick_bench_writes_json_and_plot(tmp_path, fashion, scaling):
    """Every variant end to end, without and with the scaling table (a second round of every variant,
    torch.compile included)."""
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    run = subprocess.run([sys.executable, "-m", "jaxtrain", "bench", "--quick",
                          *(["--batch-sizes", "128"] if scaling else []),
                          "--json", str(out), "--plot", str(png)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert list(result) == ["device", "matmul_peak_gflops", "epoch_gflop", "flop_floor_seconds",
                            "shape_floor_seconds", "shape_floor_gemms", "variants", "scaling"]
    assert result["epoch_gflop"] == 6400 * 3_209_216 / 1e9
    assert result["matmul_peak_gflops"] > 0
    assert result["flop_floor_seconds"] == result["epoch_gflop"] / result["matmul_peak_gflops"]
    names = [v["name"] for v in result["variants"]]
    assert names == ["torch_tutorial", "torch_tuned", "torch_compile", "jax_step", "jax_epoch"]
    # the shape floor: 8 GEMMs a step (3 forward, 3 weight and 2 input gradients), 100 full batches of 64
    assert len(result["shape_floor_gemms"]) == 8 and {g["per_epoch"] for g in result["shape_floor_gemms"]} == {100}
    assert result["shape_floor_seconds"] == sum(g["per_epoch"] * g["seconds"][g["best"]]
                                                for g in result["shape_floor_gemms"])
    for v in result["variants"]:
        assert list(v) == VARIANT_KEYS
        e = v["epoch_seconds"]
        assert 0 < e["min"] <= e["median"] <= e["max"]
        assert result["flop_floor_seconds"] <= e["min"]
        assert result["shape_floor_seconds"] <= e["min"], v["name"]  # no variant may beat the shape floor
        assert v["test_seconds"]["median"] > 0 and v["compile_seconds"] >= 0
        assert v["samples_per_second"] == 6400 / e["median"] and v["peak_rss_mb"] > 50
    assert result["variants"][0]["ratio_to_torch_tutorial"] == 1.0
    if scaling:
        assert {s["name"] for s in result["scaling"]} == set(names) and {s["batch_size"] for s in result["scaling"]} == {128}
    else:
        assert result["scaling"] == []
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "jax_epoch" in run.stdout and "peak-FLOP floor" in run.stdout and "shape floor" in run.stdout
    compiled = next(v for v in result["variants"] if v["name"] == "torch_compile")
    assert compiled["compile_seconds"] > 0  # torch.compile's first epoch, reported apart


def test_bench_rejects_bad_batch_sizes():
    run = subprocess.run([sys.executable, "-m", "jaxtrain", "bench", "--batch-sizes", "16,0"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "batch sizes must be >= 1" in run.stderr
