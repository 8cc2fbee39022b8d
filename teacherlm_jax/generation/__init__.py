"""Generation: the sampler, a job's sampling settings and the prompt buckets (`sampler`), decode slots
(`slots`), the continuous-batching engine that schedules prompts onto them (`scheduler`), and `generate` for a
batch of prompts (`generate`).

Modules import downward in that order (sampler <- slots <- scheduler, generate); `compiles` counts the
programs jax compiles. The augment job, the eval job's generative mode and the lm-eval backend all
generate through this package.
"""
from teacherlm_jax.generation.compiles import compiled_programs
from teacherlm_jax.generation.generate import GenerateOutput, generate
from teacherlm_jax.generation.sampler import PROMPT_BUCKETS, Sampler, Sampling, bucket_length
from teacherlm_jax.generation.scheduler import Engine, Prompt, prompt_width
from teacherlm_jax.generation.slots import CACHE_AXES, DecodeSlots, InsertShape, RowSeeds, num_traces, slot_count

__all__ = ["CACHE_AXES", "DecodeSlots", "Engine", "GenerateOutput", "InsertShape", "PROMPT_BUCKETS", "Prompt",
           "RowSeeds", "Sampler", "Sampling", "bucket_length", "compiled_programs", "generate", "num_traces",
           "prompt_width", "slot_count"]
