"""The ``data`` section of params.yaml: where the images come from, how they are fetched and split.

:mod:`crackcls.config` composes it with the other sections into the one validated config.
"""

from __future__ import annotations

import math

from pydantic import Field, field_validator, model_validator

from crackcls.data.images import layout_problem
from crackcls.util import paths
from crackcls.util.schema import Section

MENDELEY_URL = (
    "https://data.mendeley.com/public-files/datasets/5y9wdsg2zt/files/"
    "8a70d8a5-bce9-4291-bab9-b48cfb3e87c3/file_downloaded"
)


MENDELEY_MIRROR_URL = "https://prod-dcd-datasets-cache-zipfiles.s3.eu-west-1.amazonaws.com/5y9wdsg2zt-2.zip"


MENDELEY_SHA256 = "08d7dc505a4f5a0330cee2fa2a1ae4b5b4f98bcffd0549b774caf7959bb1f02f"


MENDELEY_SIZE = 241_363_336


class DownloadConfig(Section):
    url: str = MENDELEY_URL
    sha256: str = MENDELEY_SHA256
    size: int | None = MENDELEY_SIZE
    # The whole-dataset zip holds the same RAR; its own checksum is not published,
    # so the RAR inside it is verified against ``sha256`` instead.
    mirror_url: str | None = MENDELEY_MIRROR_URL
    retries: int = Field(default=5, ge=0, le=50)
    timeout_s: float = Field(default=60.0, gt=0)
    user_agent: str = "crackcls/0.1 (+dataset fetch; python-requests)"
    max_extract_mb: int = Field(default=4096, gt=0, description="decompression-bomb cap")

    @field_validator("sha256")
    @classmethod
    def _hex64(cls, value: str) -> str:
        value = value.lower()
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise ValueError("must be 64 hexadecimal characters")
        return value


class SplitRatios(Section):
    train: float = Field(default=0.70, gt=0, lt=1)
    val: float = Field(default=0.15, ge=0, lt=1)
    test: float = Field(default=0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitRatios:
        total = self.train + self.val + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"train + val + test must sum to 1, got {total:g}")
        return self


class DataConfig(Section):
    source: str = "mendeley"
    download: DownloadConfig = DownloadConfig()
    split: SplitRatios = SplitRatios()
    seed: int = 42
    max_per_class: int | None = Field(default=None, gt=0)

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        if value in ("mendeley", "sample"):
            return value
        folder = paths.resolve(value)
        if not folder.is_dir():
            raise ValueError(f"'{value}' is not 'mendeley', 'sample', or an existing folder with Positive/ and Negative/")
        if problem := layout_problem(folder):
            raise ValueError(problem)
        return value
