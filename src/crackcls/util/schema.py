"""The base of every params.yaml section: frozen, and a misspelt key is an error rather than ignored."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
