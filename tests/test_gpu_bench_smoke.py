"""``nifi bench --tiny`` on the CPU: the whole training part runs and its JSON holds what docs/performance.md reads."""
import json

from nifi_lib.bench import gpu


def test_tiny_train_bench_writes_steps_losses_and_compile_diagnostics(tmp_path):
    rc = gpu.main(["--tiny", "--part", "train", "--no-compile", "--train-variants", "eager", "--iters", "1",
                   "--warmup", "1", "--out", str(tmp_path)])
    assert rc == 0
    r = json.loads((tmp_path / "bench.json").read_text())
    eager = r["train"]["variants"]["eager"]
    # 3 warm-up steps for every variant (so variants from fresh trainers compare after equal step counts),
    # one timed and one back-to-back iteration
    assert eager["steps_run"] == 5 and eager["median_ms"] > 0 and eager["loss_total_last"] > 0
    assert r["train"]["flops"]["total"] > 0
    d = r["dynamo"]["train"]
    assert d["graph_breaks"] == 0 and d["cache_counters"] == {} and "compilation metrics" in d["compile_times"]
    assert "compile_cache_saved" not in r   # CPU, no compile: nothing to save
    assert (tmp_path / "summary.md").read_text().startswith("## nifi bench")
