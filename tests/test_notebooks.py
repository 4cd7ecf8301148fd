"""The exploration notebooks run end to end (nbclient, kernel python3) on tiny settings.

Each notebook is executed with ``RH_NOTEBOOK_SMALL=1`` and no ``RH_CKPT``, so it makes its own
micro checkpoint (01 trains one for 30 steps, 02 saves a random one). A probe cell appended to
the executed copy reports the key variables as JSON; the committed notebooks are not touched.
The slow variant points ``RH_CKPT`` at a run folder (its newest checkpoint is used).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PLOTLY = "application/vnd.plotly.v1+json"

PROBES = {
    "01_explore.ipynb": """
import json, plotly.graph_objects as go
print("PROBE" + json.dumps({
    "shape": [cfg.n_layers, cfg.n_heads],
    "scores": {m: list(v.shape) for m, v in scores.items()},
    "mass_finite_attention": bool(np.isfinite(scores["mass"][cfg.attention_layers]).all()),
    "figures": [isinstance(f, go.Figure) for f in (fig_scores, fig_row)],
    "row_traces": len(fig_row.data),
    "cache_layers": sorted(int(k.split(".")[1]) for k in cache.keys()),
    "attention_layers": list(cfg.attention_layers),
    "n_answers": len(answers_df),
    "head": [LAYER, HEAD],
}))
""",
    "02_interventions.ipynb": """
import json, plotly.graph_objects as go
patches = [patch_heads, patch_query, patch_pos]
print("PROBE" + json.dumps({
    "shape": [cfg.n_layers, cfg.n_heads],
    "S": list(S.shape),
    "top": [list(h) for h in top],
    "K": K,
    "conditions": summary["condition"].tolist(),
    "accuracy_in_range": bool(abl["accuracy"].between(0, 1).all()),
    "patched": [p is not None for p in patches],
    "patch_rows": [len(p.df) if p is not None else None for p in patches],
    "n_heads_total": len(cfg.attention_layers) * cfg.n_heads,
    "figures": [isinstance(f, go.Figure) for f in (fig_ablation, fig_rf, fig_rf_map)]
               + [isinstance(p.figure, go.Figure) for p in patches if p is not None],
    "rf_modules": rf["module"].tolist(),
    "rf_map": list(hits.shape),
    "n_windows": len(windows),
}))
""",
}


def _ensure_kernel():
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--user"], check=True,
                       capture_output=True)


def _run(name, tmp_path, monkeypatch, env):
    _ensure_kernel()
    monkeypatch.setenv("RH_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel is a separate process: keep it to one core
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the micro checkpoint goes under tmp_path
    monkeypatch.delenv("RH_CKPT", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        f"{name}: commit the notebook with outputs cleared"
    n_cells = len(nb.cells)
    nb.cells.append(nbformat.v4.new_code_cell(PROBES[name]))
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError (with the cell and traceback) on any error
    probe = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    assert "PROBE" in probe, nb.cells[-1].outputs
    out = json.loads(probe.split("PROBE", 1)[1])
    n_plotly = sum(PLOTLY in o.get("data", {}) for c in nb.cells[:n_cells] if c.cell_type == "code"
                   for o in c.outputs)
    return out, n_plotly


def _check_01(out, n_plotly):
    assert out["scores"] == {"copy": out["shape"], "mass": out["shape"]}
    assert out["mass_finite_attention"]
    assert out["figures"] == [True, True] and out["row_traces"] >= 1
    assert out["cache_layers"] == out["attention_layers"]
    assert out["n_answers"] == 4
    assert out["head"][0] in out["attention_layers"]
    assert n_plotly >= 2  # scores heatmap + attention row were displayed


def _check_02(out, n_plotly):
    assert out["S"] == out["shape"]
    assert len(out["top"]) == out["K"]
    assert out["conditions"][0] == "none" and "top" in out["conditions"]
    assert out["accuracy_in_range"]
    assert all(out["figures"])
    assert out["rf_modules"][0] == "none" and "full" in out["rf_modules"] and "efficient" in out["rf_modules"]
    assert out["rf_map"][0] == out["n_windows"]
    return out


def test_01_explore(tmp_path, monkeypatch):
    out, n_plotly = _run("01_explore.ipynb", tmp_path, monkeypatch, {})
    _check_01(out, n_plotly)


def test_02_interventions(tmp_path, monkeypatch):
    out, n_plotly = _run("02_interventions.ipynb", tmp_path, monkeypatch, {})
    _check_02(out, n_plotly)
    # the random fallback model reacts to the needle, so every patching map exists
    assert out["patched"] == [True, True, True]
    assert out["patch_rows"][:2] == [out["n_heads_total"]] * 2
    assert n_plotly >= 6  # ablation bars, 3 patching maps, receptive-field curves and map


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PROBES))
def test_notebook_on_run_folder(name, tmp_path, monkeypatch):
    """RH_CKPT = a run folder: the notebooks load its newest checkpoint (a random SSSF model)."""
    import torch

    import retrieval_heads as rh

    torch.manual_seed(0)
    run = tmp_path / "run"
    cfg = rh.ModelConfig(layout="SSSF", d_model=32, n_heads=2, d_mlp=64, window=8, max_seq_len=512)
    rh.save_checkpoint(run, 0, rh.HybridLM(cfg))
    rh.save_checkpoint(run, 5, rh.HybridLM(cfg))
    out, n_plotly = _run(name, tmp_path, monkeypatch, {"RH_CKPT": str(run), "RH_CONTEXT_LEN": "160"})
    assert out["shape"] == [4, 2]
    (_check_01 if name.startswith("01") else _check_02)(out, n_plotly)
