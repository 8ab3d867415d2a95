"""The scopes file: per scope (tenant, risk profile) its guarantee and model catalogue.

A TOML file with one ``[scopes.NAME]`` table per scope (see README "Configuration"); the
packaged default holds the 9 models of the shipped data. Every problem is a one-line
`ConfigError` naming the file and the field.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from racer_online.core.bounds import Bound
from racer_online.core.scoring import Miss, Rule
from racer_online.errors import ConfigError
from racer_online.messages import MAX_MODELS, ModelName, ScopeName

DEFAULT_SCOPES = "default_scopes.toml"  # packaged in racer_online/

NAMES_ITSELF = "names_itself"  # an error whose message already names its variables


def every_error(error: ValidationError, *, env: bool = False) -> str:
    """One line naming every mistake, so one run shows them all: ``scopes.x.delta: Field
    required; scopes.x.bound: ...`` or ``RACER_TOPICS__PARTITIONS: ...``."""
    found = []
    for each in error.errors(include_url=False):
        parts = [] if each["type"] == NAMES_ITSELF else [str(part) for part in each["loc"]]
        where = ("RACER_" + "__".join(parts).upper()) if env else ".".join(parts)
        found.append(f"{where + ': ' if parts else ''}{each['msg']}")
    return "; ".join(found)


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    price: float = Field(default=0.0, ge=0.0)


class ScopeConfig(BaseModel):
    """One scope (tenant / risk profile): its guarantee and its model catalogue."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    alpha: float = Field(gt=0.0, lt=1.0)
    delta: float = Field(gt=0.0, lt=1.0)
    bound: Bound = "anytime"  # one certificate for every threshold of a segment
    rule: Rule = "cumulative"
    miss: Miss = "answerable"
    # The adaptive conformal controller (docs/method.md section 5): None keeps it off.
    aci_gamma: float | None = Field(default=None, gt=0.0, lt=1.0)
    # Fully graded records (the `calibrate` format) the window starts from; valid only if
    # they are i.i.d. with the live traffic (docs/method.md). The drift monitor overrules.
    warm_start: Path | None = None
    # The base router that scored the queries a client sends with their scores: part of the
    # scope's identity (service/identity.py). Change it when that router changes, and the
    # scope's window, scored by the old one, is voided instead of certifying new sets.
    router_version: str | None = Field(default=None, min_length=1, max_length=200)
    # File order is the catalogue order, which breaks ties between equal scores or prices.
    models: dict[ModelName, ModelConfig] = Field(min_length=1, max_length=MAX_MODELS)

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(self.models)

    @property
    def prices(self) -> tuple[float, ...]:
        return tuple(model.price for model in self.models.values())


class _ScopesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scopes: dict[ScopeName, ScopeConfig] = Field(min_length=1)


def load_scopes(path: Path | None = None) -> dict[str, ScopeConfig]:
    """Scopes from a TOML file, or the packaged defaults when ``path`` is None."""
    source = resources.files("racer_online").joinpath(DEFAULT_SCOPES) if path is None else path
    name = f"scopes file {path}" if path is not None else f"packaged {DEFAULT_SCOPES}"
    try:
        document = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{name}: not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{name}: cannot read: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{name}: invalid TOML: {error}") from None
    try:
        return dict(_ScopesFile.model_validate(document).scopes)
    except ValidationError as error:
        raise ConfigError(f"{name}: {every_error(error)}") from None
