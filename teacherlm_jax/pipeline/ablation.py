"""The ablation's statistics (a pipeline with `config.seeds`, configs/ablation.py): what each student's
accuracy is over seeds, and which differences to `answers_only` the seeds and questions support.

A student's runs are the eval steps `eval/<name>/seed<k>`. Per student: `accuracy_mean` and `accuracy_std`
(the sample standard deviation, ddof=1, over seeds; 0 with one seed), `seeds` {seed: accuracy} and
`vs_answers_only` {mean: the difference of mean accuracies, ci95: a 95% percentile interval from a bootstrap
that resamples the questions (paired: the same resampled questions for both students, as they answered the
same ones) and, independently per student, its seeds, with replacement}. An interval that excludes 0 is a
difference the runs support; one that contains 0 is not, whichever way the mean points. Accuracy is over
every question of every task (the tasks pooled).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from etils import epath

BASELINE = "answers_only"
RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def bootstrap_difference(a: np.ndarray, b: np.ndarray, *, resamples: int = RESAMPLES,
                         seed: int = BOOTSTRAP_SEED) -> tuple[float, tuple[float, float]]:
    """(mean accuracy of `a` - that of `b`, its 95% interval). `a` [seeds_a, questions] and `b` [seeds_b,
    questions]: 1 where that run answered that question right; columns are the same questions."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or not a.size or not b.size:
        raise ValueError(f"expected [seeds, questions] arrays over the same questions; got {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    questions = rng.integers(0, a.shape[1], size=(resamples, a.shape[1]))

    def resampled(x: np.ndarray) -> np.ndarray:  # [resamples]: mean accuracy over resampled seeds and questions
        per_question = x[rng.integers(0, x.shape[0], size=(resamples, x.shape[0]))].mean(axis=1)
        return np.take_along_axis(per_question, questions, axis=1).mean(axis=1)

    differences = resampled(a) - resampled(b)
    low, high = np.percentile(differences, [2.5, 97.5])
    return float(a.mean() - b.mean()), (float(low), float(high))


def student_runs(eval_names: list[str]) -> dict[str, dict[int, str]]:
    """{student: {seed: its eval run's name}} from run names `<student>/seed<k>` (others are left out)."""
    runs: dict[str, dict[int, str]] = {}
    for run in eval_names:
        student, _, seed = run.rpartition("/seed")
        if student and seed.isdigit():
            runs.setdefault(student, {})[int(seed)] = run
    return runs


def _correct(rows_by_task: dict[str, list[dict]]) -> dict[tuple[str, str], bool]:
    return {(task, r["id"]): r["prediction"] == r["answer"] for task, rows in rows_by_task.items() for r in rows}


def section(predictions: dict[str, dict[str, list[dict]]]) -> dict[str, Any]:
    """report.json's `ablation` {student: stats} and `ablation_per_family` {student: {family: accuracy, the
    mean over seeds}} from each eval run's predictions {run: {task: rows}}."""
    runs = student_runs(list(predictions))
    runs = {n: runs[n] for n in sorted(runs, key=lambda n: n != BASELINE)}  # the baseline first, then by name
    if not runs:
        return {"ablation": {}, "ablation_per_family": {}}
    correct = {student: {seed: _correct(predictions[run]) for seed, run in sorted(seeds.items())}
               for student, seeds in runs.items()}
    questions = sorted(set.intersection(*(set(c) for seeds in correct.values() for c in seeds.values())))
    matrix = {student: np.array([[c[q] for q in questions] for c in seeds.values()], dtype=np.float64)
              for student, seeds in correct.items()}
    ablation: dict[str, Any] = {}
    for student, m in matrix.items():
        accuracy = m.mean(axis=1)
        versus = None
        if BASELINE in matrix and student != BASELINE:
            mean, ci95 = bootstrap_difference(m, matrix[BASELINE])
            versus = {"mean": mean, "ci95": list(ci95)}
        ablation[student] = {
            "accuracy_mean": float(accuracy.mean()),
            "accuracy_std": float(accuracy.std(ddof=1)) if len(accuracy) > 1 else 0.0,
            "seeds": {seed: float(a) for seed, a in zip(correct[student], accuracy)},
            "vs_answers_only": versus,
        }
    per_family = {student: _per_family([predictions[run] for run in seeds.values()]) for student, seeds in runs.items()}
    return {"ablation": ablation, "ablation_per_family": per_family}


def _per_family(runs: list[dict[str, list[dict]]]) -> dict[str, float]:
    """Accuracy per family (a row's subject, else its task), the mean over runs (seeds)."""
    hits: dict[str, list[float]] = {}
    for rows_by_task in runs:
        for task, rows in rows_by_task.items():
            for r in rows:
                hits.setdefault(r.get("subject") or task, []).append(float(r["prediction"] == r["answer"]))
    return {family: sum(h) / len(h) for family, h in sorted(hits.items())}


def verdict(versus: dict[str, Any] | None) -> str:
    if versus is None:
        return "baseline"
    low, high = versus["ci95"]
    if low > 0:
        return "supported: better"
    if high < 0:
        return "supported: worse"
    return "not supported (the interval contains 0)"


def markdown(section_: dict[str, Any], chance: float | None) -> list[str]:
    """report.md's ablation section: the table with intervals and verdicts, and accuracy per family."""
    ablation, per_family = section_["ablation"], section_["ablation_per_family"]
    lines = ["## Ablation: accuracy over seeds", "",
             "Mean and standard deviation over training seeds; the difference to answers_only with its 95% "
             f"interval (bootstrap over questions and seeds, {RESAMPLES} resamples). A difference is supported "
             "when its interval excludes 0." + (f" Chance: {chance:.3f}." if chance is not None else ""), "",
             "| student | accuracy | std | per seed | vs answers_only | 95% interval | verdict |",
             "|---|---|---|---|---|---|---|"]
    for student, s in ablation.items():
        seeds = ", ".join(f"{seed}: {a:.3f}" for seed, a in s["seeds"].items())
        versus = s["vs_answers_only"]
        diff = f"{versus['mean']:+.3f}" if versus else "-"
        interval = f"[{versus['ci95'][0]:+.3f}, {versus['ci95'][1]:+.3f}]" if versus else "-"
        lines.append(f"| {student} | {s['accuracy_mean']:.3f} | {s['accuracy_std']:.3f} | {seeds} | {diff} | "
                     f"{interval} | {verdict(versus)} |")
    supported = [n for n, s in ablation.items() if verdict(s["vs_answers_only"]).startswith("supported")]
    unsupported = [n for n, s in ablation.items() if verdict(s["vs_answers_only"]).startswith("not")]
    lines += ["", f"Differences to answers_only the intervals support: {', '.join(supported) or 'none'}; "
                  f"not supported: {', '.join(unsupported) or 'none'}.", "",
              "![ablation](ablation.png)", ""]
    families = sorted({f for by_family in per_family.values() for f in by_family})
    lines += ["### Accuracy per family (mean over seeds)", "", "| family | " + " | ".join(per_family) + " |",
              "|---|" + "---|" * len(per_family)]
    lines += [f"| {family} | " + " | ".join(f"{by_family[family]:.2f}" if family in by_family else "-"
                                           for by_family in per_family.values()) + " |" for family in families]
    return lines + [""]


def chart(ablation: dict[str, Any], chance: float | None, out: epath.Path) -> None:
    """ablation.png: each student's mean accuracy, error bars of one standard deviation over seeds, each seed a dot."""
    from teacherlm_jax.figures import pyplot
    from teacherlm_jax.paths import write_figure

    plt = pyplot()
    names = list(ablation)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 4))
    means, stds = [ablation[n]["accuracy_mean"] for n in names], [ablation[n]["accuracy_std"] for n in names]
    ax.bar(range(len(names)), means, yerr=stds, capsize=4, color="tab:blue", alpha=0.7)
    for i, n in enumerate(names):
        seeds = list(ablation[n]["seeds"].values())
        ax.plot([i] * len(seeds), seeds, "k.", markersize=5)
        ax.text(i, max([means[i] + stds[i], *seeds]) + 0.02, f"{means[i]:.3f}", ha="center", fontsize=7)
    if chance is not None:
        ax.axhline(chance, color="red", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set(ylabel="accuracy", ylim=(0, 1),
           title="Ablation at equal compute: mean ± std over seeds (dots: seeds, red: chance)")
    fig.tight_layout()
    write_figure(fig, out, dpi=100)
    plt.close(fig)
