"""Predictions and metrics on disk (or a cloud URL, `teacherlm_jax.paths`): predictions.jsonl per task,
metrics.json, results.md, accuracy.png, each written whole (`paths.write_atomic`).

MMLU breakdowns use hendrycks/test's categories.py: each of the 57 subjects has a subcategory, each
subcategory one of four categories. Category accuracy pools the category's questions (as hendrycks'
evaluate.py does); the macro average is the mean of the per-subject accuracies.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from etils import epath

from teacherlm_jax import report_json
from teacherlm_jax.figures import pyplot
from teacherlm_jax.paths import write_atomic, write_figure

_SUBCATEGORY = {
    "abstract_algebra": "math", "anatomy": "health", "astronomy": "physics", "business_ethics": "business",
    "clinical_knowledge": "health", "college_biology": "biology", "college_chemistry": "chemistry",
    "college_computer_science": "computer science", "college_mathematics": "math", "college_medicine": "health",
    "college_physics": "physics", "computer_security": "computer science", "conceptual_physics": "physics",
    "econometrics": "economics", "electrical_engineering": "engineering", "elementary_mathematics": "math",
    "formal_logic": "philosophy", "global_facts": "other", "high_school_biology": "biology",
    "high_school_chemistry": "chemistry", "high_school_computer_science": "computer science",
    "high_school_european_history": "history", "high_school_geography": "geography",
    "high_school_government_and_politics": "politics", "high_school_macroeconomics": "economics",
    "high_school_mathematics": "math", "high_school_microeconomics": "economics", "high_school_physics": "physics",
    "high_school_psychology": "psychology", "high_school_statistics": "math", "high_school_us_history": "history",
    "high_school_world_history": "history", "human_aging": "health", "human_sexuality": "culture",
    "international_law": "law", "jurisprudence": "law", "logical_fallacies": "philosophy",
    "machine_learning": "computer science", "management": "business", "marketing": "business",
    "medical_genetics": "health", "miscellaneous": "other", "moral_disputes": "philosophy",
    "moral_scenarios": "philosophy", "nutrition": "health", "philosophy": "philosophy", "prehistory": "history",
    "professional_accounting": "other", "professional_law": "law", "professional_medicine": "health",
    "professional_psychology": "psychology", "public_relations": "politics", "security_studies": "politics",
    "sociology": "culture", "us_foreign_policy": "politics", "virology": "health", "world_religions": "philosophy",
}
_CATEGORIES = {
    "STEM": ("physics", "chemistry", "biology", "computer science", "math", "engineering"),
    "humanities": ("history", "philosophy", "law"),
    "social sciences": ("politics", "culture", "economics", "geography", "psychology"),
    "other": ("other", "business", "health"),
}
MMLU_CATEGORY = {subject: next(c for c, subs in _CATEGORIES.items() if sub in subs)
                 for subject, sub in _SUBCATEGORY.items()}


@dataclasses.dataclass
class Prediction:
    """One question's result. `prediction` is a choice index (-1: a generation naming no choice);
    in generative mode `scores` is 1.0 for the parsed choice, 0.0 elsewhere."""

    id: str
    scores: list[float]
    prediction: int
    answer: int
    subject: str | None = None
    truncated: bool = False
    generation: str | None = None

    @property
    def correct(self) -> bool:
        return self.prediction == self.answer

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def accuracy(predictions: Sequence[Prediction]) -> float | None:
    """None for no predictions: there is no accuracy to report (NaN would not be valid JSON)."""
    return sum(p.correct for p in predictions) / len(predictions) if predictions else None


def _group(predictions: Sequence[Prediction], key) -> dict[str, dict[str, float]]:
    groups: dict[str, list[Prediction]] = {}
    for p in predictions:
        groups.setdefault(key(p), []).append(p)
    return {k: {"accuracy": accuracy(v), "count": len(v)} for k, v in sorted(groups.items())}


def mmlu_breakdown(predictions: Sequence[Prediction]) -> dict[str, Any]:
    """Per-subject and per-category accuracy and the macro average over subjects."""
    unknown = sorted({p.subject for p in predictions} - set(MMLU_CATEGORY))
    if unknown:
        raise ValueError(f"MMLU subjects {unknown} are not among the 57 of hendrycks/test")
    subjects = _group(predictions, lambda p: p.subject)
    categories = _group(predictions, lambda p: MMLU_CATEGORY[p.subject])
    macro = sum(s["accuracy"] for s in subjects.values()) / len(subjects)
    return {"macro_accuracy": macro, "categories": categories, "subjects": subjects}


def task_metrics(predictions: Sequence[Prediction], *, dataset: str, available: int, max_examples: int,
                 mmlu: bool, generative: bool) -> dict[str, Any]:
    """Accuracy and count, what was evaluated (all `available` questions or a subset), how many
    contexts were cut to fit, and for MMLU the breakdowns."""
    out: dict[str, Any] = {
        "accuracy": accuracy(predictions), "count": len(predictions), "dataset": dataset,
        "available": available, "max_examples": max_examples, "subset": len(predictions) < available,
        "truncated": sum(p.truncated for p in predictions),
    }
    if not predictions:
        out["note"] = "no questions were evaluated, so accuracy is null"
    if generative:
        out["unparsed"] = sum(p.prediction < 0 for p in predictions)
    if mmlu:
        out.update(mmlu_breakdown(predictions))
    return out


def write_predictions(path: epath.Path, predictions: Sequence[Prediction]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "".join(report_json.dumps(p.to_json(), ensure_ascii=False) + "\n" for p in predictions))


def results_markdown(metrics: dict[str, Any]) -> str:
    """A table per task, then MMLU categories for tasks that have them."""
    lines = ["| task | accuracy | questions | notes |", "|---|---|---|---|"]
    for name, m in metrics["tasks"].items():
        notes = []
        if m["subset"]:
            notes.append(f"subset: {m['count']} of {m['available']} (max_examples={m['max_examples']})")
        if m["truncated"]:
            notes.append(f"{m['truncated']} contexts cut on the left")
        if m.get("unparsed"):
            notes.append(f"{m['unparsed']} generations name no choice")
        if "macro_accuracy" in m:
            notes.append(f"macro over subjects {100 * m['macro_accuracy']:.2f}")
        if m.get("note"):
            notes.append(m["note"])
        shown = "n/a" if m["accuracy"] is None else f"{100 * m['accuracy']:.2f}"
        lines.append(f"| {name} | {shown} | {m['count']} | {'; '.join(notes)} |")
    for name, m in metrics["tasks"].items():
        if "categories" in m:
            lines += ["", f"**{name}** by category", "", "| category | accuracy | questions |", "|---|---|---|"]
            lines += [f"| {c} | {100 * v['accuracy']:.2f} | {v['count']} |" for c, v in m["categories"].items()]
    settings = metrics["settings"]
    lines += ["", f"model `{settings['model']}`, mode {settings['mode']}, score {settings['score']}, "
                  f"dtype {settings['dtype']}"]
    return "\n".join(lines) + "\n"


def plot_accuracy(metrics: dict[str, Any], path: epath.Path) -> None:
    """Bars: accuracy per task, and per MMLU category where a task has them."""
    plt = pyplot()

    bars = [(name, m["accuracy"]) for name, m in metrics["tasks"].items() if m["accuracy"] is not None]
    for name, m in metrics["tasks"].items():
        bars += [(f"{name}/{c}", v["accuracy"]) for c, v in m.get("categories", {}).items()]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(bars) + 1), 3.5))
    ax.bar(range(len(bars)), [100 * a for _, a in bars], color="tab:blue")
    ax.set_xticks(range(len(bars)), [n for n, _ in bars], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{metrics['settings']['model']} ({metrics['settings']['mode']})", fontsize=9)
    fig.tight_layout()
    write_figure(fig, path, dpi=100)
    plt.close(fig)


def write_report(out_dir: epath.Path, metrics: dict[str, Any]) -> None:
    """metrics.json, results.md and accuracy.png in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "metrics.json", report_json.dumps(metrics, indent=2) + "\n")
    write_atomic(out_dir / "results.md", results_markdown(metrics))
    plot_accuracy(metrics, out_dir / "accuracy.png")
