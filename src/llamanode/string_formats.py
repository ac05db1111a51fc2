"""The `format` values a grammar enforces, written as patterns (regex_syntax's subset).

Shapes as `jsonschema`'s format checker accepts them: `date` is an RFC 3339 full-date that exists
(`date.fromisoformat`: years 0001-9999, February 29 only in leap years); `time` and `date-time` are
RFC 3339 with an offset (`Z` or +hh:mm), as `rfc3339-validator` reads them: upper-case `T` and `Z`,
seconds 00-59; `uuid` is RFC 4122's 8-4-4-4-12 hex digits, either case. The grammar writes at most
nine fraction digits of a second (a model could not loop on them). Any other `format` value is an
annotation, as JSON Schema 2019-09 and later specify by default.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["FORMAT_PATTERNS", "schema_annotations"]

_MULTIPLE_OF_4 = "(?:0[48]|[2468][048]|[13579][26])"  # two digits, a multiple of 4, not 00
_YEAR = "(?:[1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])"
_LEAP_YEAR = f"(?:[0-9]{{2}}{_MULTIPLE_OF_4}|{_MULTIPLE_OF_4}00)"
_MONTH_DAY = (
    "(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    "|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    "|02-(?:0[1-9]|1[0-9]|2[0-8]))"
)
_DATE = f"(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)"
_HOUR = "(?:[01][0-9]|2[0-3])"
_TIME = f"{_HOUR}:[0-5][0-9]:[0-5][0-9](?:\\.[0-9]{{1,9}})?(?:Z|[+-]{_HOUR}:[0-5][0-9])"
_HEX = "[0-9a-fA-F]"

FORMAT_PATTERNS = {
    "date": f"^{_DATE}$",
    "time": f"^{_TIME}$",
    "date-time": f"^{_DATE}T{_TIME}$",
    "uuid": f"^{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}$",
}

_VALUES = frozenset({"enum", "const", "default", "examples"})  # hold instances, not schemas


def schema_annotations(schema: object, path: str = "#") -> tuple[str, ...]:
    """Where schema has a `format` the grammar treats as an annotation (not enforced), e.g.
    `#/properties/site: format 'uri'`, for a log to show."""
    found: list[str] = []
    if isinstance(schema, Mapping):
        value = schema.get("format")
        if isinstance(value, str) and value not in FORMAT_PATTERNS:
            found.append(f"{path}: format {value!r}")
        for key, sub in schema.items():
            if key not in _VALUES and isinstance(sub, (Mapping, list)):
                found.extend(schema_annotations(sub, f"{path}/{key}"))
    elif isinstance(schema, list):
        for i, sub in enumerate(schema):
            found.extend(schema_annotations(sub, f"{path}/{i}"))
    return tuple(found)
