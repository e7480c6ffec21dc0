"""Reading a config: bytes -> text -> YAML (refusing hostile documents before building them) -> Config."""

from __future__ import annotations

import gc
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)

from ..errors import ConfigError, ConfigProblem
from .models import Config, shown
from .problems import _format_location, _key_step, config_error, problems_from_validation

# -- reading the YAML --------------------------------------------------------------------------------------------
# Hostile input is refused before any Python object is built from it, in bounded time and memory.
MAX_CONFIG_BYTES = 4_000_000
MAX_DEPTH = 64  # the real config nests 6 levels; libyaml itself stops at 1,000
MAX_ALIAS_VALUES = 10_000  # values that `*alias` references may add to the document ("billion laughs" adds 10^9)
_MERGE = "tag:yaml.org,2002:merge"
_STR = "tag:yaml.org,2002:str"
_IMPLICIT: dict[str, list[tuple[str, re.Pattern[str]]]] = yaml.resolver.Resolver.yaml_implicit_resolvers


class _Refused(Exception):
    """The document is refused before its objects are built (a duplicate key, too deep, an alias bomb)."""

    def __init__(self, problem: ConfigProblem) -> None:
        super().__init__(str(problem))
        self.problem = problem


try:
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # PyYAML built without libyaml: the pure-Python parser (slower; deep nesting caught below)
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]


def _label(parent: yaml.Node, index: int) -> str:
    """The key-path step from `parent` to its `index`-th child (for a mapping: keys and values alternate)."""
    if isinstance(parent, yaml.MappingNode):
        key = parent.value[index // 2][0]
        step = _key_step(key.value) if isinstance(key, yaml.ScalarNode) else ".?"
        return step if index % 2 else step + " (the key)"
    return f"[{index}]"


def _path(stack: list[list[Any]], last: str = "") -> str:
    """The key path of the top frame's node: each frame below it is on the child that leads up the stack."""
    return ("".join(_label(frame[0], frame[2] - 1) for frame in stack[:-1]) + last).lstrip(".")


def _kids(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


class _Loader(_BaseLoader):
    """yaml's safe loader, checked: duplicate keys, depth and alias expansion are refused; every value it cannot
    construct (`!!int x`, `2024-13-45`, a 5,000-digit number) is a problem at its key path, never a traceback."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.root: yaml.Node | None = None

    def check(self, root: yaml.Node) -> None:
        """Walk the composed node graph once (iteratively): depth, alias budget, recursive aliases, duplicate keys."""
        self.root = root
        size: dict[int, int] = {}  # values under a collection node (itself included), aliases expanded
        height: dict[int, int] = {}  # levels of collections, itself included
        added = 0
        # Frames: [node, children, next child index, size so far, height so far]; the stack's length is the depth.
        stack: list[list[Any]] = [[root, _kids(root), 0, 1, 1]]
        active = {id(root)}
        self._check_keys(root, stack)
        while stack:
            frame = stack[-1]
            node, kids, i = frame[0], frame[1], frame[2]
            if i == len(kids):
                stack.pop()
                active.discard(id(node))
                size[id(node)], height[id(node)] = frame[3], frame[4]
                if stack:
                    stack[-1][3] += frame[3]
                    stack[-1][4] = max(stack[-1][4], frame[4] + 1)
                continue
            frame[2] = i + 1
            kid = kids[i]
            if isinstance(kid, yaml.ScalarNode):
                frame[3] += 1
                continue
            key = id(kid)
            if key in active:
                raise _Refused(self._problem(stack, "an alias refers to a value that contains it (a recursive alias)"))
            if key in size:  # reached again: through an alias
                added += size[key]
                if added > MAX_ALIAS_VALUES:
                    line = kid.start_mark.line + 1
                    raise _Refused(
                        self._problem(
                            stack,
                            f"aliases expand the document by more than {MAX_ALIAS_VALUES} values (the anchor at line "
                            f"{line} is repeated): write the values out, or use fewer aliases",
                        )
                    )
                if len(stack) + height[key] > MAX_DEPTH:
                    raise _Refused(self._problem(stack, f"nested deeper than {MAX_DEPTH} levels"))
                frame[3] += size[key]
                frame[4] = max(frame[4], height[key] + 1)
                continue
            if len(stack) + 1 > MAX_DEPTH:
                raise _Refused(self._problem(stack, f"nested deeper than {MAX_DEPTH} levels"))
            active.add(key)
            stack.append([kid, _kids(kid), 0, 1, 1])
            self._check_keys(kid, stack)

    def _check_keys(self, node: yaml.Node, stack: list[list[Any]]) -> None:
        """A key given twice in one mapping is an error: last-wins would let `action: terminate` hide below."""
        if not isinstance(node, yaml.MappingNode):
            return
        seen: dict[Any, yaml.Mark] = {}
        for index, (key_node, _) in enumerate(node.value):
            if key_node.tag == _MERGE or not isinstance(key_node, yaml.ScalarNode):
                continue  # `<<: *base` merges (explicit keys override it); complex keys are refused when built
            try:
                key = key_node.value if key_node.tag == _STR else self.construct_object(key_node)
            except _Refused as exc:
                where = _path(stack, _label(node, 2 * index))
                raise _Refused(ConfigProblem(where, exc.problem.message)) from None
            if key in seen:
                first, again = seen[key], key_node.start_mark
                where = f"lines {first.line + 1} and {again.line + 1}"
                if first.line == again.line:
                    where = f"line {first.line + 1}, columns {first.column + 1} and {again.column + 1}"
                problem = f"duplicate key ({where}): give each key once"
                raise _Refused(ConfigProblem(_path(stack, _label(node, 2 * index + 1)), problem))
            seen[key] = key_node.start_mark

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        """yaml's Resolver.resolve for scalars without the path and wildcard resolvers this loader never has: called
        once per scalar from C, it is a large part of the load time of a big config."""
        if kind is yaml.ScalarNode:
            if implicit[0]:
                for tag, regexp in _IMPLICIT.get(value[:1], ()):
                    if regexp.match(value):
                        return tag
            return _STR
        return super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]

    def construct_scalar_value(self, node: yaml.Node, build: Callable[[Any, Any], Any]) -> Any:
        """`build(self, node)`, with the ValueError, OverflowError or LookupError of a bad scalar (`!!int x`, `!!int`
        with no value, `2024-13-45`, a 5,000-digit number, `!!bool maybe`) as a problem at its key path."""
        try:
            return build(self, node)
        except (ValueError, OverflowError, LookupError, AttributeError, TypeError):  # yaml assumes a well-formed value
            # Not the exception's text: it would echo the value, which may be a mistyped secret.
            kind = node.tag.rsplit(":", 1)[-1]
            where = self._path_of(node)
            raise _Refused(ConfigProblem(where, f"line {node.start_mark.line + 1}: not a valid {kind} value")) from None

    @staticmethod
    def _problem(stack: list[list[Any]], message: str) -> ConfigProblem:
        """A problem at the child the top frame is on (a deep path is cut after a few levels)."""
        where = _path([*stack[:6], []]) + ("..." if len(stack) > 6 else "")
        return ConfigProblem(where, message)

    def _path_of(self, target: yaml.Node) -> str:
        """The key path of `target`, searched from the root (only when reporting an error)."""
        if self.root is None:
            return ""
        todo: list[tuple[yaml.Node, str]] = [(self.root, "")]
        seen: set[int] = set()
        while todo:
            node, path = todo.pop()
            if node is target:
                return path.lstrip(".")
            if id(node) in seen:
                continue
            seen.add(id(node))
            todo += [(kid, path + _label(node, i)) for i, kid in enumerate(_kids(node))]
        return ""


def _guarded(build: Callable[[Any, Any], Any]) -> Callable[[_Loader, yaml.Node], Any]:
    return lambda loader, node: loader.construct_scalar_value(node, build)


for _tag, _build in (
    ("int", yaml.SafeLoader.construct_yaml_int),
    ("float", yaml.SafeLoader.construct_yaml_float),
    ("bool", yaml.SafeLoader.construct_yaml_bool),
    ("timestamp", yaml.SafeLoader.construct_yaml_timestamp),
):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _guarded(_build))


def _yaml_problem(exc: yaml.YAMLError, text: str) -> ConfigProblem:
    """One line for a YAML syntax error: where (line, column) and what."""
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1 if isinstance(exc.position, int) else 0
        char = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "\0")
        return ConfigProblem(f"line {line}", f"not valid YAML: character #x{char:04x} is not allowed ({exc.reason})")
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    message = f"not valid YAML: {problem}" + (f" ({context})" if context else "")
    return ConfigProblem(where, " ".join(message.split()))


def load_yaml(text: str, source: str) -> Any:
    """The YAML document in `text` as Python values, after the checks above; raises ConfigError naming `source`."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(source, [ConfigProblem("", f"larger than {MAX_CONFIG_BYTES // 1_000_000} MB")])
    try:
        loader = _Loader(text)
    except UnicodeError:  # an unpaired surrogate in a str that never came from a file
        raise ConfigError(source, [ConfigProblem("", "not valid Unicode text")]) from None
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        loader.check(root)
        return loader.construct_document(root)
    except yaml.YAMLError as exc:
        raise config_error(source, [_yaml_problem(exc, text)]) from None
    except _Refused as exc:
        raise config_error(source, [exc.problem]) from None
    except UnicodeError:  # an unpaired surrogate in a str that never came from a file
        raise ConfigError(source, [ConfigProblem("", "not valid Unicode text")]) from None
    except (ValueError, LookupError, OverflowError, TypeError, AttributeError):  # a constructor not guarded above
        raise ConfigError(source, [ConfigProblem("", "a value cannot be read as YAML")]) from None
    except RecursionError:  # only the pure-Python parser recurses while composing
        raise ConfigError(source, [ConfigProblem("", f"nested deeper than {MAX_DEPTH} levels")]) from None
    finally:
        loader.dispose()


def decode_config(data: bytes, source: str) -> str:
    """Config bytes as text: UTF-8 (a byte-order mark is allowed), no NUL bytes, at most MAX_CONFIG_BYTES."""
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(source, [ConfigProblem("", f"larger than {MAX_CONFIG_BYTES // 1_000_000} MB")])
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(source, [ConfigProblem("line 1", "UTF-16 or UTF-32 text, not UTF-8; save the file as UTF-8")])
    if b"\0" in data:
        line = data.count(b"\n", 0, data.index(b"\0")) + 1
        raise ConfigError(source, [ConfigProblem(f"line {line}", "a binary file (NUL byte), not YAML text")])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        byte = data[exc.start]
        problem = f"not UTF-8 text (byte 0x{byte:02x}); save the file as UTF-8"
        raise ConfigError(source, [ConfigProblem(f"line {line}", problem)]) from None


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector: loading builds ~10^5 long-lived containers, and the collector's repeated
    passes over them were two thirds of the time of a 1 MB config (1.0 s -> 0.4 s). Loading makes no cycles worth
    collecting (a recursive alias is refused), and the collector runs again as soon as the config is built."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse_config(text: str, source: str) -> Config:
    """Parse and validate config text; raises ConfigError naming the source, key path and expectation."""
    with _no_cyclic_gc():
        return _parse_config(text, source)


def _parse_config(text: str, source: str) -> Config:
    raw = load_yaml(text, source)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, [ConfigProblem("", "the top level must be a mapping of keys")])
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise config_error(source, problems_from_validation(exc, Config, raw=raw)) from None
    _validate_sinks(config, source)
    return config


def _validate_sinks(config: Config, source: str) -> None:
    from ..sinks import sink_registry

    problems: list[ConfigProblem] = []
    for name, raw in config.sinks.items():
        kind = raw.get("type")
        if not isinstance(kind, str) or kind not in sink_registry:
            known = ", ".join(sink_registry.names())
            where = _format_location(("sinks", name, "type"))
            problems.append(ConfigProblem(where, f"unknown sink type {shown(kind)} (known: {known})"))
            continue
        plugin = sink_registry.get(kind)
        try:
            plugin.config_model.model_validate(raw)
        except ValidationError as exc:
            problems += problems_from_validation(exc, plugin.config_model, ("sinks", name), raw=raw)
    if problems:
        raise config_error(source, problems)


def load_config(path: str | Path) -> Config:
    """Read and validate a config file. No AWS call is made."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)  # bounded: the path may be /dev/zero or a huge file
    except FileNotFoundError:
        raise ConfigError(str(p), [ConfigProblem("", "file not found")]) from None
    except IsADirectoryError:
        raise ConfigError(str(p), [ConfigProblem("", "is a directory, not a config file")]) from None
    except OSError as exc:
        raise ConfigError(str(p), [ConfigProblem("", f"cannot read: {exc.strerror or exc}")]) from None
    return parse_config(decode_config(data, str(p)), str(p))
