"""User-caused errors end a command with one line naming the flag or file and the fix, not a traceback."""

import contextlib
import sys

from absl import app


class UserError(ValueError):
    """A training, mesh or checkpoint setting that cannot work; the message names the flag and the fix."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the input is wrong", as opposed to a bug (which keeps its traceback)."""
    from data.errors import DataError
    from model.config import ConfigError
    from train.metrics import NonFiniteError

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
    """absl flag parsing where a bad flag or an unknown --config.* field is one `error:` line, exit status 2."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except (flags.Error, KeyError, AttributeError, ValueError, TypeError) as e:
        msg = str(e).strip().strip("\"'")
        if "Traceback" in msg:  # config_flags embeds the config file's traceback: keep the flag and the cause
            lines = [x for x in msg.splitlines() if x.strip()]
            msg = f"{lines[0].split(': ')[0]}: {lines[-1]}"
        if isinstance(e, (KeyError, AttributeError)):
            field = next((a.split("=")[0].lstrip("-") for a in argv[1:] if msg in a.split("=")[0]), msg)
            msg = f"{field} is not a config field; see experiments/configs/base.py for the fields that exist"
        sys.stderr.write(f"error: {msg}\n")
        sys.exit(2)


def run_app(main) -> int:
    """absl's app.run with `parse_flags`."""
    app.run(main, flags_parser=parse_flags)
    return 0
