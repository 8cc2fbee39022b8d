"""The end-to-end TeacherLM demo on a laptop CPU: `python -m teacherlm_jax.main --config configs/demo.py --workdir DIR`.

The pipeline job (configs/pipeline.py, teacherlm_jax/pipeline/) on a synthetic reasoning suite (two-hop questions
about a generated world, teacherlm_jax/data/synthetic_world.py) with small sizes: the suite's files, a tokenizer
trained on them, a small BLOOM teacher trained in TeacherLM's three stages, the teacher's augmentation of the
students' training questions, students trained at equal compute on (a) answers only and (b) the teacher's texts,
and the evaluation of all of them: DIR/report.md and DIR/report.json. Rerun the same command after any stop to
resume; after an override, only the steps it changes (and those after them) rerun.

Every step is a whole job config (configs/train.py, configs/augment.py, configs/eval.py); `@suite/...`,
`@tokenizer` and `@teacher/stage1` name earlier steps' outputs. Any key can be overridden:
  --config.teacher.stage2.num_train_steps=600   --config.students.finetune_cot.train.optimizer.learning_rate=1e-3

Variants:
  (none)  the demo: under 10 minutes on 2 CPU cores; stage 3 trains the cot teacher only.
  full    stage 3 trains all three kinds (TeacherLM's three teachers) and adds the `teacherlm_mixed` student.
  tiny    the test suite's: the same models and suite, half the steps after stage 1 and two students
          (answers_only, finetune_cot), about a third of the demo's time; the smallest run found that still
          shows the effect (docs/demo.md).
"""
from __future__ import annotations

import ml_collections

from configs import augment as augment_configs
from configs import common
from configs import eval as eval_configs
from configs import train as train_configs
from configs.pipeline import pipeline_base, student


VARIANTS = {"": "the demo: under 10 minutes on 2 CPU cores; stage 3 trains the cot teacher only",
            "full": "stage 3 trains all three kinds and adds the teacherlm_mixed student",
            "tiny": "the test suite's: half the steps, two students, about a third of the demo's time"}


def _model(size: dict) -> ml_collections.ConfigDict:
    # BLOOM's special-token ids, which the demo tokenizer (teacherlm_jax/demo/tokenizer.py) also uses.
    return common.model(None, bos_token_id=1, eos_token_id=2, pad_token_id=3, max_position_embeddings=256,
                        **size)


def _stage(model: ml_collections.ConfigDict, fmt: str, *, steps: int, batch_size: int, seq_len: int,
           learning_rate: float, style: str = "teacherlm", loss_on: str = "all", add_eos: bool = False,
           seed: int = 0, datasets: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    """A training job config; the pipeline fills in the tokenizer, model.init_from after stage 1, and a
    student's datasets."""
    config = train_configs.get_config()
    config.seed = seed
    config.model = model
    config.tokenizer = common.optional(None, str)  # the pipeline's @tokenizer
    config.data = train_configs.data("records", seq_len=seq_len, loss_on=loss_on, datasets=datasets, format=fmt,
                                     style=style, add_eos=add_eos, kind_ratios={}, eval_fraction=0.0)
    config.batch_size = batch_size
    config.num_train_steps = steps
    config.optimizer = common.optimizer(learning_rate=learning_rate, schedule="cosine", warmup_steps=min(20, steps),
                                        weight_decay=0.01)
    config.log_every = max(1, steps // 20)
    config.eval_every = 0
    common.checkpointing(config, every=max(1, steps // 4), keep=1)
    config.async_checkpoints = False  # small states: a synchronous save costs less than a thread
    config.plot = False  # the demo draws every stage's curve in one figure
    return config


STUDENT_STEPS = 900


def student_for(model: ml_collections.ConfigDict, fmt: str, style: str = "teacherlm", mode: str = "loglik", *,
                steps: int, seq_len: int, batch_size: int = 16) -> ml_collections.ConfigDict:
    """A demo student (`students.<name>`): Fine-tune-CoT's style is trained on the completion and ends with
    EOS (generative eval stops there); TeacherLM's on the whole text."""
    finetune_cot = style == "finetune_cot"
    train = _stage(model, fmt, steps=steps, batch_size=batch_size, seq_len=seq_len, learning_rate=3e-3, style=style,
                   loss_on="target" if finetune_cot else "all", add_eos=finetune_cot, seed=1)
    # The overlap of its training examples with the test set: the student's decontamination.md.
    train.data.decontaminate = ("@suite/test.jsonl",)
    return student(train, mode)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, *VARIANTS):
        raise ValueError(f"configs/demo.py: unknown variant {arg!r}; known: {[v for v in VARIANTS if v]}")
    tiny = arg == "tiny"
    config = pipeline_base("TeacherLM demo")
    # The suite: the two-hop world families (teacherlm_jax/data/synthetic_world.py), 16 questions per family
    # and split (the sizes its Latin-square split is built for); held-out questions, not held-out families (a
    # teacher that never saw a family's facts cannot write them; set heldout_families to measure it). The
    # arithmetic and logic families (synthetic.STEP_FAMILIES) can be chosen too. Students see
    # `student_families` (default: the held-out families if any, else all).
    world = ("pet_kind", "pet_color", "pet_size", "pet_toy", "pet_bed", "pet_food",
             "town_country", "town_weather", "town_food", "town_sport", "town_houses", "town_travel")
    config.suite = ml_collections.ConfigDict(dict(
        seed=0, families=world, heldout_families=(), student_families=(), n_teacher_per_family=16,
        n_train_per_family=16, n_test_per_family=16))
    # A tokenizer trained on the suite (tokenizer.init_from, or a real teacher's teacher.init_from, replaces it).
    config.tokenizer.vocab_size = 1024

    # Sequence lengths fit the longest text of each format with this suite and tokenizer (nothing is cut).
    seq_len = dict(answer=40, mixed=80, students=64)
    # The smallest setting found where the teacher learns to write the facts and students to use them: with 2
    # layers or half the steps, neither the teacher nor a student learns to copy the person out of the question
    # (docs/demo.md, "Findings").
    size = dict(vocab_size=1024, hidden_size=128, n_layer=4, n_head=8)
    teacher = _model(size)
    # tiny: half the steps of stage 2, stage 3 and the students still shows the effect (docs/demo.md).
    scale = 0.5 if tiny else 1.0
    steps = dict(stage1=100, stage2=int(1000 * scale), stage3=int(200 * scale), students=int(STUDENT_STEPS * scale))
    teacher_data = ("@suite/teacher_train.jsonl",)
    config.teacher.stage1 = _stage(teacher, "answer", steps=steps["stage1"], batch_size=16, seq_len=seq_len["answer"],
                                   learning_rate=3e-3, datasets=teacher_data)
    config.teacher.stage2 = _stage(teacher, "mixed", steps=steps["stage2"], batch_size=16, seq_len=seq_len["mixed"],
                                   learning_rate=3e-3, add_eos=True, datasets=teacher_data)
    config.teacher.stage2.data.kind_ratios = {"cot": 1.0, "fundamentals": 1.0, "mistakes": 1.0}
    # Stage 3 trains one model per kind (format set per kind), each from stage 2.
    config.teacher.stage3 = _stage(teacher, "cot", steps=steps["stage3"], batch_size=16, seq_len=seq_len["mixed"],
                                   learning_rate=1e-3, add_eos=True, datasets=teacher_data)
    config.teacher.kinds = ("cot", "fundamentals", "mistakes") if arg == "full" else ("cot",)

    # The teacher annotates the students' training questions, greedily (its best guess; TeacherLM sampled).
    config.augment = augment_configs.get_config()
    config.augment.datasets = ("@suite/students.jsonl",)
    config.augment.sampling = augment_configs.sampling(temperature=0.0, top_k=0, max_new_tokens=64)
    config.augment.batch_size = 64
    config.augment.chunk_size = 256

    # Students: the same model, steps, batch and sequence length (equal compute); what differs is the text.
    student_model = _model(size)

    def student_config(fmt: str, style: str = "teacherlm", mode: str = "loglik") -> ml_collections.ConfigDict:
        return student_for(student_model, fmt, style, mode, steps=steps["students"], seq_len=seq_len["students"])

    config.students = ml_collections.ConfigDict(dict(
        answers_only=student_config("answer"),  # TeacherLM's `text` student
        teacherlm_cot=student_config("cot"),  # TeacherLM: teacher prompt + the teacher's chain of thought
        teacherlm_mixed=student_config("mixed"),  # TeacherLM: every teacher kind as its own example
        finetune_cot=student_config("cot", "finetune_cot", "generate"),  # rationale first, then the answer
    ))
    if arg != "full":
        del config.students["teacherlm_mixed"]
    if tiny:  # the two students the paper's claim is about: answers alone and the best augmented format
        del config.students["teacherlm_cot"]
    # Students start from the teacher's stage-1 model (a multi-task model of the domain, as BLOOMZ students
    # are); None: from scratch; or a checkpoint (a Hugging Face directory or hub id).
    config.student_base = "@teacher/stage1"

    config.eval = eval_configs.get_config()
    config.eval.tasks = ("@suite/test.jsonl",)
    config.eval.batch_size = 64
    config.eval.max_new_tokens = 64
    return config
