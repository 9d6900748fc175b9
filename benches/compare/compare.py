"""partita against Dask, Polars and NumPy on the same data, in the same run.

Run through `benches/compare/run` (it prepares the virtualenv); see BENCHMARKS.md.

Every (engine, group of workloads) pair runs in a fresh child process, once per round; the
engines take turns within a round and the order rotates between rounds, so drift on the
machine (thermal, page cache, a neighbour) spreads over all engines alike. The child starts
its engine (a cluster, if any) untimed, then times each workload from graph construction to
the result in hand, while a sampler thread records the resident memory of the child and all
its descendants (cluster workers included) every 10 ms.

Answers: frame results from every engine are compared with each other (polars is the
reference) on the same parquet files; array engines draw their own random numbers, so each
array workload is first run on one shared NumPy input and compared with NumPy, and the
full-size answer is checked against its expected statistics. Any disagreement is printed as
MISMATCH and the command exits with status 1.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import engines as E  # noqa: E402


# --------------------------------------------------------------------------------------
# the child: one engine, one group of workloads, one round


class PeakRss:
    """Highest resident set size of this process plus its descendants, sampled.

    A sample reads `/proc/PID/statm` of each process known (tens of microseconds); the list
    of descendants, which psutil builds by scanning every process on the machine (over a
    millisecond), is refreshed only every tenth sample, so the sampler takes about 1% of a
    core rather than 15% from the workload it measures. Processes live for the whole timed
    part (clusters start before it), so a 100 ms old list misses nothing."""

    def __init__(self, interval=0.01, rescan_every=10):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.rescan_every = rescan_every
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.pids = [self.proc.pid]
        self.samples = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rescan(self):
        try:
            self.pids = [self.proc.pid] + [p.pid for p in self.proc.children(recursive=True)]
        except Exception:
            pass

    def _sample(self):
        if self.samples % self.rescan_every == 0:
            self._rescan()
        self.samples += 1
        total = 0
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/statm", "rb") as f:
                    total += int(f.read().split()[1]) * self.page
            except (OSError, ValueError, IndexError):
                total += self._rss(pid)  # not Linux, or the process is gone
        self.peak = max(self.peak, total)

    @staticmethod
    def _rss(pid):
        import psutil

        try:
            return psutil.Process(pid).memory_info().rss
        except Exception:
            return 0

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()


def emit(record):
    print("RESULT " + json.dumps(record), flush=True)


def child(spec_path):
    with open(spec_path) as f:
        spec = json.load(f)
    s = spec["sizes"]
    group = spec["group"]
    # Cluster workers (separate interpreters) import the workloads' functions by module
    # name, as they would a user's: put this folder on their path.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")]))
    engine = E.make_engine(spec["engine"])
    selected = [w for w in E.workloads(s) if w.name in spec["workloads"]]
    engine.start(memory_limit=s["memory_limit"] if group == "memory" else 0)
    try:
        for w in selected:
            record = {"workload": w.name, "engine": engine.name, "group": group}
            try:
                run_one(engine, w, spec, record)
            except Exception as exc:  # the engine's own error, reported, not fatal
                record["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            emit(record)
    finally:
        engine.stop()


def run_one(engine, w, spec, record):
    s = spec["sizes"]
    check = spec["check"]
    if w.group in ("arrays", "memory"):
        if check:
            import numpy as np

            want = w.body(E.NumpyEngine(), w.small)
            got = w.body(engine, engine.from_numpy(w.small, w.small_chunks))
            if not np.allclose(np.asarray(got), np.asarray(want), rtol=1e-9, atol=1e-9):
                record["mismatch"] = f"on a shared {w.small.shape} input: {got!r:.80} != NumPy's {want!r:.80}"
        with PeakRss() as peak:
            start = time.perf_counter()
            x = engine.read_zarr(spec["array_zarr"]) if getattr(w, "stored", False) else w.make(engine)
            result = w.body(engine, x)
            record["seconds"] = time.perf_counter() - start
        record["peak_bytes"] = peak.peak
        bad = w.expect(result, s)
        if bad:
            record["mismatch"] = f"full size: {bad}"
    elif w.group == "tasks":
        with PeakRss() as peak:
            start = time.perf_counter()
            result = w.run(engine)
            record["seconds"] = time.perf_counter() - start
        record["peak_bytes"] = peak.peak
        bad = w.expect(result)
        if bad:
            record["mismatch"] = bad
    elif w.group == "frames":
        with PeakRss() as peak:
            start = time.perf_counter()
            result = engine.group_by(w, engine.read(spec["groupby_dir"]))
            record["seconds"] = time.perf_counter() - start
        record["peak_bytes"] = peak.peak
        if check:
            answer = E.normalize(result, w.keys)
            path = os.path.join(spec["answers"], f"{slug(w.name)}--{engine.name}.parquet")
            answer.write_parquet(path)
            record["answer"] = path
    elif w.group == "joins":
        d = spec["join_dir"]
        with PeakRss() as peak:
            start = time.perf_counter()
            x = engine.read(os.path.join(d, "x"))
            right = engine.read(os.path.join(d, w.right))
            result = engine.join(w, x, right)
            record["seconds"] = time.perf_counter() - start
        record["peak_bytes"] = peak.peak
        if check:
            record["fingerprint"] = E.join_fingerprint(result)
    else:
        raise ValueError(f"unknown group {w.group}")


def slug(name):
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")[:60]


# --------------------------------------------------------------------------------------
# the parent: data, rounds, answers, report


def run_child(spec, timeout, log):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
        path = f.name
    env = dict(os.environ)
    if spec["engine"] == "numpy":
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = "1"
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--child", path],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
        start_new_session=True,  # its cluster processes die with it on a timeout
    )
    records = []
    timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
    timer.start()
    try:
        for line in proc.stdout:
            if line.startswith("RESULT "):
                records.append(json.loads(line[len("RESULT ") :]))
        code = proc.wait()
    finally:
        timer.cancel()
        os.unlink(path)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of a cluster, if any
        except ProcessLookupError:
            pass
    done = {r["workload"] for r in records}
    for name in spec["workloads"]:
        if name not in done:
            why = "timed out" if code == -signal.SIGKILL else f"child exited with status {code}"
            records.append(
                {"workload": name, "engine": spec["engine"], "group": spec["group"], "error": f"{why} (see log)"}
            )
    return records


def machine():
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import psutil

    versions = {}
    for mod in ("partita", "dask", "distributed", "polars", "numpy"):
        try:
            versions[mod] = importlib.metadata.version(mod)
        except Exception:
            versions[mod] = "not installed"
    try:
        rev = subprocess.run(
            ["git", "-C", HERE, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        rev = "?"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "versions": versions,
        "commit": rev,
    }


def reference_engine(engine):
    return "partita-cluster" if engine in ("dask-distributed", "partita-cluster") else "partita-threads"


def fmt_s(x):
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def report(results, order, engines, m, args, mismatches):
    lines = []
    lines.append(
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; {m['os']}; Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + f"; partita commit {m['commit']}."
    )
    lines.append("")
    lines.append(f"Command: `benches/compare/run {' '.join(args)}`".rstrip())
    lines.append("")
    lines.append(
        "| workload | engine | median s | min-max s | runs | peak RSS MiB | time / partita's |"
    )
    lines.append("|---|---|---:|---:|---:|---:|---:|")
    for w in order:
        for e in engines:
            r = results.get((w, e))
            if r is None:
                continue
            if r["seconds"]:
                med = statistics.median(r["seconds"])
                ref = results.get((w, reference_engine(e)))
                ratio = ""
                if ref and ref["seconds"]:
                    ratio = f"{med / statistics.median(ref['seconds']):.2f}x"
                peak = max(r["peaks"]) / 2**20 if r["peaks"] else 0
                lines.append(
                    f"| {w} | {e} | {fmt_s(med)} | {fmt_s(min(r['seconds']))}-{fmt_s(max(r['seconds']))}"
                    f" | {len(r['seconds'])} | {peak:.0f} | {ratio} |"
                )
            else:
                err = (r["errors"][0] if r["errors"] else "no result").replace("|", "/")
                lines.append(f"| {w} | {e} | failed | {err[:120]} | 0 | | |")
    lines.append("")
    lines.append(
        "time / partita's: the engine's median over partita's on the same workload (partita-cluster's "
        "for the distributed engines, partita-threads' otherwise); above 1x partita is faster."
    )
    if mismatches:
        lines.append("")
        lines.append("Answers that differ:")
        lines.extend(f"- MISMATCH {x}" for x in mismatches)
    return "\n".join(lines) + "\n"


def plot(results, order_by_group, engines, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for group, names in order_by_group.items():
        rows = [n for n in names if any(results.get((n, e), {}).get("seconds") for e in engines)]
        if not rows:
            continue
        present = [e for e in engines if any(results.get((n, e), {}).get("seconds") for n in rows)]
        fig, ax = plt.subplots(figsize=(10, 0.6 * len(rows) * max(len(present), 2) / 2 + 1.5))
        height = 0.8 / len(present)
        for i, e in enumerate(present):
            ys, xs = [], []
            for j, n in enumerate(rows):
                r = results.get((n, e))
                if r and r["seconds"]:
                    ys.append(j + i * height)
                    xs.append(statistics.median(r["seconds"]))
            ax.barh(ys, xs, height=height, label=e)
        ax.set_yticks([j + 0.4 - height / 2 for j in range(len(rows))])
        ax.set_yticklabels([n[:48] for n in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("median wall time, seconds (log scale)")
        ax.set_title(f"{group}: lower is better")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{group}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def check_answers(results, order):
    """Frame answers against polars', join fingerprints against each other, plus the
    children's own checks."""
    import polars as pl

    mismatches = []
    for (w, e), r in sorted(results.items()):
        mismatches.extend(f"{w} / {e}: {x}" for x in r["mismatches"])
    for w in order:
        answers = {e: r["answer"] for (ww, e), r in results.items() if ww == w and r.get("answer")}
        if answers:
            ref_engine = "polars" if "polars" in answers else sorted(answers)[0]
            want = pl.read_parquet(answers[ref_engine])
            for e, path in sorted(answers.items()):
                if e != ref_engine:
                    bad = E.compare_frames(pl.read_parquet(path), want)
                    if bad:
                        mismatches.append(f"{w} / {e}: {bad} (against {ref_engine})")
        prints = {e: r["fingerprint"] for (ww, e), r in results.items() if ww == w and r.get("fingerprint")}
        if prints:
            ref_engine = "polars" if "polars" in prints else sorted(prints)[0]
            for e, fp in sorted(prints.items()):
                if fp != prints[ref_engine]:
                    mismatches.append(
                        f"{w} / {e}: rows, sum v1, sum v2, nulls in v2 = {fp}, {ref_engine} says {prints[ref_engine]}"
                    )
    return mismatches


def update_benchmarks_md(table):
    path = os.path.join(HERE, "..", "..", "BENCHMARKS.md")
    path = os.path.normpath(path)
    with open(path) as f:
        text = f.read()
    begin, end = "<!-- results:begin -->", "<!-- results:end -->"
    if begin not in text or end not in text:
        raise SystemExit(f"{path} has no {begin} ... {end} section to replace")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(head + begin + "\n" + table + end + tail)
    os.replace(tmp, path)
    print(f"updated {path}")


def write_results(out_dir, results, order, engine_names, m, s, mismatches, command=None):
    command = sys.argv[1:] if command is None else command
    table = report(results, order, engine_names, m, command, mismatches)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(table)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(
            {
                "machine": m,
                "sizes": s,
                "command": command,
                "results": [{"workload": w, "engine": e, **r} for (w, e), r in results.items()],
            },
            f,
            indent=1,
        )
    return table


def report_only(out_dir, update):
    """The table, answer checks and plots again from a results folder's results.json (an
    interrupted run keeps the rounds it finished)."""
    with open(os.path.join(out_dir, "results.json")) as f:
        data = json.load(f)
    results = {}
    for r in data["results"]:
        r = dict(r)
        results[(r.pop("workload"), r.pop("engine"))] = r
    known = E.workloads(data["sizes"])
    present = {w for w, _ in results}
    order = [w.name for w in known if w.name in present]
    groups = {}
    for w in known:
        if w.name in present:
            groups.setdefault(w.group, []).append(w.name)
    engine_names = [e for e in E.ENGINES if any(e == ee for _, ee in results)]
    command = data.get("command") or ["(command not recorded)"]
    mismatches = check_answers(results, order)
    table = write_results(out_dir, results, order, engine_names, data["machine"], data["sizes"], mismatches, command)
    plot(results, groups, engine_names, out_dir)
    print(table)
    if update:
        update_benchmarks_md(table)
    return 1 if mismatches else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="rounds: timed runs per workload and engine (default 5)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: check that everything runs")
    p.add_argument("--large", action="store_true", help="H2O tables of 1e8 rows instead of 1e7")
    p.add_argument("--only", default=None, help="regular expression: run the workloads whose name matches")
    p.add_argument("--engines", default=",".join(E.ENGINES), help="comma-separated engines (default: all)")
    p.add_argument("--groups", default="arrays,tasks,frames,joins,memory", help="comma-separated groups")
    p.add_argument("--results", default=None, help="results folder (default benches/compare/results/<time>)")
    p.add_argument("--data", default=None, help="data folder (default $PARTITA_CACHE/bench-data)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds one child may take (default 3600; 900 for the memory group)")
    p.add_argument("--update-benchmarks-md", action="store_true", help="write the table into BENCHMARKS.md")
    p.add_argument(
        "--report-only", action="store_true", help="rebuild the table and plots from --results DIR/results.json"
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child)
    if args.report_only:
        if not args.results:
            raise SystemExit("--report-only needs --results DIR")
        return report_only(args.results, args.update_benchmarks_md)

    s = E.sizes(args.quick, args.large)
    engine_names = [e for e in args.engines.split(",") if e]
    for e in engine_names:
        if e not in E.ENGINES:
            raise SystemExit(f"unknown engine {e!r}; known: {', '.join(E.ENGINES)}")
    groups = [g for g in args.groups.split(",") if g]
    all_workloads = [w for w in E.workloads(s) if w.group in groups]
    if args.only:
        all_workloads = [w for w in all_workloads if re.search(args.only, w.name)]
    if not all_workloads:
        raise SystemExit("no workload selected")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = args.results or os.path.join(HERE, "results", stamp)
    answers = os.path.join(out_dir, "answers")
    os.makedirs(answers, exist_ok=True)
    cache = os.environ.get("PARTITA_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "partita"))
    data = args.data or os.path.join(cache, "bench-data")
    os.makedirs(data, exist_ok=True)

    import datagen

    groupby_dir = join_dir = None
    if any(w.group == "frames" for w in all_workloads):
        print(f"==> H2O group-by table, {s['rows']:.0e} rows", flush=True)
        groupby_dir = datagen.groupby_table(data, s["rows"])
    if any(w.group == "joins" for w in all_workloads):
        print(f"==> H2O join tables, {s['rows']:.0e} rows", flush=True)
        join_dir = datagen.join_tables(data, s["rows"])
    array_zarr = None
    if any(getattr(w, "stored", False) for w in all_workloads):
        print(f"==> stored array, {s['square']}^2 float64 as Zarr", flush=True)
        array_zarr = datagen.stored_array(data, s["square"], s["square_chunk"])

    # which engines run which group
    plan = []
    for g in groups:
        names = [w.name for w in all_workloads if w.group == g]
        if names:
            es = [e for e in engine_names if g in E.make_engine_groups(e)]
            if es:
                plan.append((g, names, es))

    results = {}
    m = machine()
    log_path = os.path.join(out_dir, "children.log")
    order = [w.name for w in all_workloads]
    with open(log_path, "w") as log:
        for rnd in range(args.runs):
            for g, names, es in plan:
                rotated = es[rnd % len(es) :] + es[: rnd % len(es)]
                for e in rotated:
                    spec = {
                        "engine": e,
                        "group": g,
                        "workloads": names,
                        "sizes": s,
                        "check": rnd == 0,
                        "answers": answers,
                        "groupby_dir": groupby_dir,
                        "join_dir": join_dir,
                        "array_zarr": array_zarr,
                    }
                    print(f"==> round {rnd + 1}/{args.runs}: {g} on {e}", flush=True)
                    log.write(f"==> round {rnd + 1}: {g} on {e}\n")
                    log.flush()
                    # a cluster that thrashes against its memory limit may never finish
                    timeout = min(args.timeout, 900) if g == "memory" else args.timeout
                    for r in run_child(spec, timeout, log):
                        slot = results.setdefault(
                            (r["workload"], e),
                            {"seconds": [], "peaks": [], "errors": [], "mismatches": []},
                        )
                        if "error" in r:
                            slot["errors"].append(r["error"])
                            print(f"    {r['workload']}: ERROR {r['error']}", flush=True)
                            continue
                        slot["seconds"].append(r["seconds"])
                        slot["peaks"].append(r.get("peak_bytes", 0))
                        if r.get("mismatch"):
                            slot["mismatches"].append(r["mismatch"])
                        for k in ("answer", "fingerprint"):
                            if k in r:
                                slot[k] = r[k]
                        print(
                            f"    {r['workload']}: {r['seconds']:.3f} s, peak {r.get('peak_bytes', 0) / 2**20:.0f} MiB",
                            flush=True,
                        )

            # after each round, what is known so far (an interrupted run keeps it)
            write_results(out_dir, results, order, engine_names, m, s, [])

    mismatches = check_answers(results, order)
    table = write_results(out_dir, results, order, engine_names, m, s, mismatches)
    plots = plot(results, {g: names for g, names, _ in plan}, engine_names, out_dir)
    print()
    print(table)
    print(f"results, plots and logs in {out_dir}: results.md, results.json, " + ", ".join(os.path.basename(p) for p in plots))
    if args.update_benchmarks_md:
        update_benchmarks_md(table)
    if mismatches:
        print(f"{len(mismatches)} MISMATCH(ES): engines disagree, see above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
