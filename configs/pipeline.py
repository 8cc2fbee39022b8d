"""TeacherLM's whole recipe in one job: `python -m teacherlm_jax.main --config configs/pipeline.py[:tiny] --workdir DIR`.

Teacher stages 1 -> 2 -> 3 (configs/teacher/*), augmentation of the students' datasets by each stage-3
teacher for its kind (configs/augment.py), students (configs/student/finetune.py formats), evaluation of the
teacher and every student (configs/eval.py), DIR/report.md and report.json (teacherlm_jax/pipeline/).
Every step is its job's own config under this one, so any key of any step can be overridden:
  --config.teacher.stage2.num_train_steps=500     --config.students.finetune_cot.train.optimizer.learning_rate=1e-5
  --config.augment.datasets="('creak','strategyqa')"  --config.eval.tasks="('mmlu',)"
  --config.teacher.stages="('stage3',)" --config.teacher.init_from=DIR   (stage 3 only, from a model you have)
A rerun reuses every step whose config and inputs are unchanged and reruns the others and what follows them
(docs/pipeline.md).

Keys beside the steps:
  teacher.init_from   where the first stage starts (a Hugging Face directory or hub id, or a run's workdir)
  teacher.stages      which stages run, in order; without stage3 the last stage's teacher writes every kind
  teacher.kinds       the kinds stage 3 specializes in and augmentation writes (one stage-3 teacher each)
  teacher.evaluate    the teacher evaluated beside the students: a stage ("stage1"), a model, or "" for none
  student_base        the model students start from unless their own model.init_from is set
  tokenizer.init_from one tokenizer for every step (default: each step's model's own)
  tokenizer.vocab_size with a `suite` (configs/demo.py): a tokenizer trained on the suite, for every step
  students.<name>     {train: a training config, mode: how its evaluation scores it (loglik | generate)}, and
                      optionally sampling: overrides of augment.sampling for its own augment step
  topology            with --dry_run: a TPU slice to plan on (gcloud's v5e-8, v4-16, ... or jax's v5e:2x4):
                      every step's programs compiled for it (libtpu, on any host; nothing runs or downloads),
                      whether each fits its chips (which program, by how much, what to change) and a lower
                      bound of its time, totalled in chip-hours (teacherlm_jax/pipeline/tpu_plan.py).
                      A run (no --dry_run) logs that it ignores it. "" (default): no TPU plan.
  device_memory_gib   memory per chip the plan checks against (0, default: the slice's chip's HBM)
  seeds               (optional) training seeds: one run per student and seed, with mean, std and intervals
                      in the report (configs/ablation.py, docs/ablation.md)

Variants:
  (none)  bloom-560m teacher and students on the shared datasets; stage 2 and 3 on chain of thought only
          (the shared data has no fundamentals / common mistakes: bring JSONL with them and set
          teacher.kinds, teacher.stage2.data.datasets; docs/pipeline.md).
  tiny    a tiny BLOOM on the synthetic suite with the byte tokenizer: the whole recipe in about a minute (tests).
"""
from __future__ import annotations

import ml_collections

from configs import augment as augment_configs
from configs import common
from configs import eval as eval_configs
from configs.student import finetune
from configs.teacher import stage1_multitask, stage2_personalization, stage3_specialization
from configs.teacher.stages import parse_variant

KINDS = ("cot", "fundamentals", "mistakes")
# name -> (finetune.py variant, eval mode): answers only, TeacherLM's format, Fine-tune-CoT's
STUDENTS = {"answers_only": ("text", "loglik"), "teacherlm_cot": ("cot", "loglik"),
            "finetune_cot": ("cot,ftcot", "generate")}


def pipeline_base(title: str) -> ml_collections.ConfigDict:
    """The keys every pipeline has (steps are added by the config that uses it)."""
    config = common.base("pipeline")
    config.title = title
    config.tokenizer = ml_collections.ConfigDict({"init_from": common.optional(None, str),
                                                  "vocab_size": common.optional(None, int)})
    config.teacher = ml_collections.ConfigDict()
    config.teacher.init_from = common.optional(None, str)
    config.teacher.stages = ("stage1", "stage2", "stage3")
    config.teacher.kinds = ("cot",)
    config.teacher.evaluate = "stage1"
    config.student_base = common.optional(None, str)
    config.compilation_cache = True  # DIR/jax_cache: steps of equal shapes (the students) share compiled programs
    config.topology = ""  # a TPU slice (v5e-8, v4-16, v5e:2x4) for --dry_run to plan on; a run ignores it
    config.device_memory_gib = 0.0  # the plan's memory per chip; 0: the chip's HBM
    return config


def student(train: ml_collections.ConfigDict, mode: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"train": train, "mode": mode})


VARIANTS = {"": "bloom-560m teacher and students on the shared datasets (cot only; docs/pipeline.md)",
            "tiny": "a tiny BLOOM on the synthetic suite with the byte tokenizer: the whole recipe in about a minute"}


# A student (`students.<name>`: `train`, a train config, and `mode`) and the pipeline's own students.
STUDENT_MODE = "Evaluation: `loglik` (letter log-likelihood) or `generate` (Fine-tune-CoT generation, answer parsed)."
STUDENT_EFFECTS = {
    "answers_only": "Student on questions and answers only (TeacherLM's `text` student).",
    "teacherlm_cot": "Student on the teacher prompt + the teacher's chain of thought (TeacherLM layout).",
    "teacherlm_mixed": "Student on every teacher kind, each as its own example.",
    "finetune_cot": "Student on Fine-tune-CoT's layout: rationale, then ` --> X`.",
}


def student_descriptions(students: dict[str, str]) -> dict[str, str]:
    """`students.<name>.train` and `students.<name>.mode` for each student described in `students`."""
    return {key: text for name, train in students.items()
            for key, text in ((f"students.{name}.train", train), (f"students.{name}.mode", STUDENT_MODE))}


# What each key does (docs/configs.md is generated from these: python docs/gen_config_reference.py).
DESCRIPTIONS = {
    "title": "The report's heading.",
    "suite.seed": "Seed of the synthetic reasoning suite (teacherlm_jax/data/synthetic.py).",
    "suite.families": "Question families in the suite.",
    "suite.heldout_families": "Families the teacher never sees (its transfer to them is then measured); "
                              "(): none.",
    "suite.student_families": "Families the students train and are tested on; (): the held-out families if "
                              "any, else all.",
    "suite.n_teacher_per_family": "Questions per family the teacher trains on (with gold annotations).",
    "suite.n_train_per_family": "Questions per family the students train on (annotated by the teacher).",
    "suite.n_test_per_family": "Held-out questions per family everyone is evaluated on.",
    "tokenizer.init_from": "One tokenizer for every step (a directory or hub id). None: each step's own "
                           "(its `tokenizer` key, else its model's `init_from`).",
    "tokenizer.vocab_size": "With a `suite` and no teacher.init_from: train a BPE tokenizer of this size on "
                            "the suite (step `tokenizer`) and use it in every step.",
    "teacher.init_from": "Where the first teacher stage starts: a Hugging Face directory or hub id, or a run's "
                         "workdir (its architecture replaces the stage config's sizes). None: a new model.",
    "teacher.stages": "Stages that run, in order, out of `stage1`, `stage2`, `stage3`; each starts from the "
                      "previous one's model. Without stage3 the last stage's teacher writes every kind.",
    "teacher.kinds": "Kinds stage 3 specializes in (one teacher each, `teacher/stage3_<kind>`) and the augment "
                     "steps write; stage 2's kind_ratios default to 1 each.",
    "teacher.evaluate": "Teacher evaluated beside the students: `stage1` / `stage2`, a model (directory, hub "
                        "id, `@step`), or '' for none.",
    "teacher.stage1": "Stage 1 (multi-task: answers), a train config.",
    "teacher.stage2": "Stage 2 (personalization: every kind after its prompt), a train config.",
    "teacher.stage3": "Stage 3 (specialization), a train config run once per kind in teacher.kinds with "
                      "data.format set to the kind.",
    "augment": "The augment job config (its datasets are the students' questions; teacher, kinds and "
               "tokenizer set per augment step).",
    "student_base": "The model students start from unless their own model.init_from is set: a Hugging Face "
                    "directory or hub id, a run's workdir, or `@teacher/stage1`. None: new models.",
    "compilation_cache": "Keep compiled programs in DIR/jax_cache, so steps of equal shapes and settings (the "
                         "students) compile once.",
    "topology": "With --dry_run: a TPU slice (gcloud's `v5e-8`, `v4-16`, ... or jax's `v5e:2x4`) to compile "
                "every step's programs for and plan on (fits, what to change, chip-hours); a run ignores it.",
    "device_memory_gib": "The plan's memory per chip; 0: the slice's chip's HBM.",
    "eval": "The eval job config every model is evaluated with (its tasks are the test sets; model and "
            "mode set per model).",
    **student_descriptions(STUDENT_EFFECTS),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    words = parse_variant(arg)
    tiny = "tiny" in words
    variant = "tiny" if tiny else None
    config = pipeline_base("TeacherLM pipeline")
    config.teacher.init_from = None if tiny else "bigscience/bloom-560m"
    config.teacher.stage1 = stage1_multitask.get_config(variant)
    config.teacher.stage2 = stage2_personalization.get_config(variant)
    config.teacher.stage2.data.kind_ratios = {}  # {}: 1.0 for each of teacher.kinds (set by the pipeline)
    config.teacher.stage3 = stage3_specialization.get_config(",".join(filter(None, ("cot", variant))))
    config.augment = augment_configs.get_config(variant)
    config.augment.datasets = ("synthetic:student_train",) if tiny else ("creak", "strategyqa", "ecqa")
    config.students = ml_collections.ConfigDict({
        name: student(finetune.get_config(",".join(filter(None, (content, variant)))), mode)
        for name, (content, mode) in STUDENTS.items()})
    for s in config.students.values():
        s.train.data.datasets = ()  # the pipeline fills in the augment output each format needs
    config.student_base = None if tiny else "bigscience/bloom-560m"
    config.eval = eval_configs.get_config()
    config.eval.tasks = ("synthetic:student_test",) if tiny else ("mmlu", "creak", "ecqa", "strategyqa")
    if tiny:
        for stage in (config.teacher.stage1, config.teacher.stage2, config.teacher.stage3):
            stage.num_train_steps, stage.eval_every, stage.log_every, stage.plot = 8, 0, 4, False
            common.checkpointing(stage, every=8, keep=1)
            stage.async_checkpoints = False
        config.augment.max_records = 8
        config.augment.sampling = augment_configs.sampling(temperature=0.0, top_k=0, max_new_tokens=24)
        config.augment.batch_size = 8
        config.augment.chunk_size = 8
        del config.students["teacherlm_cot"]
        for s in config.students.values():
            s.train.num_train_steps, s.train.log_every, s.train.plot = 8, 4, False
            common.checkpointing(s.train, every=8, keep=1)
            s.train.async_checkpoints = False
        config.eval.max_examples = 16
        config.eval.batch_size = 8
        config.eval.max_new_tokens = 24
    return config
