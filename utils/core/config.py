"""Settings as typed module globals, overridable by a config file and by ``--key=value``.

A script declares its settings at the top as annotated globals (``init_lr: float = 1e-2``) and calls
``resolve_config(settings_of(globals()), argv)``. Precedence: defaults < ``--config=FILE`` (TOML or
JSON) < ``--key=value``. Unknown keys and values of the wrong type are errors that name the key. A setting with a
fixed set of values declares them in its annotation (``model: Literal["yolov4", "yolov4-tiny"]``): any other
value is refused with the choices, and ``--help`` lists them.
"""
import ast
import copy
import dataclasses
import difflib
import functools
import inspect
import io
import json
import re
import sys
import tokenize
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

TRUE_WORDS, FALSE_WORDS, NONE_WORDS = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}, {"none", "null"}


class UserError(ValueError):
    """An expected mistake in what the user gave (a setting, a file, a dataset), not a bug: ``run_cli`` prints
    its message as one line and exits with code 2. A ValueError, so existing ``except ValueError`` still sees it."""


class ConfigError(UserError):
    """A bad setting: unknown key, wrong type or unreadable config file."""


def settings_of(namespace: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{name: (type, default)} for every annotated global of a script's namespace."""
    return {name: (kind, namespace[name]) for name, kind in namespace.get("__annotations__", {}).items()
            if not name.startswith("_")}


def settings_dataclass(namespace: dict[str, Any], *, name: str) -> type:
    """A frozen dataclass whose fields are a script's annotated globals, with their types, defaults and order.

    The script's top stays the one place a setting is declared; code below it receives an instance.
    """
    fields = [(key, kind, dataclasses.field(default_factory=functools.partial(copy.deepcopy, _normalise(default))))
              for key, (kind, default) in settings_of(namespace).items()]
    return dataclasses.make_dataclass(name, fields, frozen=True)


def settings_of_class(config_class: type) -> dict[str, tuple[Any, Any]]:
    """{name: (type, default)} of a settings dataclass, as ``settings_of`` gives for a namespace."""
    return {f.name: (f.type, f.default_factory()) for f in dataclasses.fields(config_class)}


def resolve_settings(config_class: type, argv: list[str] | None = None, *, base: dict[str, Any] | None = None):
    """An instance of ``config_class``: defaults < ``base`` (e.g. a checkpoint's saved config) < file < argv."""
    settings = settings_of_class(config_class)
    if base is not None:
        settings = {key: (kind, base.get(key, default)) for key, (kind, default) in settings.items()}
    return config_class(**resolve_config(settings, argv))


def _allowed_types(kind: Any) -> tuple[list[Any], bool]:
    """The concrete types behind an annotation and whether None is allowed."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        args = typing.get_args(kind)
        return [a for a in args if a is not type(None)], type(None) in args
    return [kind], False


def _check_container(value: Any, kind: Any) -> bool:
    origin = typing.get_origin(kind) or kind
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        args = [a for a in typing.get_args(kind) if a is not Ellipsis]
        return not args or all(_matches(item, args[0] if origin is list else args[min(i, len(args) - 1)])
                               for i, item in enumerate(value))
    if origin is dict:
        return isinstance(value, dict)
    return False


def _matches(value: Any, kind: Any) -> bool:
    kinds, nullable = _allowed_types(kind)
    if value is None:
        return nullable
    for k in kinds:
        if typing.get_origin(k) is typing.Literal:
            if any(value == choice and type(value) is type(choice) for choice in typing.get_args(k)):
                return True
            continue
        if k is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if k is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if k in (bool, str) and isinstance(value, k):
            return True
        if typing.get_origin(k) or k in (list, tuple, dict):
            if _check_container(value, k):
                return True
    return False


def parse_value(text: str, kind: Any, *, key: str) -> Any:
    """Converts a command-line string to the setting's type, or raises ConfigError."""
    kinds, nullable = _allowed_types(kind)
    lowered = text.strip().lower()
    if nullable and lowered in NONE_WORDS:
        return None
    for k in kinds:
        if typing.get_origin(k) is typing.Literal:
            for choice in typing.get_args(k):
                if text.strip() == str(choice):
                    return choice
            continue
        if k is bool:
            if lowered in TRUE_WORDS | FALSE_WORDS:
                return lowered in TRUE_WORDS
        elif k is str:
            return text
        else:  # numbers and containers: a Python or JSON literal of the declared type
            value = _literal(text.strip())
            if value is not _NOT_A_LITERAL and _matches(value, k):
                return k(value) if k in (int, float) else _normalise(value)
    raise ConfigError(f"--{key}={text}: expected {_type_name(kind)}")


_NOT_A_LITERAL = object()


def _literal(text: str) -> Any:
    """A Python literal, or JSON (``true``/``false``/``null`` inside a list or dict, as shells users write it)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    try:
        return json.loads(text)
    except ValueError:
        return _NOT_A_LITERAL


def _normalise(value: Any) -> Any:
    """Tuples become lists so a resolved config survives a JSON round trip unchanged."""
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


def _type_name(kind: Any) -> str:
    """``float``, ``list[int]``, ``one of 'sgd', 'adam'``, ``float or one of 'match_bce_at_init'``..."""
    if typing.get_origin(kind) is typing.Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(kind))
    kinds, nullable = _allowed_types(kind)
    if len(kinds) > 1 or nullable:
        return " or ".join([*(_type_name(k) for k in kinds), *(["None"] if nullable else [])])
    return getattr(kind, "__name__", None) if not typing.get_args(kind) else str(kind).replace("typing.", "")


def _unknown(key: str, known: dict[str, Any], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ConfigError(f"{where}: unknown setting {key!r}{hint}")


def read_config_file(path: str) -> dict[str, Any]:
    """A TOML (``key = value``) or JSON object of settings."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {path}: not found")
    try:
        text = file.read_text(encoding="utf-8-sig")  # drops a byte-order mark (Notepad), which TOML and JSON refuse
    except UnicodeDecodeError as err:
        bad = err.object[err.start:err.start + 8]
        raise ConfigError(f"config file {path}: not UTF-8 text (bytes {bad!r} at byte {err.start}); save it as UTF-8"
                          ) from err
    try:
        data = json.loads(text) if file.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"config file {path}: not valid {'JSON' if file.suffix == '.json' else 'TOML'}: {err}"
                          ) from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected an object of settings")
    return data


def resolve_config(settings: dict[str, tuple[Any, Any]], argv: list[str] | None = None) -> dict[str, Any]:
    """Defaults, then the config file, then ``--key=value`` overrides; returns a plain dict."""
    argv = sys.argv[1:] if argv is None else list(argv)
    config = {name: _normalise(default) for name, (_, default) in settings.items()}
    overrides: list[tuple[str, str]] = []
    config_path = None
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"{arg!r}: settings are given as --key=value")
        key, text = arg[2:].split("=", 1)
        if key == "config":
            config_path = text
        else:
            overrides.append((key.replace("-", "_"), text))
    if config_path:
        for key, value in read_config_file(config_path).items():
            if key not in settings:
                raise _unknown(key, settings, f"config file {config_path}")
            if not _matches(value, settings[key][0]):
                raise ConfigError(f"config file {config_path}: {key} = {value!r}: "
                                  f"expected {_type_name(settings[key][0])}")
            config[key] = _normalise(value)
    for key, text in overrides:
        if key not in settings:
            raise _unknown(key, settings, f"--{key}")
        config[key] = parse_value(text, settings[key][0], key=key)
    return config


def print_config(config: dict[str, Any]) -> None:
    width = max(map(len, config))
    for key, value in config.items():
        print(f"  {key:<{width}} = {value!r}")


USER_ERROR_EXIT_CODE = 2


def run_cli(main, *, user_errors: tuple[type[BaseException], ...] = ()) -> None:
    """Runs a script's main(): ``--help`` prints its settings; an expected user error (UserError, a missing file,
    a SystemExit carrying a message, or one of ``user_errors``) ends it with its message on stderr (one line, or a
    first line and one problem a line) and exit code 2.
    Anything else keeps its traceback: that is a bug."""
    module = sys.modules.get(main.__module__)
    if {"-h", "--help"} & set(sys.argv[1:]) and module is not None:
        print(help_text(module))
        sys.exit(0)
    try:
        main()
    except (UserError, FileNotFoundError, *user_errors) as err:
        _exit_with(str(err))
    except SystemExit as err:
        if isinstance(err.code, str):
            _exit_with(err.code)
        raise
    except KeyboardInterrupt:  # what was saved on the way out (train.py's checkpoint) has been reported already
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def _exit_with(message: str) -> None:
    print(f"error: {user_message(message)}", file=sys.stderr)
    sys.exit(USER_ERROR_EXIT_CODE)


def user_message(message: str, *, max_lines: int = 21) -> str:
    """The user's part of an error message. A DataLoader worker's re-raised error keeps only the original
    exception's text (its last line, without the exception's type); a list of problems (a first line, then one
    problem a line) is cut to ``max_lines`` lines and a count."""
    if "Original Traceback" in message:
        last = [line for line in message.splitlines() if line.strip()][-1]
        message = re.sub(r"^[\w.]+(Error|Exception): ", "", last.strip())
    lines = [line.rstrip() for line in message.strip().splitlines() if line.strip()]
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"... ({len(lines) - max_lines} more lines)"]
    return "\n  ".join(line.strip() if i else line for i, line in enumerate(lines))


def setting_comments(source: str) -> dict[str, str]:
    """{name: comment} for each annotated module-level assignment of a script's source whose first line ends in
    a ``# comment`` (the one-line descriptions at a script's top)."""
    comments = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    result = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.lineno in comments:
            result[node.target.id] = comments[node.lineno]
    return result


def help_text(module: types.ModuleType) -> str:
    """A script's docstring, then each setting with its type, default and the comment beside it in the source."""
    namespace = vars(module)
    settings = settings_of(namespace)
    try:
        comments = setting_comments(inspect.getsource(module))
    except (OSError, TypeError):
        comments = {}
    width = max((len(name) for name in settings), default=0)
    lines = [(module.__doc__ or "").strip(), "", "settings (--key=value, or --config=FILE with a TOML/JSON object):"]
    for name, (kind, default) in settings.items():
        lines.append(f"  --{name:<{width}}  {_type_name(kind)} = {default!r}")
        if comments.get(name):
            lines.append(f"      {comments[name]}")
    return "\n".join(lines)
