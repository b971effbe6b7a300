"""Named downloads: `gptkit download fineweb-edu` and friends, and how a name or repo id becomes a target.

A preset names what it wants (HellaSwag's validation split), not one path: `files` are the globs on
main, and `fallbacks` further (revision, globs) places to look, in order, for repos whose layout
moved. Rowan/hellaswag is the case in point: its main branch may hold only a loading script
(hellaswag.py), while the Hub's parquet conversion bot keeps every split on the branch
`refs/convert/parquet` as default/{split}/NNNN.parquet. `gptkit download` takes the first place
that has a matching file and says which (gptkit.hub.download). FineWeb and FineWeb-Edu are parquet
on main already; their convert branch holds only a truncated copy, so they have no fallback.

A preset that holds text names its column (`text_column`): `gptkit tokenize NAME` reads this table,
so a preset added here is one it knows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from gptkit.errors import GptkitError

REPO_TYPES = ("model", "dataset")
CONVERT_BRANCH = "refs/convert/parquet"  # where the Hub's bot keeps a parquet copy of a dataset


@dataclass(frozen=True)
class Preset:
    name: str
    repo_id: str
    repo_type: str
    files: tuple[str, ...]  # the data: globs, subject to --shards
    extra: tuple[str, ...] = ()  # small files that go with the data (e.g. README.md with the dataset configs)
    subsets: tuple[tuple[str, tuple[str, ...]], ...] = ()  # --subset NAME -> globs replacing `files`
    size: str = ""  # approximate, for --list; --dry-run shows the exact figure
    about: str = ""
    fallbacks: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (revision, globs) tried in order after main
    wants: str = ""  # what the globs stand for, for the messages ("HellaSwag's validation split")
    # The column holding the text, for a preset `gptkit tokenize NAME` reads (gptkit.data.sources);
    # None: not text to train on (model weights, an evaluation set).
    text_column: str | None = None


_GPT2_FILES = (
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
)


def _fineweb_subsets() -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((f"sample-{n}", (f"sample/{n}/*.parquet",)) for n in ("10BT", "100BT", "350BT"))


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "fineweb-edu",
            "HuggingFaceFW/fineweb-edu",
            "dataset",
            ("sample/10BT/*.parquet",),
            ("README.md",),
            _fineweb_subsets(),
            "≈27 GB (sample-10BT, 14 files); sample-100BT ≈270 GB, sample-350BT ≈1 TB",
            "FineWeb-Edu, educational web text (parquet)",
            text_column="text",
        ),
        Preset(
            "fineweb",
            "HuggingFaceFW/fineweb",
            "dataset",
            ("sample/10BT/*.parquet",),
            ("README.md",),
            _fineweb_subsets(),
            "≈30 GB (sample-10BT); sample-100BT ≈300 GB, sample-350BT ≈1 TB",
            "FineWeb, filtered Common Crawl (parquet)",
            text_column="text",
        ),
        Preset(
            # The author's repo: parquet on main (data/validation-00000-of-00001.parquet) where the
            # main branch has it, else the conversion bot's branch (default/validation/0000.parquet).
            "hellaswag",
            "Rowan/hellaswag",
            "dataset",
            ("*validation*.parquet",),
            ("README.md",),
            size="≈6 MB",
            about="HellaSwag validation set, 10,042 examples (ctx, endings, label as a string)",
            fallbacks=((CONVERT_BRANCH, ("default/validation/*.parquet",)),),
            wants="HellaSwag validation split in parquet",
        ),
        Preset(
            "gpt2",
            "openai-community/gpt2",
            "model",
            _GPT2_FILES,
            size="≈0.55 GB",
            about="GPT-2 124M weights + tokenizer",
        ),
        Preset("gpt2-medium", "openai-community/gpt2-medium", "model", _GPT2_FILES, size="≈1.5 GB", about="GPT-2 350M"),
        Preset("gpt2-large", "openai-community/gpt2-large", "model", _GPT2_FILES, size="≈3.3 GB", about="GPT-2 774M"),
        Preset("gpt2-xl", "openai-community/gpt2-xl", "model", _GPT2_FILES, size="≈6.5 GB", about="GPT-2 1.5B"),
    )
}


@dataclass
class Target:
    name: str  # names the default folder: the preset, or the repo id
    repo_id: str
    repo_type: str
    files: tuple[str, ...] | None  # None: the whole repo
    extra: tuple[str, ...]
    subset: str | None = None
    # Where to look, in order: (revision, globs). Empty: `files` at the requested revision (or main).
    sources: tuple[tuple[str, tuple[str, ...]], ...] = ()
    wants: str = ""


def resolve_target(name_or_repo: str, repo_type: str | None = None, subset: str | None = None) -> Target:
    if repo_type is not None and repo_type not in REPO_TYPES:
        raise GptkitError(f"invalid --repo-type {repo_type!r}; choose model or dataset")
    preset = PRESETS.get(name_or_repo)
    if preset is not None:
        if repo_type is not None and repo_type != preset.repo_type:
            raise GptkitError(f"preset {preset.name} is a {preset.repo_type} repo ({preset.repo_id}); drop --repo-type")
        files = preset.files
        if subset is not None:
            subsets = dict(preset.subsets)
            if not subsets:
                raise GptkitError(f"preset {preset.name} has no subsets; --subset applies to fineweb and fineweb-edu")
            key = subset if subset.startswith("sample-") else f"sample-{subset}"
            if key not in subsets:
                raise GptkitError(f"unknown subset {subset!r} for {preset.name}; choose one of: {', '.join(subsets)}")
            files, subset = subsets[key], key
        sources = (("main", files), *preset.fallbacks) if subset is None else (("main", files),)
        wants = preset.wants or f"files matching {', '.join(files)}"
        return Target(preset.name, preset.repo_id, preset.repo_type, files, preset.extra, subset, sources, wants)
    if subset is not None:
        raise GptkitError("--subset applies to the fineweb and fineweb-edu presets only; use --include for other repos")
    parts = name_or_repo.split("/")
    if len(parts) != 2 or not all(parts) or any(p in (".", "..") for p in parts):
        raise GptkitError(
            f"unknown preset {name_or_repo!r}; choose one of {', '.join(PRESETS)} or give a repo as org/name"
        )
    return Target(name_or_repo, name_or_repo, repo_type or "model", None, ())


def text_presets() -> dict[str, str]:
    """The presets that hold text to tokenize: name -> the column holding it."""
    return {p.name: p.text_column for p in PRESETS.values() if p.text_column}


def list_presets() -> list[Preset]:
    return list(PRESETS.values())


def presets_table() -> list[dict[str, object]]:
    return [asdict(p) | {"subsets": [s for s, _ in p.subsets]} for p in PRESETS.values()]
