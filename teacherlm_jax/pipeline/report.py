"""The pipeline's report: WORKDIR/report.json, report.md, loss_curves.png, accuracy.png.

report.json: `tasks` (the test sets), `accuracy` {model: {task: accuracy}}, `students` {name: accuracy, the
mean over tasks}, `teacher` (the evaluated teacher's, likewise; None without one), `best_augmented` and its
`gain` over `answers_only`, `chance`, `test_questions` {task: count}, `per_subject` {model: {subject: accuracy}}
(MMLU's subjects, the suite's families; a task without subjects counts as one), `augmentation` {kind: records,
the summary's quality counts and, where the data has gold texts (the demo's suite), how often the teacher's
text equals the gold one (`exact`) and, for cot, ends on the right answer (`answer`)}, `eval_modes`, `timings`
(seconds per step) and `total_seconds`. With `config.seeds` (an ablation, configs/ablation.py) also `ablation`
and `ablation_per_family` (teacherlm_jax/pipeline/ablation.py), first in report.md, and ablation.png.
"""
from __future__ import annotations

import json
from typing import Any

import ml_collections
from etils import epath

from teacherlm_jax import report_json
from teacherlm_jax.figures import pyplot
from teacherlm_jax.paths import read_text, write_atomic, write_figure
from teacherlm_jax.pipeline import ablation
from teacherlm_jax.pipeline.plan import Step, students_own_augment

ANSWER_PHRASE = "So the answer is {}."
BASELINE = "answers_only"


def _read_jsonl(path: epath.Path) -> list[dict]:
    return [json.loads(line) for line in read_text(path).splitlines() if line.strip()]


def augmentation_quality(outputs: dict[str, list[epath.Path]]) -> dict[str, dict[str, Any]]:
    """Per kind: records, the augment summary's quality counts, and `exact` / `answer` where gold texts exist."""
    quality: dict[str, dict[str, Any]] = {}
    for kind, directories in outputs.items():
        rows = [row for d in directories for part in sorted(d.glob("part-*.jsonl")) for row in _read_jsonl(part)]
        stats: dict[str, Any] = {"records": len(rows)}
        summaries = [json.loads(read_text(d / "summary.json")) for d in directories if (d / "summary.json").exists()]
        counts = [s["quality"][kind] for s in summaries if kind in s.get("quality", {})]
        if counts:
            stats["quality"] = {k: sum(c[k] for c in counts) for k, v in counts[0].items() if isinstance(v, int)}
        golds = [(row, (row[kind] if isinstance(row[kind], str) else (row[kind] or [""])[0]) or "")
                 for row in rows if (row.get("gold") or {}).get(kind)]
        if golds:
            stats["exact"] = sum(t.strip() == row["gold"][kind].strip() for row, t in golds) / len(golds)
            if kind == "cot":
                stats["answer"] = sum(t.strip().endswith(ANSWER_PHRASE.format(row["choices"][row["answer"]]))
                                      for row, t in golds) / len(golds)
        quality[kind] = stats
    return quality


def per_subject(predictions: list[dict], task: str) -> dict[str, float]:
    groups: dict[str, list[bool]] = {}
    for p in predictions:
        groups.setdefault(p.get("subject") or task, []).append(p["prediction"] == p["answer"])
    return {subject: sum(hits) / len(hits) for subject, hits in sorted(groups.items())}


def samples(outputs: dict[str, list[epath.Path]], per_subject_count: int = 1, limit: int = 12) -> list[dict[str, Any]]:
    """The first augmented record of each subject (at most `limit`), the teacher's texts beside any gold ones."""
    by_id: dict[str, dict[str, Any]] = {}
    for kind, directories in outputs.items():
        for d in directories:
            for part in sorted(d.glob("part-*.jsonl")):
                for row in _read_jsonl(part):
                    entry = by_id.setdefault(row["id"], {"id": row["id"], "subject": row.get("subject"),
                                                         "question": row["question"], "choices": row["choices"],
                                                         "answer": row["answer"], "teacher": {}, "gold": {}})
                    entry["teacher"][kind] = row[kind]
                    entry["gold"][kind] = (row.get("gold") or {}).get(kind)
    chosen, seen = [], {}
    for entry in by_id.values():
        if seen.get(entry["subject"], 0) < per_subject_count and len(chosen) < limit:
            seen[entry["subject"]] = seen.get(entry["subject"], 0) + 1
            chosen.append(entry)
    return chosen


def _loss_curves(runs: dict[str, epath.Path], out: epath.Path) -> None:
    plt = pyplot()
    fig, (teacher_ax, student_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, run_dir in runs.items():
        rows = [r for r in _read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]
        ax = teacher_ax if name.startswith("teacher/") else student_ax
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=name.split("/", 1)[1])
    for ax, title in ((teacher_ax, "teacher stages"), (student_ax, "students")):
        ax.set(title=title, xlabel="step", ylabel="training loss (per target token)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    write_figure(fig, out, dpi=100)
    plt.close(fig)


def _accuracy_chart(accuracy: dict[str, dict[str, float]], tasks: list[str], chance: dict[str, float],
                    out: epath.Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(accuracy) * len(tasks)), 4))
    names, width = list(accuracy), 0.8 / len(tasks)
    for t, task in enumerate(tasks):
        xs = [i + t * width for i in range(len(names))]
        bars = ax.bar(xs, [accuracy[n].get(task, float("nan")) for n in names], width, label=task)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
        ax.hlines(chance[task], xs[0] - width / 2, xs[-1] + width / 2, colors="red", linestyles="--")
    ax.set_xticks([i + width * (len(tasks) - 1) / 2 for i in range(len(names))], names, rotation=20, ha="right")
    ax.set(ylabel="accuracy (red: chance)", ylim=(0, 1), title="Accuracy on the test sets")
    ax.legend()
    fig.tight_layout()
    write_figure(fig, out, dpi=100)
    plt.close(fig)


def write_report(config: ml_collections.ConfigDict, steps: list[Step], work: epath.Path, *,
                 timings: dict[str, float]) -> dict[str, Any]:
    """Writes the report files into `work` and returns report.json's content (the results of the steps'
    outputs, so a rerun that reused every step writes the same report)."""
    evals = [s for s in steps if s.job == "eval"]
    accuracy: dict[str, dict[str, float]] = {}
    predictions: dict[str, dict[str, list[dict]]] = {}
    for step in evals:
        name = step.name.split("/", 1)[1]
        metrics = json.loads(read_text(work / step.name / "eval" / "metrics.json"))
        accuracy[name] = {task: m["accuracy"] for task, m in metrics["tasks"].items()}
        predictions[name] = {task: _read_jsonl(work / step.name / "eval" / task / "predictions.jsonl")
                             for task in metrics["tasks"]}
    tasks = sorted({t for by_task in accuracy.values() for t in by_task})
    first = next(iter(predictions.values()), {})
    chance = {t: sum(1 / len(q["scores"]) for q in first[t]) / len(first[t]) for t in tasks if first.get(t)}
    mean = {name: sum(by_task.values()) / len(by_task) for name, by_task in accuracy.items() if by_task}
    students = {n: a for n, a in mean.items() if n != "teacher"}
    augmented_students = {n: a for n, a in students.items() if n != BASELINE}
    best = max(augmented_students, key=augmented_students.get) if augmented_students else None
    outputs: dict[str, list[epath.Path]] = {}
    for step in steps:
        if step.job == "augment" and not students_own_augment(step):  # the teacher's texts the report describes
            for kind in step.config.kinds:
                outputs.setdefault(kind, []).extend(p for p in sorted((work / step.name / "augmented").iterdir())
                                                    if p.is_dir())
    report = {
        "tasks": tasks,
        "accuracy": accuracy,
        "students": students,
        "teacher": mean.get("teacher"),
        "best_augmented": best,
        "gain": None if best is None or BASELINE not in students else students[best] - students[BASELINE],
        "chance": chance,
        "test_questions": {t: len(first[t]) for t in tasks if first.get(t)},
        "eval_modes": {s.name.split("/", 1)[1]: s.mode for s in evals},
        "per_subject": {name: {subject: acc for task, rows in by_task.items()
                               for subject, acc in per_subject(rows, task).items()}
                        for name, by_task in predictions.items()},
        "augmentation": augmentation_quality(outputs),
        "timings": timings,
        "total_seconds": round(sum(timings.values()), 1),
    }
    mean_chance = sum(chance.values()) / len(chance) if chance else None
    if config.get("seeds") is not None:  # an ablation: students over seeds, with intervals
        report.update(ablation.section(predictions))
        if report["ablation"]:
            ablation.chart(report["ablation"], mean_chance, work / "ablation.png")
    write_atomic(work / "report.json", report_json.dumps(report, indent=2) + "\n")
    runs = {s.name: work / s.name for s in steps if s.job == "train" and (work / s.name / "metrics.jsonl").exists()}
    if runs:
        _loss_curves(runs, work / "loss_curves.png")
    if accuracy and tasks:
        _accuracy_chart(accuracy, tasks, chance, work / "accuracy.png")
    figures = [name for name in ("loss_curves.png", "accuracy.png") if (work / name).exists()]
    text = _markdown(config, report, samples(outputs), figures)
    if report.get("ablation"):
        title, rest = text.split("\n", 1)
        text = "\n".join([title, "", *ablation.markdown(report, mean_chance)]) + rest
    write_atomic(work / "report.md", text)
    return report


def _markdown(config: ml_collections.ConfigDict, report: dict[str, Any], examples: list[dict[str, Any]],
              figures: list[str]) -> str:
    tasks = report["tasks"]
    lines = [f"# {config.get('title') or 'TeacherLM pipeline'}", ""]
    if tasks:
        lines += ["Test sets: " + ", ".join(f"{t} ({report['test_questions'][t]} questions, chance "
                                            f"{report['chance'][t]:.3f})" for t in tasks) + ".", "",
                  "| model | eval | " + " | ".join(tasks) + (" | mean |" if len(tasks) > 1 else " |"),
                  "|---|---|" + "---|" * (len(tasks) + (len(tasks) > 1))]
        for name, by_task in report["accuracy"].items():
            cells = [f"{by_task[t]:.3f}" if t in by_task else "-" for t in tasks]
            if len(tasks) > 1:
                cells.append(f"{sum(by_task.values()) / len(by_task):.3f}")
            lines.append(f"| {name} | {report['eval_modes'][name]} | " + " | ".join(cells) + " |")
    if report["best_augmented"] is not None and report["gain"] is not None:
        lines += ["", f"Best augmented student: **{report['best_augmented']}**, "
                      f"{100 * report['gain']:+.1f} points over {BASELINE}."]
    subjects = sorted({s for by_subject in report["per_subject"].values() for s in by_subject})
    if len(subjects) > len(tasks):
        lines += ["", "## Accuracy per subject", "", "| subject | " + " | ".join(report["per_subject"]) + " |",
                  "|---|" + "---|" * len(report["per_subject"])]
        for subject in subjects:
            lines.append(f"| {subject} | " + " | ".join(
                f"{by_subject[subject]:.2f}" if subject in by_subject else "-"
                for by_subject in report["per_subject"].values()) + " |")
    if report["augmentation"]:
        lines += ["", "## The teacher's augmentations", "",
                  "| kind | records | texts | empty | cut | degenerate | cot answer-consistent | equal to gold | "
                  "cot ends on the right answer |", "|---|---|---|---|---|---|---|---|---|"]
        for kind, a in report["augmentation"].items():
            q = a.get("quality", {})
            cells = [q.get(k, "-") for k in ("texts", "empty", "cut", "degenerate", "answer_consistent")]
            cells += [f"{a[k]:.3f}" if k in a else "-" for k in ("exact", "answer")]
            lines.append(f"| {kind} | {a['records']} | " + " | ".join(str(c) for c in cells) + " |")
    lines.append("")
    lines += [f"![{name.removesuffix('.png').replace('_', ' ')}]({name})\n" for name in figures]
    if examples:
        lines += ["## Sample augmentations", ""]
        for e in examples:
            options = " ".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(e["choices"]))
            lines += [f"**{e['subject'] or e['id']}** — {e['question']} {options} — answer ({chr(65 + e['answer'])})", ""]
            for kind, text in e["teacher"].items():
                lines.append(f"- teacher {kind}: {text}")
                if e["gold"].get(kind):
                    lines.append(f"- gold {kind}: {e['gold'][kind]}")
            lines.append("")
    lines += ["## Time per step (seconds)", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds} |" for name, seconds in report["timings"].items()]
    lines += [f"| total | {report['total_seconds']} |", ""]
    return "\n".join(lines)
