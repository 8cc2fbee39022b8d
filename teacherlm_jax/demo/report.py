"""The demo's report: DIR/report.json, DIR/report.md, DIR/loss_curves.png, DIR/accuracy.png.

report.json: `students` {name: held-out accuracy}, `teacher` (its held-out accuracy by letter
log-likelihood after stage 1, where it learned answers), `best_augmented` and its `gain` over
`answers_only`, `per_family` {model: {family: accuracy}}, `augmentation` {kind: how often the
teacher's text equals the generator's gold text, and for cot how often it ends on the right answer},
`eval_modes`, `timings` (seconds per step of the pipeline) and `total_seconds`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import ml_collections

from teacherlm_jax import report_json
from teacherlm_jax.data.records import numbered_lines

ANSWER_PHRASE = "So the answer is {}."
BASELINE = "answers_only"


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for _, line in numbered_lines(path) if line.strip()]


def _augmented_rows(directories: tuple[Path, ...]) -> list[dict]:
    rows = [row for d in directories for part in sorted(d.glob("part-*.jsonl")) for row in _read_jsonl(part)]
    if not rows:
        raise ValueError(f"{[str(d) for d in directories]}: no augmented parts")
    return rows


def augmentation_quality(augmented: dict[str, tuple[Path, ...]]) -> dict[str, dict[str, float]]:
    """Per kind: `exact` (the text equals the gold annotation, where the data has one) and, for cot,
    `answer` (it ends by naming the right choice, as every gold chain of thought of the suite does)."""
    quality = {}
    for kind, directories in augmented.items():
        rows = _augmented_rows(directories)
        texts = [(row[kind] if isinstance(row[kind], str) else row[kind][0]) or "" for row in rows]
        stats = {"records": len(rows),
                 "exact": sum(t.strip() == (row["gold"].get(kind) or "").strip() for t, row in zip(texts, rows)) / len(rows)}
        if kind == "cot":
            stats["answer"] = sum(t.strip().endswith(ANSWER_PHRASE.format(row["choices"][row["answer"]]))
                                  for t, row in zip(texts, rows)) / len(rows)
        quality[kind] = stats
    return quality


def per_family(predictions: Path) -> dict[str, float]:
    groups: dict[str, list[bool]] = {}
    for p in _read_jsonl(predictions):
        groups.setdefault(p.get("subject") or "?", []).append(p["prediction"] == p["answer"])
    return {family: sum(hits) / len(hits) for family, hits in sorted(groups.items())}


def samples(augmented: dict[str, tuple[Path, ...]], per_family_count: int = 1) -> list[dict[str, Any]]:
    """The first augmented record of each family, with the teacher's texts beside the gold ones."""
    by_id: dict[str, dict[str, Any]] = {}
    for kind, directories in augmented.items():
        for row in _augmented_rows(directories):
            entry = by_id.setdefault(row["id"], {"id": row["id"], "subject": row.get("subject"),
                                                 "question": row["question"], "choices": row["choices"],
                                                 "answer": row["answer"], "teacher": {}, "gold": {}})
            entry["teacher"][kind] = row[kind]
            entry["gold"][kind] = row["gold"].get(kind)
    chosen, seen = [], {}
    for entry in by_id.values():
        if seen.get(entry["subject"], 0) < per_family_count:
            seen[entry["subject"]] = seen.get(entry["subject"], 0) + 1
            chosen.append(entry)
    return chosen


def _loss_curves(runs: dict[str, Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (teacher_ax, student_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, run_dir in runs.items():
        rows = [r for r in _read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]
        ax = teacher_ax if name.startswith("teacher/") else student_ax
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=name.split("/", 1)[1])
    for ax, title in ((teacher_ax, "teacher stages"), (student_ax, "students (equal steps, batch, length)")):
        ax.set(title=title, xlabel="step", ylabel="training loss (per target token)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _accuracy_chart(accuracies: dict[str, float], chance: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    names = list(accuracies)
    bars = ax.bar(names, [accuracies[n] for n in names],
                  color=["gray" if n in ("teacher", BASELINE) else "tab:blue" for n in names])
    ax.bar_label(bars, fmt="%.3f")
    ax.axhline(chance, color="red", linestyle="--", label=f"chance ({chance:.3f})")
    ax.set(ylabel="held-out accuracy", ylim=(0, 1), title="Held-out accuracy")
    ax.legend()
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def write_report(config: ml_collections.ConfigDict, work: Path, *, results: dict[str, dict[str, Any]],
                 augmented: dict[str, tuple[Path, ...]], timings: dict[str, float]) -> dict[str, Any]:
    """Writes the report files into `work` and returns report.json's content."""
    students = {name: results[name]["accuracy"] for name in config.students}
    augmented_students = {n: a for n, a in students.items() if n != BASELINE}
    best = max(augmented_students, key=augmented_students.get) if augmented_students else None
    prediction_files = {name: next((work / "eval" / name / "eval").glob("*/predictions.jsonl"))
                        for name in ("teacher", *config.students)}
    questions = _read_jsonl(prediction_files["teacher"])
    chance = sum(1 / len(q["scores"]) for q in questions) / len(questions)
    report = {
        "students": students,
        "teacher": results["teacher"]["accuracy"],
        "best_augmented": best,
        "gain": None if best is None or BASELINE not in students else students[best] - students[BASELINE],
        "chance": chance,
        "test_questions": len(questions),
        "eval_modes": {"teacher": "loglik", **{n: config.students[n].mode for n in config.students}},
        "per_family": {name: per_family(path) for name, path in prediction_files.items()},
        "augmentation": augmentation_quality(augmented),
        "timings": timings,
        "total_seconds": round(sum(timings.values()), 1),
    }
    tmp = work / "report.json.tmp"
    tmp.write_text(report_json.dumps(report, indent=2) + "\n")
    os.replace(tmp, work / "report.json")

    runs = {f"teacher/{p.name}": p for p in sorted((work / "teacher").iterdir()) if (p / "metrics.jsonl").is_file()}
    runs.update({f"students/{name}": work / "students" / name for name in config.students})
    _loss_curves(runs, work / "loss_curves.png")
    _accuracy_chart({"teacher": report["teacher"], **students}, chance, work / "accuracy.png")
    (work / "report.md").write_text(_markdown(config, report, samples(augmented)), encoding="utf-8")
    return report


def _markdown(config: ml_collections.ConfigDict, report: dict[str, Any], examples: list[dict[str, Any]]) -> str:
    families = sorted({f for fams in report["per_family"].values() for f in fams})
    lines = ["# TeacherLM demo", "",
             f"{report['test_questions']} held-out questions of {', '.join(families)}; chance {report['chance']:.3f}. "
             f"Students: the same model, {config.students[next(iter(config.students))].train.num_train_steps} steps, "
             "batch and sequence length; only the training text differs.", "",
             "| model | eval | accuracy | " + " | ".join(families) + " |",
             "|---|---|---|" + "---|" * len(families)]
    accuracies = {"teacher": report["teacher"], **report["students"]}
    for name, acc in accuracies.items():
        fams = report["per_family"][name]
        lines.append(f"| {name} | {report['eval_modes'][name]} | {acc:.3f} | "
                     + " | ".join(f"{fams.get(f, float('nan')):.2f}" for f in families) + " |")
    if report["best_augmented"] is not None and report["gain"] is not None:
        lines += ["", f"Best augmented student: **{report['best_augmented']}**, "
                      f"{100 * report['gain']:+.1f} points over answers_only."]
    lines += ["", "Teacher (stage 1, letter log-likelihood) is evaluated on the same questions.", "",
              "## The teacher's augmentations", "", "| kind | records | equal to gold | cot ends on the right answer |",
              "|---|---|---|---|"]
    for kind, q in report["augmentation"].items():
        answer = f"{q['answer']:.3f}" if "answer" in q else "-"
        lines.append(f"| {kind} | {q['records']} | {q['exact']:.3f} | {answer} |")
    lines += ["", "![loss curves](loss_curves.png)", "", "![accuracy](accuracy.png)", "", "## Sample augmentations", ""]
    for e in examples:
        options = " ".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(e["choices"]))
        lines += [f"**{e['subject']}** — {e['question']} {options} — answer ({chr(65 + e['answer'])})", ""]
        for kind, text in e["teacher"].items():
            lines += [f"- teacher {kind}: {text}", f"- gold {kind}: {e['gold'][kind]}"]
        lines.append("")
    lines += ["## Time per step (seconds)", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds} |" for name, seconds in report["timings"].items()]
    lines += [f"| total | {report['total_seconds']} |", ""]
    return "\n".join(lines)
