"""Look at a sweep's report and its MLflow comparison in a real browser (headless Chromium).

Serves the report folder on 127.0.0.1, starts ``mlflow ui`` on the sweep's store, and has
Chromium render (1) ``report.html``, (2) MLflow's compare-runs page for the sweep's trials and
(3) the experiment's page (its runs table), (4) the latest sweep run's page and
(5) a report figure in that run's artifact view. For each it saves a screenshot and checks the rendered DOM: the
report's tables and inline figures; the trials' run names, metric and param keys; the sweep
run's name, its summary metrics and its note. Prints what it found; exit 1 if something did
not render.

    apt-get install chromium        # Debian's package: /usr/bin/chromium
    python bench/browser_check.py --experiment lmblocks-default \\
        --report lmblocks-reports/lmblocks-default [--tracking-uri URI] [--out browser-check]

A sweep records to experiment ``lmblocks-<sweep name>`` unless given ``--experiment``; the
store is ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///$PWD/mlflow.db``.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    sys.exit("browser_check: no Chromium on PATH; install Debian's: apt-get install chromium")


def render(url: str, png: Path, budget_ms: int = 15000, window: str = "1400,2200") -> str:
    """Screenshot ``url`` and return its DOM after scripts ran (virtual time budget)."""
    common = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              f"--virtual-time-budget={budget_ms}", f"--window-size={window}"]
    subprocess.run([*common, f"--screenshot={png}", url], check=True, capture_output=True,
                   timeout=120)
    dom = subprocess.run([*common, "--dump-dom", url], check=True, capture_output=True,
                         text=True, timeout=120)
    return dom.stdout


def ink_share(png: Path) -> float:
    """Share of non-white pixels: a blank page scores ~0."""
    import matplotlib.image as mpimg

    img = mpimg.imread(png)[..., :3]
    return float((img.mean(axis=-1) < 0.97).mean())


def wait_http(url: str, seconds: float = 90) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"browser_check: {url} did not answer in {seconds:.0f} s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", required=True, help="e.g. lmblocks-default")
    p.add_argument("--report", required=True, help="folder holding report.html")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--out", default="browser-check")
    args = p.parse_args()
    from mlflow.tracking import MlflowClient

    from orchestrator.store import EXPERIMENT_KIND_TAG, RUNS_VIEW, VIEW
    from results.stores import ReportError, require_store, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    try:
        require_store(uri)  # looking creates nothing
    except ReportError as e:
        sys.exit(f"browser_check: {e}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ok = True

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=args.report)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    report_url = f"http://127.0.0.1:{httpd.server_address[1]}/report.html"
    dom = render(report_url, out / "report.png")
    rows = len(re.findall(r"<tr>", dom))
    images = len(re.findall(r'<img [^>]*src="data:image/png', dom))
    share = ink_share(out / "report.png")
    print(f"report.html: {rows} table rows, {images} inline figures, "
          f"{share:.1%} of the screenshot inked -> {out / 'report.png'}")
    ok &= rows > 0 and images > 0 and share > 0.02
    httpd.shutdown()

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(args.experiment)
    if exp is None:
        names = ", ".join(e.name for e in client.search_experiments())
        sys.exit(f"browser_check: unknown experiment {args.experiment!r} at {uri}; "
                 f"valid: {names or 'none'}")
    runs = client.search_runs([exp.experiment_id], "tags.`lmblocks.kind` = 'trial'",
                              max_results=20)
    sweeps = client.search_runs([exp.experiment_id], "tags.`lmblocks.kind` = 'sweep'",
                                order_by=["attributes.start_time DESC"], max_results=1)
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                           "--host", "127.0.0.1", "--port", str(port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        ids = json.dumps([r.info.run_id for r in runs])
        query = urllib.parse.urlencode({"runs": ids, "experiments": json.dumps([exp.experiment_id])})
        compare = f"http://127.0.0.1:{port}/#/compare-runs?{query}&workflowType=machine_learning"
        dom = render(compare, out / "mlflow_compare.png", budget_ms=30000)
        names = sum(r.info.run_name in dom for r in runs)
        metrics = [m for m in ("val_acc", "conc_act_after") if m in dom]
        share = ink_share(out / "mlflow_compare.png")
        print(f"MLflow compare-runs: {names}/{len(runs)} run names, metrics shown {metrics}, "
              f"{share:.1%} inked -> {out / 'mlflow_compare.png'}")
        params = [p for p in ("layers", "family", "frozen_params") if p in dom]
        explicit = ">none<" in dom.replace(" ", "")  # a run with no LM: layers/family "none"
        print(f"  params shown {params}; explicit 'none' values: {explicit}")
        ok &= names > 0 and "val_acc" in metrics and share > 0.02 and len(params) == 3
        # The experiment page, by the link the sweep prints (orchestrator.store.runs_page): the
        # runs table in the "Model training" view. The bare link is rendered too, for the
        # record: MLflow 3.17 opens it on the GenAI overview in a fresh browser whatever the
        # experiment's kind tag says (mlflow/mlflow#24498).
        page = f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/{RUNS_VIEW}"
        dom = render(page, out / "mlflow_experiment.png", budget_ms=30000)
        listed = any(s.info.run_name in dom for s in sweeps)
        genai = [w for w in ("Evaluation runs", "Agent versions") if w in dom]  # GenAI sidebar
        share = ink_share(out / "mlflow_experiment.png")
        print(f"MLflow experiment page (the sweep's link): sweep run listed {listed}, 'Run Name' "
              f"column {'Run Name' in dom}, GenAI views {genai or 'none'}, kind tag "
              f"{exp.tags.get(EXPERIMENT_KIND_TAG)!r}, {share:.1%} inked "
              f"-> {out / 'mlflow_experiment.png'}")
        ok &= listed and "Run Name" in dom and not genai
        bare = render(f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}",
                      out / "mlflow_experiment_bare.png", budget_ms=30000)
        print(f"  the bare link #/experiments/{exp.experiment_id}: "
              f"{'GenAI overview (MLflow UI default)' if 'Evaluation runs' in bare else 'runs'}")
        if sweeps:  # the sweep run: its name, summary metrics and findings note
            sweep = sweeps[0]
            page = (f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs/"
                    f"{sweep.info.run_id}{VIEW}")
            dom = render(page, out / "mlflow_sweep_run.png", budget_ms=30000)
            shown = [m for m in ("trials_finished", "trials_failed", "trial_hours", "best_val_acc")
                     if m in dom]
            found = {"name": sweep.info.run_name in dom, "note": "Findings" in dom}
            share = ink_share(out / "mlflow_sweep_run.png")
            print(f"MLflow sweep run {sweep.info.run_name!r}: metrics shown {shown}, {found}, "
                  f"{share:.1%} inked -> {out / 'mlflow_sweep_run.png'}")
            ok &= found["name"] and len(shown) >= 3 and share > 0.02
            # The report's figures, logged to the sweep run, previewed by MLflow's artifact view
            figure = "report/metric_vs_layer.png"
            page = (f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs/"
                    f"{sweep.info.run_id}/artifacts/{figure}{VIEW}")
            dom = render(page, out / "mlflow_report_figure.png", budget_ms=30000)
            previewed = bool(re.search(r'<img alt="report/metric_vs_layer.png" src="blob:', dom))
            print(f"MLflow artifact view of {figure}: image previewed {previewed} "
                  f"-> {out / 'mlflow_report_figure.png'}")
            ok &= previewed
    finally:
        ui.terminate()
        ui.wait(timeout=30)
    print("rendered" if ok else "NOT rendered")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
