"""Config problems as users read them: a key path, what was expected, never a secret's value."""

from __future__ import annotations

import re
from typing import Any, get_args

from pydantic import (
    BaseModel,
    ValidationError,
)

from ..errors import ConfigError, ConfigProblem
from .models import SECRET, shown

MAX_PROBLEMS = 20  # listed in one error; the rest are counted


def _key_step(name: object, first: bool = False) -> str:
    """One key of a key path: `.name`, or `['na\\nme']` for a key a terminal or a log would not show as written."""
    text = str(name)
    if text and len(text) <= 80 and text.isprintable() and not any(c in text for c in ".[]'\" "):
        return text if first else "." + text
    return f"[{shown(name)}]"


def _format_location(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        parts.append(f"[{item}]" if isinstance(item, int) else _key_step(item, first=not parts))
    return "".join(parts)


def _printable(text: str) -> str:
    """`text` with every non-printable character escaped: one line, and no terminal escape sequence."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def config_error(source: str, problems: list[ConfigProblem]) -> ConfigError:
    """The ConfigError for `problems`: each one printable on one line, at most MAX_PROBLEMS of them listed."""
    shown_problems = [ConfigProblem(_printable(p.location), _printable(p.message)) for p in problems[:MAX_PROBLEMS]]
    if len(problems) > MAX_PROBLEMS:
        shown_problems.append(ConfigProblem("", f"and {len(problems) - MAX_PROBLEMS} more problems"))
    return ConfigError(_printable(source), shown_problems)


def _allowed_keys(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str] | None:
    """The keys allowed at `loc`'s parent, for 'unknown key' messages."""
    current: Any = model
    for item in loc[:-1]:
        if isinstance(item, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        field = current.model_fields.get(str(item))
        if field is None:
            return None
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        for arg in getattr(annotation, "__args__", ()):
            nested += [c for c in getattr(arg, "__args__", ()) if isinstance(c, type) and issubclass(c, BaseModel)]
        current = nested[0] if nested else None
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return None


def _child(node: Any, key: int | str) -> Any:
    """The raw config value under `key`, or None when the path leaves the document."""
    if isinstance(node, dict):
        return node.get(key)
    if isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
        return node[key]
    return None


# Keys whose values are secrets even where the model types them loosely (a sink's raw mapping, an unknown key).
_SECRET_NAME = re.compile(r"password|passwd|passphrase|secret|token|api_?key|credential|private_?key", re.IGNORECASE)


def _has_secret_marker(annotation: Any) -> bool:
    if SECRET in getattr(annotation, "__metadata__", ()):
        return True
    return any(_has_secret_marker(arg) for arg in get_args(annotation))


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def is_secret_path(model: type[BaseModel], loc: tuple[int | str, ...]) -> bool:
    """Whether the value at `loc` (a user key path under `model`) is secret-typed (SecretRef) or secret-named."""
    if any(isinstance(item, str) and _SECRET_NAME.search(item) for item in loc):
        return True
    models = [model]
    for item in loc:
        if isinstance(item, int):
            continue
        fields = [f for m in models for name, f in m.model_fields.items() if item in (name, f.alias)]
        if any(SECRET in f.metadata or _has_secret_marker(f.annotation) for f in fields):
            return True
        models = [m for f in fields for m in _models_in(f.annotation)]
        if not models:
            return False
    return False


def problems_from_validation(
    exc: ValidationError, model: type[BaseModel], prefix: tuple[int | str, ...] = (), raw: Any = None
) -> list[ConfigProblem]:
    def user_path(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
        # pydantic puts union member names into loc, and for a union tagged by `type` the tag's value (e.g.
        # `auth.basic.extra` for `auth: {type: basic, ...}`); drop them so the path is the user's key path.
        out: list[int | str] = []
        node = raw
        for p in loc:
            if isinstance(p, str) and p.startswith(("list[", "literal[", "function-", "constrained-")):
                continue
            if isinstance(node, dict) and p not in node and node.get("type") == p:
                continue
            out.append(p)
            node = _child(node, p)
        return tuple(out)

    problems = []
    errors = exc.errors()
    deep = [user_path(tuple(e["loc"])) for e in errors if e["type"] != "literal_error"]
    for err in errors:
        loc = user_path(tuple(err["loc"]))
        # A union like `list[Region] | "all"` reports the literal branch too: drop it when a deeper error says more.
        if err["type"] == "literal_error" and any(d[: len(loc)] == loc and len(d) > len(loc) for d in deep):
            continue
        secret = is_secret_path(model, loc)
        key_problem = bool(loc) and loc[-1] == "[key]"  # a mapping's key itself (e.g. a number) is wrong
        loc = tuple(prefix) + (loc[:-1] if key_problem else loc)
        if key_problem:
            message = f"the key {shown(loc[-1]) if loc else ''} must be a string: {err['msg']}"
        elif err["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc[len(prefix) :])
            message = "unknown key" + (f" (expected one of: {', '.join(allowed)})" if allowed else "")
        else:
            message = str(err["msg"]).removeprefix("Value error, ")
            if secret:
                message += " (the value is not shown: this key holds a secret reference)"
            elif err["type"] not in ("value_error", "assertion_error") and "input" in err:
                message += f" (got {shown(err['input'])})"
        problems.append(ConfigProblem(_format_location(loc), message))
    return problems
