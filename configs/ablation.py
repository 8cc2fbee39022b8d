"""What each part of TeacherLM adds, with error bars: `python -m teacherlm_jax.main --config configs/ablation.py
--workdir DIR`.

The demo's pipeline (configs/demo.py: the synthetic world suite, its tokenizer, the small BLOOM teacher trained
in three stages with all three stage-3 kinds) with students that differ in one thing each, at equal compute
(the same model, steps, batch and sequence length), each trained once per seed of `config.seeds`
(`students/<name>/seed<k>`, evaluated in `eval/<name>/seed<k>`). DIR/report.md and report.json add the
`ablation` section (teacherlm_jax/pipeline/ablation.py): each student's accuracy as mean and standard
deviation over seeds, its difference to `answers_only` with a 95% bootstrap interval over questions and
seeds, per-family accuracy, and ablation.png. docs/ablation.md.

Students (`config.students.<name>`: {train, mode, and optionally sampling}; adding one is one entry):
  answers_only     the question and its answer letter
  cot | fundamentals | mistakes   one kind of the teacher's (greedy) texts
  all_kinds        the three kinds as separate examples, 1:1:1 (TeacherLM's multi-kind student)
  finetune_cot_n1 | finetune_cot_n4   Fine-tune-CoT: the cot teacher's texts sampled at temperature > 0,
                   1 or 4 samples per question, each its own example (`sampling`: the student's own
                   augment step, `augment/cot-<name>`; the same seeds, so n4's first sample is n1's)
The kind students use the format in which the demo shows an effect at this size: the teacher's text before
the answer (Fine-tune-CoT's layout, ` <text> --> X`), evaluated by generation. TeacherLM's answer-first
format (the answer, then the text; scored by the answer letter's log-likelihood) is the variant word
`answer_first`: `--config configs/ablation.py:answer_first`.

Variants (comma-separated words):
  (none)        the grid with 3 seeds at the demo's sizes (~50 minutes on 2 CPU cores, docs/ablation.md)
  answer_first  the kind students in TeacherLM's answer-first format (sequence length 80 for every student)
  tiny          the test suite's: the same grid, 2 seeds, a tiny model, two families, few steps
"""
from __future__ import annotations

import ml_collections

from configs import demo
from configs import pipeline as pipeline_configs
from configs.teacher.stages import parse_variant

VARIANTS = {"": "the grid with 3 seeds at the demo's sizes (~50 minutes on 2 CPU cores)",
            "answer_first": "the kind students in TeacherLM's answer-first format (scored by log-likelihood)",
            "tiny": "the test suite's: the same grid, 2 seeds, a tiny model, two families, few steps"}
SEEDS = (1, 2, 3)
# Fine-tune-CoT's diverse reasoning: the cot teacher sampled; n1 and n4 differ only in the count.
SAMPLED = dict(temperature=0.7, top_k=0)


def _grid(kind_style: str) -> dict[str, tuple[str, str, int]]:
    """{student: (data format, style, samples per question; 0: the greedy augmentation)}."""
    return {"answers_only": ("answer", "teacherlm", 0),
            "cot": ("cot", kind_style, 0),
            "fundamentals": ("fundamentals", kind_style, 0),
            "mistakes": ("mistakes", kind_style, 0),
            "all_kinds": ("mixed", kind_style, 0),
            "finetune_cot_n1": ("cot", "finetune_cot", 1),
            "finetune_cot_n4": ("cot", "finetune_cot", 4)}


# The ablation's students (the kind students in the rationale-first layout unless answer_first).
STUDENT_EFFECTS = {
    "cot": "Ablation student on the cot teacher's (greedy) texts.",
    "fundamentals": "Ablation student on the fundamentals teacher's texts.",
    "mistakes": "Ablation student on the common-mistakes teacher's texts.",
    "all_kinds": "Ablation student on all three kinds, each its own example, 1:1:1 (TeacherLM's multi-kind student).",
    "finetune_cot_n1": "Fine-tune-CoT student on one sampled chain of thought per question.",
    "finetune_cot_n4": "Fine-tune-CoT student on four sampled chains of thought per question, each its own example.",
}

# What each key does (docs/configs.md is generated from these: python docs/gen_config_reference.py).
DESCRIPTIONS = {
    **pipeline_configs.student_descriptions(STUDENT_EFFECTS),
    **{f"students.finetune_cot_n{n}.sampling": f"This student's own augment step (`augment/cot-finetune_cot_n{n}`):"
                                               f" overrides of augment.sampling, here {n} sample(s) per question "
                                               "at temperature 0.7, each its own example."
       for n in (1, 4)},
    "seeds": "Training seeds: each student trains once per seed (`students/<name>/seed<k>`, its `seed` = k: "
             "the data order), evaluated per seed; the report gives mean, std and bootstrap intervals "
             "(docs/ablation.md). Absent: one run per student.",
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    try:
        words = parse_variant(arg, ("answer_first",))
    except ValueError as e:
        raise ValueError(f"configs/ablation.py: {e}") from None
    tiny = "tiny" in words
    config = demo.get_config("full")  # stage 3 trains all three kinds
    config.title = "TeacherLM ablation: what each kind of teacher text adds"
    config.seeds = SEEDS[:2] if tiny else SEEDS
    kind_style = "teacherlm" if "answer_first" in words else "finetune_cot"
    # Every student: the same model, steps, batch and sequence length. 64 tokens hold the longest
    # rationale-first text; TeacherLM's answer-first prompt is longer (the answer and the kind's cue first).
    seq_len = 80 if kind_style == "teacherlm" else 64
    model, steps, batch_size = config.students.answers_only.train.model, demo.STUDENT_STEPS, 16
    if tiny:
        _shrink(config)
        model, steps, batch_size = config.teacher.stage1.model, 8, 4
    config.students = ml_collections.ConfigDict()
    for name, (fmt, style, samples) in _grid(kind_style).items():
        mode = "generate" if style == "finetune_cot" else "loglik"
        config.students[name] = demo.student_for(model, fmt, style, mode, steps=steps, seq_len=seq_len,
                                                 batch_size=batch_size)
        if samples:
            config.students[name].sampling = dict(SAMPLED, num_samples=samples)
    return config


def _shrink(config: ml_collections.ConfigDict) -> None:
    """The tiny variant's sizes: the same steps and grid, a model and suite small enough for a test."""
    config.suite.families = ("pet_color", "town_weather")
    tiny_model = dict(hidden_size=32, n_layer=2, n_head=2)
    for name, steps in (("stage1", 4), ("stage2", 8), ("stage3", 4)):
        stage = config.teacher[name]
        stage.model.update(tiny_model)
        stage.num_train_steps, stage.batch_size, stage.log_every = steps, 4, 2
        stage.optimizer.warmup_steps = 1
        stage.checkpoint_every = steps
    config.augment.max_records = 8
    config.augment.batch_size = 8
    config.augment.chunk_size = 8
    config.augment.sampling.max_new_tokens = 24
    config.eval.max_examples = 16
    config.eval.batch_size = 16
    config.eval.max_new_tokens = 24
