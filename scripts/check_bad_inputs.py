"""Throws bad inputs and faults at the `idfer` command and says how each ends.

    python scripts/check_bad_inputs.py [--kinds=images,cli,runs] [--only=SUBSTRING] [--jobs=2]

Every case (`scripts/bad_inputs/<kind>.py`) runs `idfer` as a subprocess from a fresh folder and gets a
verdict:
- clear: exit code as expected, the last line of stderr is `idfer: error: ...` containing the expected
  fragment, and no traceback (or, for a case whose right answer is success, its check passes);
- traceback: a Python traceback reached the user;
- silent: the run "succeeded" (or failed) without saying what the case expects, or its check failed;
- misleading: a clean one-line error, but not the one the case expects.
It prints a table (case, exit code, first line of stderr, verdict) and exits 1 unless every case is clear.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.bad_inputs import Case  # noqa: E402

KINDS = ("images", "cli", "runs")
SMOKE = str(REPO / "configs" / "baseline_synthetic.py") + ":smoke"


class Context:
    """What a case builds on: its own temp folder, the prepared smoke data, the run's environment."""

    def __init__(self, tmp: pathlib.Path, shared: pathlib.Path, env: dict[str, str]):
        self.tmp = tmp
        self.shared = shared  # prepared once for all cases: tfds/ (synthetic smoke)
        self.env = env
        self.smoke_data_dir = str(shared / "tfds")

    def smoke(self, workdir: str | None = None, *extra: str) -> list[str]:
        """`--config=<smoke> --workdir=... --config.data.data_dir=<prepared>` plus a tiny budget."""
        workdir = workdir or str(self.tmp / "run")
        defaults = [f"--config.data.data_dir={self.smoke_data_dir}", "--config.train.num_steps=4",
                    "--config.train.checkpoint_every=2", "--config.train.log_every=2"]
        given = {a.split("=", 1)[0] for a in extra}  # an override given twice is refused: extras win
        return [f"--config={SMOKE}", f"--workdir={workdir}",
                *(d for d in defaults if d.split("=", 1)[0] not in given), *extra]

    def idfer(self, args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(idfer_command() + args, capture_output=True, text=True, env=self.env,
                              cwd=self.tmp, timeout=timeout)


def idfer_command() -> list[str]:
    return [sys.executable, "-m", "idfer_jax.main"]


def prepare_shared(shared: pathlib.Path, env: dict[str, str]) -> None:
    code = ("import tensorflow_datasets as tfds, idfer_jax.data.synthetic_faces; "
            f"tfds.builder('synthetic_faces/smoke', data_dir={str(shared / 'tfds')!r})"
            ".download_and_prepare(file_format='array_record')")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)


def verdict(case: Case, proc: subprocess.CompletedProcess, problem: str | None) -> str:
    err = proc.stderr or ""
    if "Traceback (most recent call last)" in err:
        return "traceback"
    if problem:
        return "silent"
    if proc.returncode != case.exit_code:
        return "silent"
    if case.exit_code == 0:
        return "clear"
    lines = [line for line in err.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if not last.startswith("idfer: error:"):
        return "silent"
    if case.expect and case.expect.lower() not in err.lower():
        return "misleading"
    return "clear"


def run_case(case: Case, shared: pathlib.Path, env: dict[str, str]) -> dict:
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="case_"))
    ctx = Context(tmp, shared, env)
    started = time.time()
    try:
        for args in (case.before(ctx) if case.before else []):
            proc = ctx.idfer(args)
            if proc.returncode:
                return row(case, proc, "setup failed: " + _first_line(proc.stderr), started)
        args = case.argv(ctx)
        run_env = {**env, **case.env}
        if case.signal_after is not None:
            p = subprocess.Popen(idfer_command() + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=run_env, cwd=tmp)
            time.sleep(case.signal_after)
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=120)
            proc = subprocess.CompletedProcess(p.args, p.returncode, out, err)
        else:
            proc = subprocess.run(idfer_command() + args, capture_output=True, text=True, env=run_env,
                                  cwd=tmp, input=case.stdin, timeout=600)
        try:
            problem = case.check(ctx, proc) if case.check else None
        except Exception as e:  # noqa: BLE001  (a check that cannot even look is a failed case)
            problem = f"check failed: {type(e).__name__}: {e}"
        return row(case, proc, verdict(case, proc, problem), started, problem)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _first_line(text: str) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("idfer: error:")]
    return (errors or lines or [""])[0][:150]


def row(case: Case, proc, verdict_: str, started: float, problem: str | None = None) -> dict:
    return {"case": case.name, "exit": proc.returncode, "stderr": _first_line(proc.stderr),
            "verdict": verdict_, "problem": problem, "seconds": round(time.time() - started, 1),
            "stderr_tail": (proc.stderr or "").splitlines()[-40:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--only", default="", help="run only the cases whose name contains this")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    cases: list[tuple[str, Case]] = []
    for kind in args.kinds.split(","):
        module = importlib.import_module(f"scripts.bad_inputs.{kind}")
        cases += [(kind, c) for c in module.CASES if args.only in c.name]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    shared = pathlib.Path(tempfile.mkdtemp(prefix="bad_inputs_"))
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(shared / "jax_cache"))
    try:
        prepare_shared(shared, env)
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(lambda kc: {"kind": kc[0], **run_case(kc[1], shared, env)}, cases))
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    print("| kind | case | exit | first line of stderr | verdict |")
    print("|---|---|---|---|---|")
    for r in rows:
        detail = f" ({r['problem']})" if r["problem"] else ""
        print(f"| {r['kind']} | {r['case']} | {r['exit']} | {r['stderr'].replace('|', '/')} | "
              f"{r['verdict']}{detail} |")
    for r in rows:
        if r["verdict"] != "clear":
            print(f"\n--- stderr of '{r['case']}' ({r['verdict']}), last lines:")
            print("\n".join(r["stderr_tail"]))
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("clear", "traceback", "silent", "misleading")}
    counts["setup failed"] = sum(r["verdict"].startswith("setup failed") for r in rows)
    print("\n" + ", ".join(f"{n} {v}" for v, n in counts.items()) + f" of {len(rows)} cases")
    return 0 if counts["clear"] == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
