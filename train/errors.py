"""User-caused errors end a command with one line naming the flag or file and the fix, not a traceback."""

import contextlib
import os
import re
import sys
from typing import NoReturn

from absl import app, flags
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from data.errors import DataError
from model.config import ConfigError
from train import hostmem
from train.metrics import NonFiniteError


class UserError(ValueError):
    """A training, mesh or checkpoint setting that cannot work; the message names the flag and the fix."""


def fail(msg: str) -> NoReturn:
    """Raises UserError(msg)."""
    raise UserError(msg)


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the input is wrong", as opposed to a bug (which keeps its traceback)."""
    return DataError, ConfigError, UserError, NonFiniteError, FileNotFoundError


@contextlib.contextmanager
def one_line():
    """Turns a user error raised inside the block into `error: <message>` on stderr and exit status 2."""
    try:
        yield
    except user_error_types() as e:
        sys.stderr.write(f"error: {e}\n")
        sys.stderr.flush()
        sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing where a bad flag, a config file that does not load or an unknown --config.* field is one
    `error:` line, exit status 2."""
    try:
        rest = flags.FLAGS(argv)
        _load_config_files(flags.FLAGS)
        return rest
    except (flags.Error, KeyError, AttributeError, ValueError, TypeError, OSError) as e:
        sys.stderr.write(f"error: {flag_error(e, argv, flags.FLAGS)}\n")
        sys.exit(2)


def _config_file_flags(flag_values) -> list:
    """The flags defined with config_flags.DEFINE_config_file (their value is a `path.py:argument`)."""
    return [flag_values[n] for n in flag_values if isinstance(flag_values[n].parser, ConfigFileFlagParser)]


def _load_config_files(flag_values) -> None:
    """config_flags keeps a config file that failed to load as an object raising OSError on first use: use it now."""
    for flag in _config_file_flags(flag_values):
        if flag.value is not None:
            getattr(flag.value, "lock", None)


def _missing_config_file(argv: list[str], flag_values) -> str | None:
    """The message for a config-file flag whose file does not exist, if one was given."""
    for flag in _config_file_flags(flag_values):
        for i, arg in enumerate(argv[1:], 1):
            name, sep, value = arg.lstrip("-").partition("=")
            if not arg.startswith("-") or name != flag.name:
                continue
            if not sep:  # --config path.py:variant
                value = argv[i + 1] if i + 1 < len(argv) else ""
            path = value.split(":", 1)[0]
            if path and not os.path.isfile(path):
                return (f"--{flag.name}={value}: the config file {path} does not exist (looked in {os.getcwd()}); "
                        f"pass an existing one, e.g. --{flag.name}=experiments/configs/gpt.py:tiny")
    return None


def _unknown_field(e: BaseException, argv: list[str]) -> str:
    """The message for an override --config.a.b=... of a field the config does not have."""
    inner = e.args[0] if e.args and isinstance(e.args[0], BaseException) else e  # AttributeError(KeyError(...))
    text = str(inner.args[0] if inner.args else inner)
    see = "see experiments/configs/base.py for the fields that exist"
    overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("-") and "." in a.split("=")[0]]
    lookup = re.search(r"Attempting to lookup: ([\w.]+)", text)
    if lookup:  # --config.train.steps.x: a field under a field that holds a value
        path = lookup.group(1)
        arg = next((a for a in overrides if a.endswith("." + path)), f"--config.{path}")
        return f"{arg}: {arg.lstrip('-').rsplit('.', 1)[0]} holds a value, not fields; {see}"
    name = (re.findall(r"\w+", text) or [text])[0]
    arg = next((a for a in overrides if name in a.lstrip("-").split(".")), name)
    hint = re.search(r'Did you mean "(\w+)"', text)
    if hint and name in arg.split("."):
        parts = arg.split(".")
        parts[parts.index(name)] = hint.group(1)
        see = f"did you mean {'.'.join(parts)}? ({see})"
    return f"{arg} is not a config field; {see}"


def flag_error(e: BaseException, argv: list[str], flag_values) -> str:
    """One line for an exception raised while parsing `argv`: the flag and the fix, never a traceback."""
    missing = _missing_config_file(argv, flag_values)
    if missing:
        return missing
    if isinstance(e, (KeyError, AttributeError)):
        return _unknown_field(e, argv)
    text = str(e).strip()
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    if "Traceback" in text:  # config_flags embeds the config file's traceback: keep the flag and the cause
        return f"{lines[0].split(': ')[0]}: {lines[-1]}"
    if isinstance(e, OSError):  # a config file that exists but raised OSError inside (reading a file of its own)
        names = [f"--{f.name}" for f in _config_file_flags(flag_values)]
        return f"{names[0] if names else 'flags'}: {lines[-1] if lines else e}"
    return " ".join(lines)


def run_app(main) -> int:
    """absl's app.run with `parse_flags`, in a process with huge pages for the allocator (train/hostmem.py)."""
    hostmem.reexec()
    app.run(main, flags_parser=parse_flags)
    return 0
