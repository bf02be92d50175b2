"""The ``data`` section of params.yaml: which sources the images come from, how they are fetched and split.

:mod:`crackcls.config` composes it with the other sections into the one validated config.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from crackcls.data.images import dataset_folders, layout_problem
from crackcls.util import paths
from crackcls.util.schema import Section

MENDELEY_URL = (
    "https://data.mendeley.com/public-files/datasets/5y9wdsg2zt/files/"
    "8a70d8a5-bce9-4291-bab9-b48cfb3e87c3/file_downloaded"
)


MENDELEY_MIRROR_URL = "https://prod-dcd-datasets-cache-zipfiles.s3.eu-west-1.amazonaws.com/5y9wdsg2zt-2.zip"


MENDELEY_SHA256 = "08d7dc505a4f5a0330cee2fa2a1ae4b5b4f98bcffd0549b774caf7959bb1f02f"


MENDELEY_SIZE = 241_363_336


SDNET_URL = "https://digitalcommons.usu.edu/context/all_datasets/article/1047/type/native/viewcontent"


# As reported by public code that downloads the file; upstream publishes no checksum of its own.
SDNET_MD5 = "677411e784f194422c90f52d9ed0d7c6"


# SDNET2018 names a tile ``<parent photo>-<tile number>.jpg`` (a few copies end in ``_2``).
SDNET_PARENT_PATTERN = r"^(?P<parent>.+)-\d+(?:_\d+)?$"


# The public sets the fetch stage downloads, and the bundled offline samples.
PUBLIC_SOURCES = ("mendeley", "sdnet2018")
SAMPLES = {"sample": ("mendeley", Path("sample/mendeley")), "sdnet2018-sample": ("sdnet2018", Path("sample/sdnet2018"))}


SourceKind = Literal["mendeley", "sdnet2018", "folder"]


SOURCE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


def _hex(value: str, digits: int) -> str:
    value = value.lower()
    if len(value) != digits or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"must be {digits} hexadecimal characters")
    return value


class MendeleyDownload(Section):
    url: str = MENDELEY_URL
    sha256: str = MENDELEY_SHA256
    size: int | None = MENDELEY_SIZE
    # The whole-dataset zip holds the same RAR; its own checksum is not published,
    # so the RAR inside it is verified against ``sha256`` instead.
    mirror_url: str | None = MENDELEY_MIRROR_URL

    @field_validator("sha256")
    @classmethod
    def _sha256(cls, value: str) -> str:
        return _hex(value, 64)


class SdnetDownload(Section):
    url: str = SDNET_URL
    # upstream publishes no SHA-256; the MD5 reported for the file is checked instead (null: unchecked)
    md5: str | None = SDNET_MD5
    size: int | None = None

    @field_validator("md5")
    @classmethod
    def _md5(cls, value: str | None) -> str | None:
        return None if value is None else _hex(value, 32)


class DownloadConfig(Section):
    """How public sets are downloaded; the retry and extraction limits apply to every one."""

    mendeley: MendeleyDownload = MendeleyDownload()
    sdnet2018: SdnetDownload = SdnetDownload()
    retries: int = Field(default=5, ge=0, le=50)
    timeout_s: float = Field(default=60.0, gt=0)
    user_agent: str = "crackcls/0.1 (+dataset fetch; python-requests)"
    max_extract_mb: int = Field(default=4096, gt=0, description="decompression-bomb cap")


class SourceConfig(Section):
    """One place images come from; its ``name`` keys its folder in data/raw and its metrics.

    A folder source holds ``Positive/`` and ``Negative/``, or sub-folders that each do
    (SDNET2018's ``decks/``, ``walls/``, ``pavements/``): each sub-folder then counts as a
    source of its own in the split and the metrics.
    """

    name: str
    kind: SourceKind = "folder"
    path: str | None = Field(default=None, description="a folder source's folder")
    # a regex on the file name without suffix whose group ``parent`` names the photo a tile was cut from
    parent_pattern: str | None = None
    max_per_class: int | None = Field(default=None, gt=0, description="cap on each class of each sub-source")

    @model_validator(mode="before")
    @classmethod
    def _sdnet_parents(cls, raw: Any) -> Any:
        """SDNET2018 always names its parents: a split by tile would leak, so its pattern is the default."""
        if isinstance(raw, dict) and raw.get("kind") == "sdnet2018" and not raw.get("parent_pattern"):
            return {**raw, "parent_pattern": SDNET_PARENT_PATTERN}
        return raw

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not SOURCE_NAME.match(value):
            raise ValueError("a source name is lower-case letters, digits and _ (at most 40), starting with a letter")
        return value

    @field_validator("parent_pattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        if "parent" not in compiled.groupindex:
            raise ValueError("needs a named group (?P<parent>...) that captures the parent photo's id")
        return value

    @model_validator(mode="after")
    def _folder(self) -> SourceConfig:
        if self.kind == "folder":
            if not self.path:
                raise ValueError(f"source '{self.name}' needs a path (a folder with Positive/ and Negative/)")
            if problem := folder_problem(paths.resolve(self.path)):
                raise ValueError(problem)
        elif self.path is not None:
            raise ValueError(f"source '{self.name}' is downloaded ({self.kind}); it takes no path")
        return self

    @property
    def parents(self) -> re.Pattern[str] | None:
        return re.compile(self.parent_pattern) if self.parent_pattern else None


def repeated(names: list[str]) -> list[str]:
    """The names that occur more than once, sorted."""
    return sorted({name for name in names if names.count(name) > 1})


def folder_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be a folder source, or None; it is a dataset or a folder of datasets."""
    if not folder.is_dir():
        return f"'{folder}' is not an existing folder with Positive/ and Negative/"
    subsets = dataset_folders(folder)
    if not subsets:
        return layout_problem(folder)
    for subset in subsets.values():
        if problem := layout_problem(subset):
            return problem
    return None


def expand_source(entry: Any) -> Any:
    """The short forms: ``mendeley``, ``sdnet2018``, ``sample``, ``sdnet2018-sample`` or a folder path."""
    if not isinstance(entry, str):
        return entry
    if entry in PUBLIC_SOURCES:
        return {"name": entry, "kind": entry}
    if entry in SAMPLES:
        name, folder = SAMPLES[entry]
        sample = {"name": name, "path": folder.as_posix()}
        return {**sample, "parent_pattern": SDNET_PARENT_PATTERN} if name == "sdnet2018" else sample
    folder = paths.resolve(entry)
    name = re.sub(r"[^a-z0-9_]", "_", folder.name.lower()).strip("_") or "folder"
    return {"name": name if name[0].isalpha() else f"s_{name}", "path": entry}


class SplitRatios(Section):
    train: float = Field(default=0.70, gt=0, lt=1)
    val: float = Field(default=0.15, ge=0, lt=1)
    test: float = Field(default=0.15, gt=0, lt=1)
    val_whole_grids: int = Field(
        default=2, ge=0, description="whole-grid parents per source placed in validation, to fit the photo rule on real photos"
    )

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitRatios:
        total = self.train + self.val + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"train + val + test must sum to 1, got {total:g}")
        return self


class DataConfig(Section):
    sources: list[SourceConfig] = Field(
        default_factory=lambda: [SourceConfig(**expand_source(name)) for name in PUBLIC_SOURCES], min_length=1
    )
    download: DownloadConfig = DownloadConfig()
    split: SplitRatios = SplitRatios()
    seed: int = 42
    max_per_class: int | None = Field(default=None, gt=0, description="cap on each class of each source")

    @model_validator(mode="before")
    @classmethod
    def _old_form(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "source" in raw:
            raise ValueError(
                f"data.source ({raw['source']!r}) is now data.sources, a list: for example "
                f"`sources: [{raw['source']}]`, or `sources: [mendeley, sdnet2018]` (docs/data.md)"
            )
        return raw

    @field_validator("sources", mode="before")
    @classmethod
    def _short_forms(cls, value: Any) -> Any:
        return [expand_source(entry) for entry in value] if isinstance(value, list) else value

    @field_validator("sources")
    @classmethod
    def _unique(cls, value: list[SourceConfig]) -> list[SourceConfig]:
        names = [source.name for source in value]
        if twice := repeated(names):
            raise ValueError(f"source name(s) {', '.join(twice)} listed twice; give each source its own name")
        if "field" in names:
            raise ValueError("'field' is the field-images folder (data/field), always a source; pick another name")
        return value

    def source(self, name: str) -> SourceConfig | None:
        return next((s for s in self.sources if s.name == name), None)
