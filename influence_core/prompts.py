"""The prompts file: a JSON list of {"prompt": ..., "completion": ...}, validated up front."""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from influence_core.errors import ConfigError


class Prompt(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    prompt: str = Field(min_length=1)
    completion: str = Field(min_length=1)


_PROMPTS = TypeAdapter(list[Prompt])


def parse_prompts(raw: bytes, source: str) -> list[Prompt]:
    """Validate a prompts file: a non-empty JSON list of {"prompt": str, "completion": str}."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"PROMPTS={source}: not valid JSON ({error})") from None
    try:
        prompts = _PROMPTS.validate_python(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(
            f"PROMPTS={source}: entry {where}: {first['msg']}; expected a list of "
            '{"prompt": "...", "completion": "..."} with non-empty strings'
        ) from None
    if not prompts:
        raise ConfigError(f"PROMPTS={source}: the list is empty; give at least one prompt")
    return prompts


def load_prompts(uri: str) -> list[Prompt]:
    """The prompts of PROMPTS (a path or URL), validated."""
    from influence_core.storage import read_uri

    return parse_prompts(read_uri(uri, "PROMPTS"), uri)
