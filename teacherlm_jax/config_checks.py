"""Config checks that report every problem at once, each naming its key, and key lookups that suggest the key
meant by a misspelled one.

A job's `validate(config) -> list[ConfigError]` collects its problems with `Problems`; the job raises them at
its start (`raise_all`) and the pipeline's preflight runs the same function on each step's config, putting the
step's place in the pipeline config in front of each key (`under`). So one function holds a job's rules.
"""
from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from teacherlm_jax.errors import ConfigError

_MISSING = object()


class Problems:
    """Collects the problems of one config section; keys are relative to it, messages say `config.<key>`."""

    def __init__(self, config: Mapping, prefix: str = ""):
        self.config = config
        self.prefix = prefix
        self.errors: list[ConfigError] = []

    def value(self, key: str) -> Any:
        node: Any = self.config
        for part in key.split("."):
            if part not in node:
                return _MISSING
            node = node[part]
        return node

    def add(self, key: str, reason: str) -> None:
        """A problem at `key`: `config.<key>=<value>: <reason>` (the value left out when the key is absent)."""
        value = self.value(key)
        shown = "" if value is _MISSING else f"={value!r}"
        self.errors.append(ConfigError(f"config.{self.prefix}{key}{shown}: {reason}"))

    def integer(self, key: str, minimum: int) -> bool:
        """Whether `key` holds an integer >= `minimum` (a problem added if not)."""
        value = self.value(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.add(key, f"expected an integer >= {minimum}")
            return False
        return True

    def number(self, key: str, valid: Callable[[float], bool], rule: str) -> bool:
        """Whether `key` holds a finite number for which `valid` holds (`rule` says what that is)."""
        value = self.value(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not valid(value):
            self.add(key, f"expected a finite number {rule}")
            return False
        return True

    def choice(self, key: str, options: Iterable[Any]) -> bool:
        """Whether `key` holds one of `options`."""
        options = tuple(options)
        if self.value(key) not in options:
            self.add(key, f"expected one of {options}")
            return False
        return True

    def check(self, key: str, fn: Callable[[], Any], sep: str = ": ") -> Any:
        """`fn()`, its ValueError (ConfigError included) turned into a problem at `key`; None then. `sep="."`
        (or "" with key "") for errors that start with the field's own name (`max_new_tokens=0; ...`)."""
        try:
            return fn()
        except ValueError as e:
            self.errors.append(ConfigError(f"config.{self.prefix}{key}{sep}{e}"))
            return None


def require_int(name: str, value: Any, minimum: int) -> None:
    """Raises a ValueError naming `name` unless `value` is an integer (numpy's too, not a bool) >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}={value!r}; expected an integer >= {minimum}")


def raise_all(problems: list[ConfigError]) -> None:
    """Raises the one problem, or a ConfigError listing them all; nothing when there are none."""
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ConfigError(f"{len(problems)} problems:\n  " + "\n  ".join(str(p) for p in problems))


def under(problems: Iterable[ConfigError], section: str) -> list[str]:
    """Each problem's message with its key placed under `section` of a larger config: a job's
    `config.num_train_steps` is a pipeline's `config.students.x.train.num_train_steps`."""
    messages = []
    for problem in problems:
        text = str(problem)
        messages.append(f"config.{section}.{text[len('config.'):]}" if text.startswith("config.")
                        else f"config.{section}: {text}")
    return messages


def _section(node: Any) -> bool:
    """A mapping or a ConfigDict (which is not registered as a Mapping)."""
    return isinstance(node, Mapping) or (hasattr(node, "keys") and hasattr(node, "items"))


def dotted_keys(tree: Any, prefix: str = "") -> Iterator[str]:
    """Every key of a nested mapping, sections and leaves, as dotted paths."""
    if _section(tree):
        for key, value in tree.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            yield path
            yield from dotted_keys(value, path)


def has_key(config: Mapping, dotted: str) -> bool:
    node: Any = config
    for part in dotted.split("."):
        if not _section(node) or part not in node:
            return False
        node = node[part]
    return True


def suggest(config: Mapping, dotted: str) -> list[str]:
    """The keys of `config` a misspelled `dotted` key most likely meant, at any depth of the path: below its
    longest existing prefix, the keys ending in its last name (`train.learning_rate` ->
    `train.optimizer.learning_rate`), else the closest spelling of the first wrong part (`teacher.stag1.x` ->
    `teacher.stage1.x`), else the closest spellings of the whole path."""
    parts = dotted.split(".")
    depth = max(d for d in range(len(parts)) if d == 0 or has_key(config, ".".join(parts[:d])))
    prefix = ".".join(parts[:depth])
    node: Any = config
    for part in parts[:depth]:
        node = node[part]
    if not _section(node):
        return [prefix]  # a value, not a section: the key ends there
    keys = list(dotted_keys(node, prefix))
    same_name = [k for k in keys if k.rsplit(".", 1)[-1] == parts[-1]]
    if same_name:
        return sorted(same_name, key=len)[:3]
    hints = []
    for name in difflib.get_close_matches(parts[depth], [str(k) for k in node.keys()], n=3, cutoff=0.6):
        whole = ".".join([*parts[:depth], name, *parts[depth + 1:]])
        hints.append(whole if has_key(config, whole) else ".".join([*parts[:depth], name]))
    return hints or difflib.get_close_matches(dotted, list(dotted_keys(config)), n=3, cutoff=0.6)


def unknown_key_message(config: Mapping, dotted: str) -> str:
    """`config.<key>: no such key` with the suggestions, for an override naming a key the config lacks."""
    hints = suggest(config, dotted)
    return f"config.{dotted}: no such key" + (f"; did you mean {' or '.join('config.' + h for h in hints)}?"
                                              if hints else "")
