"""How binaries report a user's mistake: one clear line and exit code 2, no traceback."""

from __future__ import annotations

import contextlib
import sys

from absl import logging

from samplernn_tf.config import ConfigError


class UserError(Exception):
    """Bad input from the user (flags, files, paths); the message says what and where."""


def user_error_types() -> tuple[type, ...]:
    from pipelines.audio import AudioDecodeError
    from pipelines.dataset import NoAudioError
    return (UserError, ConfigError, FileNotFoundError, NoAudioError, AudioDecodeError)


@contextlib.contextmanager
def exit_on_user_error():
    """Turns user errors into `error: <message>` on stderr and exit status 2."""
    try:
        yield
    except user_error_types() as e:
        logging.flush()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
