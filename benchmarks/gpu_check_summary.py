"""Summary of ``benchmarks/gpu_check.sh``: reads what its steps left in a work folder, prints
one table of measured values against the targets of issues 8 and 18 (PASS / FAIL / ERROR) and
writes one JSON with the table, the steps and every step's raw result.

    python benchmarks/gpu_check_summary.py --work /tmp/rh_gpu_check.X --card h100 \
        --out benchmarks/results/gpu_check_h100.json
    python benchmarks/gpu_check_summary.py --env /tmp/env.json     # the preflight step
    python benchmarks/gpu_check_summary.py --scan-check /tmp/scan.json   # the native-scan step

Exit status: 1 when a target is not PASS (a failed or missing measurement is ERROR); with
``--smoke`` (a CPU smoke run at toy sizes, where the GPU targets mean nothing) only ERROR
counts. Informational rows (fla kernel speed-ups) never change the exit status.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

# issue 8's GPU targets
SWA_OVER_FULL = 8.0  # SWA (w=128) fwd+bwd at T=32768, bf16, 8 heads of 64 vs full causal SDPA
SSSF_OVER_FFFF = 2.0  # training tokens/s at T=8192
MFU_MIN = 0.25  # largest GPU preset (gpu-base)
# issue 18: native scans on the GPU (docs/GPU.md states these tolerances against fp32 CPU scores)
SCAN_SPEEDUP = 20.0  # CUDA fp32 scan of `small`-preset checkpoints vs the CPU scan of the same ones
SCAN_FP32_TOL = 1e-4  # max |CUDA fp32 - CPU fp32| of every score and NIAH cell (micro_run, golden settings)
SCAN_BF16_TOL = {"mass": 0.01, "entropy_norm": 0.02, "entropy": 0.05, "copy": 0.05, "copy_tf": 0.05}


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _steps(work: Path) -> dict:
    """name -> {rc, seconds, limit}; rc is 'skipped' for steps the time budget left out."""
    out = {}
    f = work / "steps.tsv"
    if f.exists():
        for line in f.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) == 4:
                name, rc, secs, limit = parts
                out[name] = {"rc": int(rc) if rc.lstrip("-").isdigit() else rc,
                             "seconds": int(secs), "limit": limit}
    return out


def _why(steps: dict, name: str) -> str:
    st = steps.get(name)
    if st is None:
        return "step not run"
    if st["rc"] == "skipped":
        return "skipped: time budget spent"
    if st["rc"] in (124, 137):
        return f"timed out after {st['seconds']} s"
    if st["rc"] != 0:
        return f"exit status {st['rc']}"
    return "no result"


def _row(name, value, target, status, note=""):
    return {"name": name, "value": value, "target": target, "status": status, "note": note}


def _pytest(work: Path, steps: dict, step: str, label: str, smoke: bool = False) -> tuple[dict, dict | None]:
    f = work / f"{step}.xml"
    counts = None
    try:
        root = ET.parse(f).getroot()
        suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
        counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        counts["failed_ids"] = [f"{c.get('classname')}::{c.get('name')}" for c in root.iter("testcase")
                                if c.find("failure") is not None or c.find("error") is not None]
        counts["skipped_ids"] = [f"{c.get('name')}: {(c.find('skipped').get('message') or '')[:80]}"
                                 for c in root.iter("testcase") if c.find("skipped") is not None]
    except (OSError, ET.ParseError):
        pass
    name = f"GPU tests: {label}"
    if counts is None:
        return _row(name, None, "all pass", "ERROR", _why(steps, step) + " (see the log for the tests that ran)"), None
    value = (f"{counts['passed']} passed, {counts['failures']} failed, {counts['errors']} errors, "
             f"{counts['skipped']} skipped")
    ok = counts["failures"] == 0 and counts["errors"] == 0 and steps.get(step, {}).get("rc") == 0
    note = "" if ok else (_why(steps, step) + "; " + ", ".join(counts["failed_ids"][:6])).strip("; ")
    if ok and counts["passed"] == 0 and not smoke:  # on a GPU machine, all skipped means nothing ran
        ok, note = False, "no test ran (all skipped): " + "; ".join(counts["skipped_ids"][:3])
    return _row(name, value, "all pass", "PASS" if ok else "FAIL", note), counts


def _attention(work: Path, steps: dict):
    res = _load(work / "attention.json")
    sec = (res or {}).get("kernel")
    if not sec:
        return _row("SWA w=128 vs full SDPA, T=32768 bf16 fwd+bwd (x faster)", None, f">= {SWA_OVER_FULL:g}",
                    "ERROR", _why(steps, "attention")), res
    s, t = sec["settings"], sec["timings"]
    r = sec["full_over_swa"]
    name = (f"SWA w={s['window']} vs full SDPA, T={s['T']} {s['dtype']} fwd+bwd (x faster)")
    note = f"{sec['swa_path']} {t[sec['swa_path']]['median_ms']:.2f} ms, full-sdpa {t['full-sdpa']['median_ms']:.2f} ms"
    return _row(name, round(r, 2), f">= {SWA_OVER_FULL:g}", "PASS" if r >= SWA_OVER_FULL else "FAIL", note), res


def _train(work: Path, steps: dict):
    res = _load(work / "train.json")
    rows = {r["layout"]: r for r in (res or {}).get("rows", [])}
    label = "train tokens/s SSSF / FFFF"
    if "SSSF" not in rows or "FFFF" not in rows:
        return _row(label, None, f">= {SSSF_OVER_FFFF:g}", "ERROR", _why(steps, "train")), res
    a = res["meta"]["args"]
    r = rows["SSSF"]["tokens_per_s"] / rows["FFFF"]["tokens_per_s"]
    name = f"{label}, T={a['context_len']} d_model={rows['SSSF']['d_model']} B={a['batch_size']}"
    note = f"SSSF {rows['SSSF']['tokens_per_s']:.0f} tok/s, FFFF {rows['FFFF']['tokens_per_s']:.0f} tok/s"
    if rows["SSSF"].get("flops_per_token") and rows["FFFF"].get("flops_per_token"):
        note += f"; model FLOPs/token FFFF/SSSF {rows['FFFF']['flops_per_token'] / rows['SSSF']['flops_per_token']:.2f}"
    return _row(name, round(r, 2), f">= {SSSF_OVER_FFFF:g}", "PASS" if r >= SSSF_OVER_FFFF else "FAIL", note), res


def _mfu(work: Path, steps: dict):
    """MFU of the largest GPU preset: the best of the eager and the torch.compile runs."""
    got, raw, notes = {}, {}, []
    for step, label in (("mfu", "eager"), ("mfu_compile", "compile")):
        res = _load(work / f"{step}.json")
        raw[label] = res
        rows = (res or {}).get("rows") or []
        if rows and rows[0].get("mfu") is not None:
            got[label] = rows[0]["mfu"]
            notes.append(f"{label} {100 * rows[0]['mfu']:.1f}% ({rows[0]['tokens_per_s']:.0f} tok/s, "
                         f"{rows[0]['model_tflops']:.0f} TFLOP/s)")
        elif step in steps:
            notes.append(f"{label}: " + ("no peak for this card (--peak-tflops)" if rows else _why(steps, step)))
    name = "MFU, gpu-base preset (best of eager / compile)"
    if not got:
        return _row(name, None, f">= {100 * MFU_MIN:g}%", "ERROR", "; ".join(notes)), raw
    best = max(got, key=got.get)
    peak = (raw[best].get("meta") or {}).get("args", {}).get("peak_tflops")
    notes.append(f"peak {peak} TFLOP/s bf16 dense")
    v = got[best]
    return _row(name, f"{100 * v:.1f}% ({best})", f">= {100 * MFU_MIN:g}%",
                "PASS" if v >= MFU_MIN else "FAIL", "; ".join(notes)), raw


def _recurrent(work: Path, steps: dict):
    res = _load(work / "recurrent.json")
    rec = (res or {}).get("recurrent")
    name = "recurrent kernels torch chunked / fla (x faster)"
    if not rec:
        return _row(name, None, "info", "INFO", _why(steps, "recurrent")), res
    if "torch_over_fla" not in rec:
        return _row(name, None, "info", "INFO", "fla not installed or not on CUDA: torch chunked form only"), res
    value = ", ".join(f"{k} {v:.2f}" for k, v in rec["torch_over_fla"].items())
    st = rec["settings"]
    return _row(name, value, "info", "INFO", f"T={st['T']} {st['dtype']} {st.get('pass', 'fwd+bwd')}"), res


def _scan(work: Path, steps: dict):
    """Two rows of the native-scan step (issue 18): CUDA fp32 tables vs the CPU's, and the speed
    ratio on `small`-preset checkpoints; bf16 and the torchrun check in the notes. No rows when the
    step was neither planned nor run (CPU smoke, older work folders)."""
    res = _load(work / "scan.json")
    if res is None and "scan" not in steps:
        return [], None
    eq_name = "native scan CUDA fp32 vs CPU fp32, max |diff| (micro_run)"
    sp_name = "native scan CPU / CUDA fp32 time, small preset (x faster)"
    if not res or res.get("skipped"):
        why = (res or {}).get("skipped") or _why(steps, "scan")
        return [_row(eq_name, None, f"<= {SCAN_FP32_TOL:g}", "ERROR", why),
                _row(sp_name, None, f">= {SCAN_SPEEDUP:g}", "ERROR", why)], res
    rows = []
    micro = res.get("micro") or {}
    fp32 = (micro.get("fp32") or {}).get("max_abs")
    if fp32 is None:
        rows.append(_row(eq_name, None, f"<= {SCAN_FP32_TOL:g}", "ERROR", res.get("error") or "no comparison"))
    else:
        bf = micro.get("bf16") or {}
        note = (f"NaN mismatches {micro['fp32']['nan_mismatch']}, formation step cpu {micro['formation'].get('cpu')} "
                f"cuda {micro['formation'].get('cuda_fp32')}; bf16 max |diff| "
                + ", ".join(f"{k} {v:.2g}" for k, v in (bf.get("per_metric") or {}).items())
                + f" (within docs/GPU.md: {bf.get('within_tolerance')})")
        if res.get("torchrun"):
            note += f"; torchrun 1 rank cuda: {res['torchrun']}"
        ok = fp32 <= SCAN_FP32_TOL and micro["fp32"]["nan_mismatch"] == 0
        rows.append(_row(eq_name, f"{fp32:.2g}", f"<= {SCAN_FP32_TOL:g}", "PASS" if ok else "FAIL", note))
    small = res.get("small") or {}
    t = small.get("seconds") or {}
    if "cpu" in t and "cuda_fp32" in t:
        r = t["cpu"] / t["cuda_fp32"]
        note = (f"{small['n_checkpoints']} checkpoints, context {small['context_lens']}: cpu {t['cpu']:.1f} s "
                f"({small.get('cpu_threads')} threads), cuda fp32 {t['cuda_fp32']:.1f} s"
                + (f", cuda bf16 {t['cuda_bf16']:.1f} s" if "cuda_bf16" in t else "")
                + f"; fp32 max |diff| {small.get('fp32_max_abs', float('nan')):.2g}")
        rows.append(_row(sp_name, round(r, 1), f">= {SCAN_SPEEDUP:g}", "PASS" if r >= SCAN_SPEEDUP else "FAIL", note))
    else:
        rows.append(_row(sp_name, None, f">= {SCAN_SPEEDUP:g}", "ERROR", res.get("error") or _why(steps, "scan")))
    return rows, res


def _table_diff(a, b) -> dict:
    """Per-metric max |a - b| of two scores tables (same checkpoints), and NaN mismatches."""
    key = ["step", "layer", "head", "metric"]
    m = a.merge(b, on=key, suffixes=("_a", "_b"), how="outer")
    nan = int((m["value_a"].isna() != m["value_b"].isna()).sum())
    d = (m["value_a"] - m["value_b"]).abs()
    per = {k: float(v) for k, v in d.groupby(m["metric"]).max().fillna(0.0).items()}
    return {"max_abs": max(per.values(), default=0.0), "per_metric": per, "nan_mismatch": nan, "rows": len(m)}


def _niah_diff(a: Path, b: Path) -> float:
    import pandas as pd

    x, y = pd.read_parquet(a / "niah.parquet"), pd.read_parquet(b / "niah.parquet")
    m = x.merge(y, on=["step", "context_len", "depth"], suffixes=("_a", "_b"))
    return float((m["accuracy_a"] - m["accuracy_b"]).abs().max()) if len(m) else 0.0


def scan_check(out: Path, device: str = "cuda", n_small: int = 3) -> int:
    """The native-scan step of gpu_check.sh (issue 18): micro_run (tests/fixtures, golden settings)
    scanned on the CPU, on ``device`` in fp32 and in bf16 (tables compared), the same through
    torchrun with one rank, then ``n_small`` random `small`-preset checkpoints (default settings:
    the preset's 512-token context) timed on the CPU and on the device. Writes ``out`` (JSON).
    Without CUDA it writes {"skipped": ...} and returns 0; ``device="cpu"`` runs the whole
    comparison on the CPU (a check of this code, the figures mean nothing)."""
    import os
    import shutil
    import subprocess
    import tempfile

    import torch

    res = {"device_arg": device, "torch": torch.__version__}
    out.parent.mkdir(parents=True, exist_ok=True)
    if device != "cpu" and not torch.cuda.is_available():
        res["skipped"] = "no CUDA: the native-scan comparison needs a GPU"
        out.write_text(json.dumps(res, indent=2))
        print(f"scan check: {res['skipped']}")
        return 0
    import retrieval_heads as rh
    from retrieval_heads.storage.checkpoint import save_checkpoint
    from retrieval_heads.train.presets import load_preset

    if device != "cpu":
        res["card"] = torch.cuda.get_device_name(0)
    root = Path(__file__).resolve().parents[1]
    tmp = Path(tempfile.mkdtemp(prefix="rh_scan_check."))
    try:
        micro = shutil.copytree(root / "tests" / "fixtures" / "micro_run", tmp / "micro_run")
        golden = json.loads((root / "tests" / "fixtures" / "scan_golden" / "settings.json").read_text())["scan"]
        kw = {k: golden.pop(k) for k in ("reference", "threshold", "batch_size")}
        base = dict(progress=False, report=False, force=True, **kw, **golden)
        tabs, secs, form = {}, {}, {}
        for label, dev, dt in (("cpu", "cpu", None), ("cuda_fp32", device, None), ("cuda_bf16", device, "bf16")):
            t0 = time.perf_counter()
            df = rh.scan(micro, out=tmp / f"micro_{label}", device=dev, dtype=dt, **base)
            secs[label] = time.perf_counter() - t0
            tabs[label], form[label] = df, df.attrs["scan"]["formation"]["step"]
        fp32 = _table_diff(tabs["cpu"], tabs["cuda_fp32"])
        fp32["niah_max_abs"] = _niah_diff(tmp / "micro_cpu", tmp / "micro_cuda_fp32")
        fp32["max_abs"] = max(fp32["max_abs"], fp32["niah_max_abs"])
        bf16 = _table_diff(tabs["cpu"], tabs["cuda_bf16"])
        bf16["niah_max_abs"] = _niah_diff(tmp / "micro_cpu", tmp / "micro_cuda_bf16")
        bf16["within_tolerance"] = all(bf16["per_metric"].get(k, 0.0) <= v for k, v in SCAN_BF16_TOL.items())
        res["micro"] = {"fp32": fp32, "bf16": bf16, "formation": form, "seconds": secs}
        print(f"scan check, micro_run: fp32 max |diff| {fp32['max_abs']:.3g}, bf16 {bf16['per_metric']}")
        # the sharded scan with one rank on the device (cuda:LOCAL_RANK), against the CPU tables
        s = {**golden, **kw}
        args = [str(micro), "--out", str(tmp / "dist"), "--device", device, "--no-report",
                "--context-lens", ",".join(map(str, s["context_lens"])), "--depths", ",".join(map(str, s["depths"])),
                "--n-per-cell", str(s["n_per_cell"]), "--seed", str(s["seed"]), "--threshold", str(s["threshold"]),
                "--batch-size", str(s["batch_size"]), "--variant", s["variant"], "--reference", str(s["reference"])]
        args += (["--recurrent"] if s["recurrent"] else []) + ([] if s["only_correct"] else ["--all-samples"])
        try:
            p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                                "-m", "retrieval_heads.pipeline.distributed", *args], capture_output=True, text=True,
                               timeout=120, env=dict(os.environ))
            if p.returncode == 0:
                import pandas as pd

                d = _table_diff(tabs["cpu"], pd.read_parquet(tmp / "dist" / "scores.parquet"))
                res["torchrun"] = f"max |diff| vs cpu {d['max_abs']:.2g}"
            else:
                res["torchrun"] = f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1:]}"
        except subprocess.TimeoutExpired:
            res["torchrun"] = "timed out after 120 s"
        # speed: random `small`-preset checkpoints (the preset's shapes and context; weights untrained)
        mcfg, tcfg = load_preset("small")
        run = tmp / "small"
        for i in range(n_small):
            torch.manual_seed(i)
            step = 200 * i
            save_checkpoint(run, step, rh.HybridLM(mcfg), train_cfg=tcfg,
                            tokens_seen=step * tcfg.batch_size * tcfg.context_len)
        small = {"n_checkpoints": n_small, "cpu_threads": torch.get_num_threads(), "seconds": {}}
        stabs = {}
        for label, dev, dt in (("cuda_fp32", device, None), ("cpu", "cpu", None), ("cuda_bf16", device, "bf16")):
            t0 = time.perf_counter()
            df = rh.scan(run, out=tmp / f"small_{label}", device=dev, dtype=dt, progress=False, report=False,
                         force=True, only_correct=False)
            small["seconds"][label] = time.perf_counter() - t0
            stabs[label] = df
        small["context_lens"] = list(json.loads((tmp / "small_cpu" / "scan.json").read_text())
                                     ["settings"]["context_lens"])
        small["fp32_max_abs"] = _table_diff(stabs["cpu"], stabs["cuda_fp32"])["max_abs"]
        small["bf16_per_metric"] = _table_diff(stabs["cpu"], stabs["cuda_bf16"])["per_metric"]
        res["small"] = small
        print(f"scan check, small preset: seconds {small['seconds']}")
    except Exception as e:  # noqa: BLE001 - reported in the table as ERROR
        res["error"] = f"{type(e).__name__}: {e}"
        print(f"scan check: {res['error']}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out.write_text(json.dumps(res, indent=2))
    return 0 if "error" not in res else 1


# the steps behind each summary row (a --only rerun reports the rows of unselected steps as
# NOT SELECTED, which neither passes nor fails)
ROW_STEPS = {"pytest_kernels": ("pytest_kernels",), "pytest_model": ("pytest_model",), "attention": ("attention",),
             "train": ("train",), "mfu": ("mfu", "mfu_compile"), "recurrent": ("recurrent",), "scan": ("scan",)}


def summarize(work: Path, card: str, out: Path | None, smoke: bool = False, only: str = "") -> dict:
    steps = _steps(work)
    selected = {x for x in only.split(",") if x}
    rows, raw = [], {}
    for key, fn in (("pytest_kernels", lambda w, s: _pytest(w, s, "pytest_kernels", "test_gpu_kernels.py", smoke)),
                    ("pytest_model", lambda w, s: _pytest(w, s, "pytest_model",
                                                          "test_gpu.py + test_detect_gpu.py", smoke)),
                    ("attention", _attention), ("train", _train), ("mfu", _mfu), ("recurrent", _recurrent)):
        row, res = fn(work, steps)
        if selected and not selected & set(ROW_STEPS[key]):
            row = {**row, "value": None, "status": "NOT SELECTED", "note": f"not in --only {only}"}
        rows.append(row)
        raw[key] = res
    scan_rows, raw["scan"] = _scan(work, steps)  # issue 18; absent when the step was not planned
    for row in scan_rows:
        if selected and "scan" not in selected:
            row = {**row, "value": None, "status": "NOT SELECTED", "note": f"not in --only {only}"}
        rows.append(row)
    targets = [r for r in rows if r["status"] not in ("INFO", "NOT SELECTED")]
    if smoke:
        ok = all(r["status"] != "ERROR" for r in targets)
    else:
        ok = all(r["status"] == "PASS" for r in targets)
    result = {"card": card, "smoke": smoke, "only": sorted(selected), "ok": ok,
              "time": time.strftime("%Y-%m-%d %H:%M:%S"),
              "env": _load(work / "env.json"), "steps": steps, "rows": rows, "raw": raw}
    print_table(result)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        print(f"wrote {out}")
    return result


def print_table(result: dict) -> None:
    env = result.get("env") or {}
    print(f"\ngpu_check summary: card={result['card']} device={env.get('device')} torch={env.get('torch')} "
          f"fla={env.get('fla')}" + ("  [CPU SMOKE: toy sizes, GPU targets not meaningful]" if result["smoke"] else ""))
    w = max(len(r["name"]) for r in result["rows"])
    vals = ["-" if r["value"] is None else str(r["value"]) for r in result["rows"]]
    vw = max(8, *(len(v) for v in vals))
    print(f"{'measure':<{w}}  {'value':>{vw}}  {'target':>9}  status")
    for r, v in zip(result["rows"], vals):
        print(f"{r['name']:<{w}}  {v:>{vw}}  {r['target']:>9}  {r['status']}")
        if r["note"]:
            print(f"{'':<{w}}    {r['note']}")
    print("steps: " + ", ".join(f"{k} rc={v['rc']} {v['seconds']}s" for k, v in result["steps"].items()))
    print(f"overall: {'OK' if result['ok'] else 'NOT OK'}")


def environment(out: Path) -> int:
    """Preflight: versions and imports, printed and written to ``out``; 1 when the library
    itself does not import (every later step would fail)."""
    import importlib
    import platform

    env = {"python": platform.python_version()}
    try:
        import torch

        env.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            env["device"] = torch.cuda.get_device_name(0)
            env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
            env["gpu_mem_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    except Exception as e:  # noqa: BLE001 - report, do not stop
        env["torch"] = f"import failed: {e!r}"
    mods = ["triton", "retrieval_heads", "transformer_lens", "nnsight", "flash_attn"]
    if env.get("cuda_available"):
        mods.append("fla")  # never imported on a CPU-only machine
    for name in mods:
        try:
            m = importlib.import_module(name)
            env[name] = getattr(m, "__version__", "ok")
        except Exception as e:  # noqa: BLE001
            env[name] = f"missing ({type(e).__name__}: {str(e)[:120]})"
    if "fla" not in env:
        env["fla"] = "not checked (no CUDA)"
    for k, v in env.items():
        print(f"{k:>18}: {v}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(env, indent=2))
    return 0 if not str(env["retrieval_heads"]).startswith("missing") else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default=None, help="preflight only: write versions and imports to this JSON")
    ap.add_argument("--work", default=None, help="the folder gpu_check.sh's steps wrote into")
    ap.add_argument("--card", default="gpu")
    ap.add_argument("--out", "--json", dest="out", default=None, help="summary JSON path")
    ap.add_argument("--smoke", action="store_true", help="CPU smoke run: only ERROR fails")
    ap.add_argument("--only", default="", help="comma-separated steps that ran (gpu_check.sh --only)")
    ap.add_argument("--scan-check", default=None, metavar="JSON",
                    help="the native-scan step (issue 18): CPU vs CUDA scans, written to this JSON")
    ap.add_argument("--scan-check-device", default="cuda",
                    help="device of --scan-check (cpu: run the comparison code on the CPU; figures meaningless)")
    args = ap.parse_args(argv)
    if args.env:
        return environment(Path(args.env))
    if args.scan_check:
        return scan_check(Path(args.scan_check), device=args.scan_check_device)
    if not args.work:
        ap.error("--work is required (or --env)")
    res = summarize(Path(args.work), args.card, Path(args.out) if args.out else None, smoke=args.smoke,
                    only=args.only)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
