"""Student fine-tuning on (teacher-augmented) data: `--config configs/student/finetune.py:VARIANT`.

VARIANT is comma-separated words:
  what the student learns from each record (one of):
    text          question and answer only
    manual        plus the dataset's own rationale (CREAK explanation, StrategyQA decomposition, ...)
    cot | fundamentals | mistakes   plus the teacher's text of that kind (augment output)
    mixed         every teacher kind, each as its own example
  ftcot           Fine-tune-CoT's layout (`{question} (A) .. ###` + ` <rationale> --> X`, loss on the completion)
                  instead of TeacherLM's (teacher prompt + continuation, loss on the whole sequence)
  opt             an OPT student (facebook/opt-350m) instead of BLOOM (bigscience/bloom-560m)
  tiny            a tiny BLOOM from scratch on the synthetic suite with the byte tokenizer (CPU)

Datasets: `config.data.datasets` — registry names for text/manual (several = multi-task), augment
output directories (`AUGMENT_WORKDIR/augmented/<dataset>`) for the teacher kinds. A kind the augment job
skipped for a record (prompt over max_prompt_tokens with truncation="skip": null there) gives no example
of it, and the run logs how many records lacked which kind; a truncated kind is used as written.
TeacherLM's recipe: AdamW, constant LR 6e-6, batch 64, 10 epochs (CREAK train: 10176 x 10 / 64 = 1590
steps), clip 1.0, the last 2048 tokens of each text kept (here config.data.seq_len is unset: the longest
example's length, at most the model's 2048 positions, so the same cut).
"""
from configs import common, train
from configs.teacher.stages import TINY_MODEL, parse_variant

CONTENTS = ("text", "manual", "cot", "fundamentals", "mistakes", "mixed")
FORMAT = {"text": "answer", "manual": "cot", "cot": "cot", "fundamentals": "fundamentals",
          "mistakes": "mistakes", "mixed": "mixed"}
AUGMENTED = ("runs/augment/augmented/creak",)


# Examples of VARIANT (one content word, plus ftcot / opt / tiny); listed by `--help`, tests build each.
VARIANTS = {"text": "question and answer only", "manual": "plus the dataset's own rationale",
            "cot": "plus the teacher's chain of thought (fundamentals, mistakes: those kinds)",
            "mixed": "every teacher kind, each as its own example",
            "cot,ftcot": "Fine-tune-CoT's layout (rationale, then the answer; loss on the completion)",
            "text,opt": "an OPT student (facebook/opt-350m)", "cot,tiny": "a tiny BLOOM on the synthetic suite (CPU)"}


def get_config(arg: str | None = None):
    words = parse_variant(arg, ("ftcot", "opt"), one_of=CONTENTS)
    (content,) = words & set(CONTENTS)
    ftcot = "ftcot" in words
    config = train.get_config("tiny" if "tiny" in words else None)
    datasets = ("creak",) if content in ("text", "manual") else AUGMENTED
    config.data = train.data("records", loss_on="target" if ftcot else "all", datasets=datasets,
                             split="train", format=FORMAT[content], style="finetune_cot" if ftcot else "teacherlm",
                             kind_ratios={}, add_eos=ftcot, skip_invalid=False, eval_fraction=0.0)
    if "opt" in words:
        config.model = common.model("facebook/opt-350m", family="opt", dtype="bfloat16")
    else:
        config.model = common.model("bigscience/bloom-560m", dtype="bfloat16")
    config.batch_size = 64
    config.num_train_steps = 1590
    config.optimizer = common.optimizer(learning_rate=6e-6, schedule="constant", weight_decay=0.0,
                                        grad_clip_norm=1.0)
    config.eval_every = 0
    if "tiny" in words:
        config.model = common.model(None, **TINY_MODEL)
        config.tokenizer = "builtin:bytes"
        # The synthetic suite's gold annotations stand in for a teacher's in the tiny variant.
        config.data.datasets = ("synthetic:student_train",)
        config.data.seq_len = 256
        config.batch_size = 8
        config.num_train_steps = 40
        config.optimizer = common.optimizer(learning_rate=3e-3, schedule="cosine", warmup_steps=5)
        config.log_every = 5
        common.checkpointing(config, every=20, keep=2)
    return config
