"""What the public may see: the public view of profiles and records (personal information masked)."""

from __future__ import annotations

import re
from typing import Any

from pipelines.identifiers import is_valid_resident_id, mask_resident_id

_ID_NUMBER = re.compile(r"(?<![0-9A-Za-z])\d{17}[\dXx](?![0-9A-Za-z])")
_PHONE = re.compile(r"(?<!\d)1[3-9]\d{9}(?!\d)")
#: never shown to the public (personal information of natural persons)
PUBLIC_HIDDEN = ("legal_rep",)
#: a loan to an individual business owner is personal financial information
INDIVIDUAL_BUSINESS_HIDDEN_PREFIXES = ("lending_",)


def _mask_text(text: str) -> str:
    text = _ID_NUMBER.sub(
        lambda m: mask_resident_id(m.group(0)) if is_valid_resident_id(m.group(0)) else m.group(0), text
    )
    return _PHONE.sub(lambda m: m.group(0)[:3] + "********", text)


def _mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return _mask_text(value)
    if isinstance(value, list):
        return [_mask_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _mask_value(v) for k, v in value.items()}
    return value


def mask_for_public(profile: dict[str, Any]) -> dict[str, Any]:
    """The public view of a profile (or of any record dict)."""
    individual = profile.get("entity_type") == "individual business"
    out = {}
    for key, value in profile.items():
        if key in PUBLIC_HIDDEN:
            continue
        if individual and key.startswith(INDIVIDUAL_BUSINESS_HIDDEN_PREFIXES):
            continue
        if individual and key in ("grade_reasons", "veto_reasons") and isinstance(value, list):
            value = [r for r in value if "lending:" not in r]
        out[key] = _mask_value(value)
    return out
