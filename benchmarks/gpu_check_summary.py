"""Summary of ``benchmarks/gpu_check.sh``: reads what its steps left in a work folder, prints
one table of measured values against the targets of issue 8 (PASS / FAIL / ERROR) and
writes one JSON with the table, the steps and every step's raw result.

    python benchmarks/gpu_check_summary.py --work /tmp/rh_gpu_check.X --card h100 \
        --out benchmarks/results/gpu_check_h100.json
    python benchmarks/gpu_check_summary.py --env /tmp/env.json     # the preflight step

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


# the steps behind each summary row (a --only rerun reports the rows of unselected steps as
# NOT SELECTED, which neither passes nor fails)
ROW_STEPS = {"pytest_kernels": ("pytest_kernels",), "pytest_model": ("pytest_model",), "attention": ("attention",),
             "train": ("train",), "mfu": ("mfu", "mfu_compile"), "recurrent": ("recurrent",)}


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
    args = ap.parse_args(argv)
    if args.env:
        return environment(Path(args.env))
    if not args.work:
        ap.error("--work is required (or --env)")
    res = summarize(Path(args.work), args.card, Path(args.out) if args.out else None, smoke=args.smoke,
                    only=args.only)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
