"""params.yaml as a person and DVC read it: every value a run uses, each key with its one-line meaning.

``emi params use PROFILE [--set key=value ...]`` writes it from a named profile; ``emi params set key=value ...``
changes values in place (what the Prefect flow's ``overrides`` do); ``dvc exp run -S key=value`` edits it with
DVC's own code (comments kept). The comments are the typed models' field descriptions (``emi.config``), so the
file explains itself and ``dvc params diff`` shows real values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from emi.config import DEFAULT_PARAMS, Params, load_params
from emi.utils import write_text

HEADER = """\
# Every value the pipeline reads, written by `emi params use {profile}` (profiles: emi/profiles/*.yaml).
# Change a value here, for one experiment with `dvc exp run -S key=value`, or rewrite the whole file from a
# profile: `emi params use PROFILE [--set key=value ...]`. dvc.yaml tracks the keys each stage reads, so
# `dvc params diff` shows what changed; `emi params show` prints the values as the stages see them.
"""


def _scalar(value: Any) -> str:
    """One value as yaml would quote it; null as an empty value (what DVC writes back: see ``_lines``)."""
    if value is None:
        return ""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 16, sort_keys=False).strip()
    return text.removesuffix("...").strip()


def _lines(model: type[BaseModel], values: dict[str, Any], indent: str) -> list[str]:
    """The lines of one section, in the layout DVC's own writer uses (block lists, empty nulls), so that
    ``dvc exp run -S key=value`` changes the line of that key and nothing else."""
    out = []
    for name, field in model.model_fields.items():
        note = f"  # {field.description}" if field.description else ""
        value, kind = values[name], field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            out.append(f"{indent}{name}:{note}")
            out += _lines(kind, value, indent + "  ")
        elif isinstance(value, dict) and value:  # a mapping of its own (pools, latent_correlation)
            out.append(f"{indent}{name}:{note}")
            out += [f"{indent}  {_scalar(k)}: {_scalar(v)}" for k, v in value.items()]
        elif isinstance(value, list) and value:
            out.append(f"{indent}{name}:{note}")
            out += [f"{indent}- {_scalar(v)}" for v in value]
        else:
            out.append(f"{indent}{name}: {_scalar(value)}".rstrip() + note)
    return out


def render(params: Params) -> str:
    """The text of params.yaml for ``params``: every key in the models' order, each with its description."""
    body = _lines(Params, params.model_dump(mode="json"), "")
    return HEADER.format(profile=params.profile) + "\n".join(body) + "\n"


def write(params: Params, path: Path | str = DEFAULT_PARAMS) -> Path:
    return write_text(Path(path), render(params))


def use(profile: str, overrides: list[str] | tuple[str, ...] = (), path: Path | str = DEFAULT_PARAMS) -> Params:
    """Write ``profile``'s values (with ``overrides``) into ``path``; returns them."""
    params = load_params(None, overrides, profile=profile)
    write(params, path)
    return params


def set_values(overrides: list[str] | tuple[str, ...], path: Path | str = DEFAULT_PARAMS) -> Params:
    """Change values of the params file at ``path`` in place (validated first; the file is rewritten whole)."""
    params = load_params(path, overrides)
    if overrides:
        write(params, path)
    return params
