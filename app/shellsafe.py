"""Shell safety: every user value that reaches a shell on a GPU host passes through here.

Whitelist at the boundary (``check_*``), quote at the sink (``quote``, ``quote_argv``,
``env_assignments``, ``command``). Messages name the field and the rule, never the value: it may
be a secret or an attack payload. Stdlib only, so workers load it without the web framework.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping, Sequence

from app.errors import BadRequest

REPO_RE = r"[A-Za-z0-9._-]+/[A-Za-z0-9._-]+"
IMAGE_RE = r"[A-Za-z0-9][A-Za-z0-9._:/@-]*"
NAME_RE = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
LOCAL_PATH_RE = r"/[A-Za-z0-9._+/-]+"
MODEL_KEY_RE = r"[a-z0-9][a-z0-9._-]{0,63}"
ENV_NAME_RE = r"[A-Z_][A-Z0-9_]*"
FLAG_RE = r"--[a-z0-9][a-z0-9-]*"
# Control characters (C0, DEL, C1) and lone surrogates: never part of a free-text value.
CONTROL_RE = r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]"

MAX_REPO = 200
MAX_IMAGE = 255
MAX_NAME = 128  # container, service
MAX_PATH = 4096
MAX_MODEL_KEY = 64
MAX_ENV_NAME = 128
MAX_FLAG = 128
MAX_TEXT = 4096  # env var and vLLM arg values

_CONTROL = re.compile(CONTROL_RE)
_NUMBER = re.compile(r"-?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


class UnsafeValue(BadRequest):
    """A user value that may not reach a shell; the message never repeats the value."""

    code = "UNSAFE_VALUE"


def _refuse(field: str, rule: str) -> UnsafeValue:
    return UnsafeValue(f"{field}: {rule}")


def _whitelisted(v: object, field: str, pattern: str, max_len: int, rule: str) -> str:
    """The value if it is a string of at most max_len characters fully matching pattern."""
    if not isinstance(v, str):
        raise _refuse(field, "must be a string")
    if len(v) > max_len:
        raise _refuse(field, f"must be at most {max_len} characters")
    if not re.fullmatch(pattern, v):
        raise _refuse(field, f"{rule} ({pattern})")
    return v


def _text(v: object, field: str) -> str:
    """Free text to be quoted at the sink: no NUL, newline, CR or other control character."""
    if not isinstance(v, str):
        raise _refuse(field, "must be a string")
    if len(v) > MAX_TEXT:
        raise _refuse(field, f"must be at most {MAX_TEXT} characters")
    if _CONTROL.search(v):
        raise _refuse(field, "must not contain NUL, newline, CR or other control characters")
    return v


def check_repo(v: object, field: str = "repo") -> str:
    """A Hugging Face repo id, owner/name."""
    repo = _whitelisted(v, field, REPO_RE, MAX_REPO, "must look like owner/name")
    owner, name = repo.split("/")
    if {owner, name} & {".", ".."}:
        raise _refuse(field, "owner and name must not be '.' or '..'")
    if owner.startswith("-"):
        raise _refuse(field, "must not start with '-'")
    return repo


def check_image(v: object, field: str = "image") -> str:
    """A container image reference, e.g. nvcr.io/nvidia/vllm:25.09-py3."""
    return _whitelisted(v, field, IMAGE_RE, MAX_IMAGE, "must be an image reference")


def check_container(v: object, field: str = "container") -> str:
    """A Docker container name."""
    return _whitelisted(v, field, NAME_RE, MAX_NAME, "must be a container name")


def check_service(v: object, field: str = "service") -> str:
    """A service (systemd unit or compose service) name."""
    return _whitelisted(v, field, NAME_RE, MAX_NAME, "must be a service name")


def check_local_path(v: object, field: str = "local_path") -> str:
    """An absolute path with no '.', '..' or empty segment."""
    path = _whitelisted(v, field, LOCAL_PATH_RE, MAX_PATH, "must be an absolute path")
    if any(seg in ("", ".", "..") for seg in path[1:].split("/")):
        raise _refuse(field, "must not contain '.', '..' or empty segments")
    return path


def check_model_key(v: object, field: str = "model") -> str:
    """A catalog key."""
    return _whitelisted(v, field, MODEL_KEY_RE, MAX_MODEL_KEY, "must be a model key")


def check_port(v: object, field: str = "port") -> int:
    """A TCP port, an int in 1..65535 (bool refused)."""
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
        raise _refuse(field, "must be an integer in 1..65535")
    return v


def check_env_name(v: object, field: str = "env") -> str:
    """An environment variable name."""
    return _whitelisted(v, field, ENV_NAME_RE, MAX_ENV_NAME, "must be an env var name")


def check_env_value(v: object, field: str = "env") -> str:
    """An environment variable value: any printable text, quoted at the sink."""
    return _text(v, field)


def check_flag(v: object, field: str = "flag") -> str:
    """A vLLM long option name, e.g. --max-model-len."""
    return _whitelisted(v, field, FLAG_RE, MAX_FLAG, "must be a long option")


def check_arg_value(v: object, field: str = "arg") -> str:
    """A vLLM option value as a string; a leading '-' only for numbers (no option injection)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise _refuse(field, "must be a finite number")
        return repr(v)
    s = _text(v, field)
    if s.startswith("-") and not _NUMBER.fullmatch(s):
        raise _refuse(field, "must not start with '-' unless it is a number")
    return s


def quote(v: str) -> str:
    """One shell word that the shell reads back as exactly v."""
    if not isinstance(v, str):
        raise TypeError("quote() takes a str")
    if "\x00" in v:
        raise _refuse("value", "must not contain NUL")
    return shlex.quote(v)


def quote_argv(argv: Sequence[str]) -> str:
    """A command line that shlex.split (and the shell) read back as exactly argv."""
    if isinstance(argv, str):
        raise TypeError("quote_argv() takes a sequence of str, not a str")
    return " ".join(quote(a) for a in argv)


def env_assignments(env: Mapping[str, str]) -> str:
    """Prefix assignments K='v' K2='v2' with validated names and quoted values."""
    parts = []
    for name, value in env.items():
        check_env_name(name)
        parts.append(f"{name}={quote(check_env_value(value, field=f'env.{name}'))}")
    return " ".join(parts)


def command(*parts: str | Sequence[str]) -> str:
    """One command line from words and argv lists; every word is quoted (operators are not)."""
    words: list[str] = []
    for part in parts:
        if isinstance(part, str):
            words.append(part)
        else:
            words.extend(part)
    return quote_argv(words)
