"""The exploration notebooks run end to end (nbclient, kernel python3) on tiny settings.

Each notebook is executed with ``RH_NOTEBOOK_SMALL=1`` and no ``RH_CKPT``, so it makes its own
micro checkpoint (01 trains one for 30 steps, 02 saves a random one). A probe cell appended to
the executed copy reports the key variables as JSON; the committed notebooks are not touched.
The slow variant points ``RH_CKPT`` at a run folder (its newest checkpoint is used).

Every executed notebook is also checked for what a new user sees: no warning text in any
output, and every figure kept by ``nbconvert --to html`` (plotly.js embedded once, one
``Plotly.newPlot`` per figure). Two more runs use the trained fixture ``tests/fixtures/tiny_deep``
through a RELATIVE ``RH_CKPT`` from another working directory: the documented
``jupyter nbconvert --execute`` command (the kernel then runs in ``notebooks/``) and an
nbclient run whose kernel runs in ``tmp_path``.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
FIXTURE = "tests/fixtures/tiny_deep"  # relative to ROOT: SSSSSF, 8 heads, trained (answers every needle)
PLOTLY = "application/vnd.plotly.v1+json"
# appended to every probe: a tqdm.auto bar in the kernel must not warn (ipywidgets is in the
# notebooks extra; without it tqdm prints "TqdmWarning: IProgress not found")
TQDM = """
from tqdm.auto import tqdm
for _ in tqdm(range(2), desc="tqdm check"):
    pass
"""

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
    "ckpt": str(path),
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
    "ckpt": str(path),
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


def _output_texts(nb):
    """(cell index, text) of every output a reader sees as text: streams, errors and text/plain
    (text/html is left out: the embedded plotly.js holds the word 'warning' in its own code)."""
    for i, c in enumerate(nb.cells):
        for o in c.get("outputs", []):
            if o.output_type == "stream":
                yield i, o.text
            elif o.output_type == "error":
                yield i, "\n".join([o.ename, o.evalue, *o.traceback])
            else:
                yield i, str(o.get("data", {}).get("text/plain", ""))


def _assert_no_warnings(nb):
    found = [(i, t) for i, t in _output_texts(nb) if "warning" in t.lower()]
    assert not found, f"warning text in the outputs (cell index, text): {found}"


def _assert_html_keeps_figures(nb, n_plotly):
    """``jupyter nbconvert --to html`` of the executed notebook draws every plotly figure with a
    plotly.js embedded once in the page (no CDN script for plotly)."""
    from nbconvert import HTMLExporter

    html, _ = HTMLExporter().from_notebook_node(nb)
    assert n_plotly >= 1
    assert html.count("Plotly.newPlot(") == n_plotly, "a figure has no text/html: lost in the HTML export"
    divs = re.findall(r'<div[^>]*class="plotly-graph-div"[^>]*>', html)
    ids = [re.search(r'id="([^"]+)"', d).group(1) for d in divs]
    assert len(set(ids)) == n_plotly
    for div_id in ids:  # each figure's div is drawn by its own script
        assert re.search(r'Plotly\.newPlot\(\s*"' + re.escape(div_id) + '"', html), div_id
    assert html.count("* plotly.js v") == 1, "plotly.js must be embedded exactly once"
    assert not re.search(r"<script[^>]+src=\"[^\"]*plot\.?ly", html), "plotly.js loaded from a CDN"
    assert html.index("* plotly.js v") < html.index("Plotly.newPlot("), "plotly.js must come before the figures"


def _n_plotly(cells):
    return sum(PLOTLY in o.get("data", {}) for c in cells if c.cell_type == "code" for o in c.outputs)


def _run(name, tmp_path, monkeypatch, env, cwd=None):
    """Execute the notebook with nbclient, its kernel in ``cwd`` (default tmp_path)."""
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
    nb.cells.append(nbformat.v4.new_code_cell(PROBES[name] + TQDM))
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                                     resources={"metadata": {"path": str(cwd or tmp_path)}})
    client.execute()  # raises CellExecutionError (with the cell and traceback) on any error
    probe = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    assert "PROBE" in probe, nb.cells[-1].outputs
    out = json.loads(probe.split("PROBE", 1)[1].splitlines()[0])
    n_plotly = _n_plotly(nb.cells[:n_cells])
    _assert_no_warnings(nb)
    _assert_html_keeps_figures(nb, n_plotly)
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


def test_resolve_path_order_and_error(tmp_path, monkeypatch):
    """A relative path: the current directory first, then $PWD, then the repository root; the
    error names every place tried. No kernel: this is the helper the notebooks' first cell calls."""
    from retrieval_heads.notebook import repo_root, resolve_path

    cwd, launched = tmp_path / "cwd", tmp_path / "launched"
    (cwd / "tests/fixtures/tiny_deep").mkdir(parents=True)
    (launched / "only_here").mkdir(parents=True)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("PWD", str(launched))
    assert repo_root() == ROOT  # not above tmp_path: found from the package (editable install)
    assert resolve_path(FIXTURE) == (cwd / FIXTURE).resolve()  # the current directory wins
    assert resolve_path("only_here") == (launched / "only_here").resolve()
    shutil.rmtree(cwd / "tests")
    assert resolve_path(FIXTURE) == ROOT / FIXTURE
    assert resolve_path(ROOT / FIXTURE) == ROOT / FIXTURE  # absolute: as given
    with pytest.raises(FileNotFoundError) as e:
        resolve_path("runs/nope", what="RH_CKPT")
    msg = str(e.value)
    for place in (cwd, launched, ROOT):
        assert f"{place / 'runs/nope'} (" in msg, msg
    assert "RH_CKPT='runs/nope'" in msg


def test_relative_ckpt_kernel_elsewhere(tmp_path, monkeypatch):
    """RH_CKPT relative to the repository root while the kernel runs in tmp_path (and Jupyter
    was 'started' there): only the repository-root fallback can find it. Notebook 02 on the
    trained fixture: the retrieval heads exist, so every patching map is computed."""
    assert not (tmp_path / FIXTURE).exists()
    out, n_plotly = _run("02_interventions.ipynb", tmp_path, monkeypatch,
                         {"RH_CKPT": FIXTURE, "PWD": str(tmp_path)})
    assert out["ckpt"] == str(ROOT / FIXTURE / "step_001600")
    assert out["shape"] == [6, 8]
    _check_02(out, n_plotly)
    assert out["patched"] == [True, True, True]
    assert n_plotly == 6


def test_documented_command_from_another_directory(tmp_path):
    """What the notebook's header tells a user to type, from a directory outside the repository,
    with RH_CKPT relative to that directory: ``jupyter nbconvert --execute`` runs the kernel in
    notebooks/, so the path is found through $PWD (set by the shell, inherited by the kernel)."""
    _ensure_kernel()
    work = tmp_path / "work"
    shutil.copytree(ROOT / FIXTURE, work / "runs/tiny")
    env = {**os.environ, "PWD": str(work), "RH_CKPT": "runs/tiny", "RH_NOTEBOOK_SMALL": "1",
           "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    out = tmp_path / "01.ipynb"
    r = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                        str(NOTEBOOKS / "01_explore.ipynb"), "--output", str(out)],
                       cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    nb = nbformat.read(out, as_version=4)
    printed = "".join(t for _, t in _output_texts(nb))
    assert f"{(work / 'runs/tiny/step_001600').resolve()}  step 1600" in printed, printed[:2000]
    assert "NIAH accuracy: 1.00" in printed  # the trained fixture, not the micro model
    _assert_no_warnings(nb)
    n_plotly = _n_plotly(nb.cells)
    assert n_plotly == 2  # scores heatmap + attention rows
    _assert_html_keeps_figures(nb, n_plotly)
