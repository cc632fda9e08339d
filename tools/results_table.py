#!/usr/bin/env python3
"""Markdown tables of finished long-tailed runs, for docs/results-longtail.md.

usage: results_table.py RUN_DIR [RUN_DIR ...]

Prints one row per run (test top-1, many / medium / few-shot accuracy, ECE, in %), with a
De-confound-TDE run giving two rows: its alpha = 0 evaluation (the "deconfound_alpha0" record of
log.jsonl, the paper's De-confound row) and the TDE one with the alpha chosen on validation. Then
the mean and sample standard deviation of each row kind over the runs that differ only in seeds
(same dataset, method and epochs), and De-confound-TDE's top-1 minus each other method's, seed by
seed. Reads results.json, config.yaml and log.jsonl of each run.
"""
import json
import math
import os
import re
import sys

COLUMNS = ("top1", "many", "medium", "few", "ece")


def config_value(text, section, key):
    """The scalar `key:` under `section:` of the resolved config (flat two-level YAML)."""
    block = re.search(rf"^{section}:\n((?:[ \t]+.*\n?)*)", text, re.M)
    if not block:
        return None
    value = re.search(rf"^[ \t]+{key}:[ \t]*(.*)$", block.group(1), re.M)
    return value.group(1).strip().strip('"') if value else None


def read_run(run_dir):
    with open(os.path.join(run_dir, "results.json")) as f:
        results = json.load(f)
    with open(os.path.join(run_dir, "config.yaml")) as f:
        config = f.read()
    seed = config_value(config, "dataset", "split_seed")
    base = {"dataset": results["dataset"], "epochs": results["epochs"], "seed": seed,
            "run": os.path.basename(os.path.normpath(run_dir))}
    rows = []
    alpha = None
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if record.get("type") == "deconfound_alpha0":
                rows.append(dict(base, method="De-confound (alpha 0)", **pick(record["metrics"])))
            elif record.get("type") == "tde_alpha_chosen":
                alpha = record["alpha"]
    name = results["method"]
    if name == "deconfound_tde":
        name = "De-confound-TDE" + (f" (alpha {alpha:g})" if alpha is not None else "")
    rows.append(dict(base, method=name, **pick(results["test"])))
    return rows


def pick(metrics):
    return {k: (100 * metrics[k] if metrics.get(k) is not None else None) for k in COLUMNS}


def cell(v):
    return "-" if v is None else f"{v:.1f}"


def kind(row):
    """The method without the chosen alpha, which may differ between seeds."""
    return re.sub(r" \(alpha [0-9.]+\)$", "", row["method"])


def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) < 2:
        return f"{mean:.1f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.1f} ± {std:.1f}"


def main(run_dirs):
    rows = [row for d in run_dirs for row in read_run(d)]
    print("| run | dataset | epochs | seed | method | top-1 | many | medium | few | ECE |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['dataset']} | {r['epochs']} | {r['seed']} | {r['method']} | "
              + " | ".join(cell(r[k]) for k in COLUMNS) + " |")
    groups = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["epochs"], kind(r)), []).append(r)
    print()
    print("| dataset | epochs | method | runs | top-1 | many | medium | few | ECE |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (dataset, epochs, method), members in groups.items():
        print(f"| {dataset} | {epochs} | {method} | {len(members)} | "
              + " | ".join(mean_std([m[k] for m in members]) for k in COLUMNS) + " |")
    print_paired_differences(rows)


def print_paired_differences(rows):
    """Top-1 of De-confound-TDE minus each other method, seed by seed (same subset and training
    seed), where both ran: the comparison a subset-to-subset spread cannot blur."""
    by_key = {(r["dataset"], r["epochs"], r["seed"], kind(r)): r for r in rows}
    lines = []
    for (dataset, epochs, seed, method), tde in by_key.items():
        if method != "De-confound-TDE":
            continue
        for (d2, e2, s2, other), r in by_key.items():
            if (d2, e2, s2) == (dataset, epochs, seed) and other != method:
                lines.append(((dataset, epochs, other), tde["top1"] - r["top1"]))
    if not lines:
        return
    groups = {}
    for key, diff in lines:
        groups.setdefault(key, []).append(diff)
    print()
    print("| dataset | epochs | De-confound-TDE minus | seeds | top-1 difference |")
    print("|---|---|---|---|---|")
    for (dataset, epochs, other), diffs in groups.items():
        each = ", ".join(f"{d:+.1f}" for d in diffs)
        print(f"| {dataset} | {epochs} | {other} | {len(diffs)} | {mean_std(diffs)} ({each}) |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
