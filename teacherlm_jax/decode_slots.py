"""Moved to `teacherlm_jax.generation.slots`; these names stay importable from here."""
from teacherlm_jax.generation.slots import (CACHE_AXES, DecodeSlots, InsertShape, RowSeeds, SlotState, num_traces,
                                            row_keys, slot_count)

__all__ = ["CACHE_AXES", "DecodeSlots", "InsertShape", "RowSeeds", "SlotState", "num_traces", "row_keys", "slot_count"]
