"""Input checks and secret redaction for cxrflow.deploy: errors say what is wrong before any RPC.

Every message is a `DeployError` that has passed through `redact`, so a token or password in a
host URL or a client's error text never reaches a log.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter


class DeployError(ValueError):
    """A deployment input is unusable or a service could not be reached; the message says which."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


# --- redaction -------------------------------------------------------------------------------
_MASK = "***"
_SENSITIVE_KEY = r"[\w.-]*(?:token|secret|passw(?:or)?d|pwd|api[_-]?key|credential|private[_-]?key|signature)[\w.-]*"
_SCHEME = r"\b[a-zA-Z][a-zA-Z0-9+.-]*://"
_VALUE = r"[^\s\"'&,;})]+"
_REDACTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    # https://user:password@host -> https://user:***@host; https://token@host -> https://***@host
    (re.compile(rf"(?P<scheme>{_SCHEME})(?P<user>[^\s/@:]+):[^\s/@]+@"), rf"\g<scheme>\g<user>:{_MASK}@"),
    (re.compile(rf"(?P<scheme>{_SCHEME})[^\s/@:]+@"), rf"\g<scheme>{_MASK}@"),
    # Authorization: Bearer abc / "authorization": "Basic abc" / Cookie: session=abc
    (
        re.compile(
            r"(?i)(?P<key>\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)(?P<scheme>(?:bearer|basic|token)\s+)?[^\s\"',;]+"
        ),
        rf"\g<key>\g<scheme>{_MASK}",
    ),
    (re.compile(r"(?i)(?P<key>\b(?:set-)?cookies?[\"']?\s*[:=]\s*[\"']?)[^\"'\n]+"), rf"\g<key>{_MASK}"),
    (re.compile(r"(?i)\b(?P<scheme>bearer)\s+[^\s\"',;]+"), rf"\g<scheme> {_MASK}"),
    # access_token=abc, "client_secret": "abc", password: abc, X-Goog-Signature=abc
    (re.compile(rf"(?i)(?P<key>\b{_SENSITIVE_KEY}[\"']?\s*[=:]\s*[\"']?)(?!\*\*\*){_VALUE}"), rf"\g<key>{_MASK}"),
    # Token shapes that need no key: Google OAuth, GitHub, JWTs
    (re.compile(r"\bya29\.[\w.-]+"), f"ya29.{_MASK}"),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{16,}"), _MASK),
    (re.compile(r"\beyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]*"), _MASK),
)
_MAX_REASON = 500


def redact(text: str) -> str:
    """`text` with passwords in URLs, bearer/basic credentials, cookies, `*token*=`/`*secret*=`/
    `*password*=`/`*api_key*=`-style values and well-known token shapes replaced by `***`."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


def error_reason(exc: BaseException) -> str:
    text = redact(f"{type(exc).__name__}: {exc}".strip())
    return text if len(text) <= _MAX_REASON else text[:_MAX_REASON] + "..."


def call_client(target: str, action: Callable[[], Any]) -> Any:
    """Run a client call; any failure becomes DeployError('could not reach <target>: <reason>')."""
    try:
        return action()
    except DeployError:
        raise
    except Exception as exc:
        # `from None`: the original exception's text (and its traceback) may carry the secret.
        raise DeployError(f"could not reach {target}: {error_reason(exc)}") from None


# --- cron ------------------------------------------------------------------------------------
_CRON_TZ = re.compile(r"(?:CRON_TZ|TZ)=(?P<zone>\S+)")
# croniter also takes extensions that neither KFP's scheduler (robfig/cron) nor Vertex AI's
# (unix-cron) knows: `?`, `L`, `W`, `#`, `H` and @-macros. Names (MON, JAN) are fine for both.
_CRON_FIELD = re.compile(r"[0-9A-Za-z*/,-]+")
_CRON_EXTENSION = re.compile(r"(?i)(?:^|[^A-Z])(?:L|W|H)(?:$|[^A-Z])")
_REVERSED_RANGE = re.compile(r"(?<![\d/])(\d+)-(\d+)")


def validate_cron(cron: str, *, allow_timezone: bool = False) -> str:
    """A standard 5-field cron (`minute hour day-of-month month day-of-week`), single-spaced,
    checked by croniter (ranges, steps, and MON/JAN-style names).

    With `allow_timezone`, a leading `TZ=Area/City` or `CRON_TZ=Area/City` (Vertex AI's syntax)
    is kept after checking the zone name.
    """
    if not isinstance(cron, str) or not cron.strip():
        raise DeployError("cron must be a 5-field cron string such as '0 3 * * 1', got nothing")
    parts = cron.split()
    prefix: list[str] = []
    tz = _CRON_TZ.fullmatch(parts[0])
    if tz:
        if not allow_timezone:
            raise DeployError(f"bad cron {cron!r}: KFP schedules take no TZ= prefix (they use the server's zone)")
        try:
            ZoneInfo(tz["zone"])
        except (ZoneInfoNotFoundError, ValueError):
            raise DeployError(f"bad cron {cron!r}: unknown time zone {tz['zone']!r}") from None
        prefix, parts = [parts[0]], parts[1:]
    if len(parts) != 5:
        raise DeployError(
            f"bad cron {cron!r}: expected 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}"
        )
    for text in parts:
        if not _CRON_FIELD.fullmatch(text) or _CRON_EXTENSION.search(text):
            raise DeployError(f"bad cron {cron!r}: field {text!r} may hold only numbers, names (MON, JAN), "
                              "'*', '/', '-' and ',' (KFP and Vertex AI take no ?, L, W, # or H)")
        for first, last in _REVERSED_RANGE.findall(text):
            if int(first) > int(last):  # croniter wraps these around; KFP's scheduler refuses them
                raise DeployError(f"bad cron {cron!r}: field {text!r} has a reversed range {first}-{last}")
    expression = " ".join(parts)
    try:
        croniter(expression)
    except (CroniterError, ValueError) as exc:
        raise DeployError(f"bad cron {cron!r}: {exc}") from None
    return " ".join(prefix + parts)


def kfp_cron(cron: str) -> str:
    """KFP's scheduler wants 6 fields, seconds first: '0 3 * * 1' -> '0 0 3 * * 1'."""
    return "0 " + validate_cron(cron)


# --- validation ------------------------------------------------------------------------------
def require(value: str | None, what: str, example: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DeployError(f"{what} is required (e.g. {example})")
    return value.strip()


def local_package(package_path: str | Path) -> str:
    path = Path(require(str(package_path or ""), "the compiled pipeline package", "pipeline.yaml"))
    if not path.is_file():
        raise DeployError(f"pipeline package {str(path)!r} not found; run `cxrflow compile --output {path}` first")
    return str(path)


def pipeline_template(package_path: str | Path) -> str:
    text = require(str(package_path or ""), "the compiled pipeline package", "pipeline.yaml or gs://.../pipeline.yaml")
    return text if "://" in text else local_package(text)


def kfp_host(host: str) -> str:
    host = require(host, "the KFP host", "http://localhost:8080")
    if not host.startswith(("http://", "https://")):
        raise DeployError(f"KFP host {host!r} must start with http:// or https://")
    return host.rstrip("/")


def vertex_target(project: str, region: str) -> tuple[str, str]:
    project = require(project, "a Google Cloud project (--project)", "my-project")
    region = require(region, "a Vertex AI region (--region)", "us-central1")
    if not re.fullmatch(r"[a-z]+(?:-[a-z]+)+\d+", region):
        raise DeployError(f"region {region!r} is not a Vertex AI region name such as us-central1 (not a zone)")
    return project, region


def gcs_path(path: str, what: str, flag: str) -> str:
    path = require(path, f"{what} ({flag})", "gs://my-bucket/cxrflow")
    if not re.fullmatch(r"gs://[a-z0-9][a-z0-9._-]{1,221}[a-z0-9](/.*)?", path):
        raise DeployError(f"{what} must be a gs://BUCKET/... path, got {path!r}")
    return path


def check_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    out = {str(k): str(v) for k, v in (labels or {}).items()}
    for key, value in out.items():
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", key) or not re.fullmatch(r"[a-z0-9_-]{0,63}", value):
            raise DeployError(
                f"label {key}={value!r}: keys must start with a lowercase letter; keys and values hold at most 63 "
                "lowercase letters, digits, '_' or '-'"
            )
    return out
