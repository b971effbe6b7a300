"""Small fake Hub repos on disk, and the gptkit mirror serving them over loopback.

The test suite's hub: every download test runs the real huggingface_hub / datasets clients against
`gptkit.hub.mirror.server.MirrorServer` on 127.0.0.1, never a mock.

Build repos (each returns a FakeRepo: repo_id, repo_type, path, commit, files {path: sha256}):

    make_dataset_repo(folder, "HuggingFaceFW/fineweb-edu", {"sample/10BT": 3, "sample/100BT": 2})
    make_hellaswag_repo(folder)                       parquet on main: data/{split}-00000-of-00001.parquet
    make_hellaswag_repo(folder, layout_of="convert")  the refs/convert/parquet branch: default/{split}/0000.parquet
    make_script_repo(folder)                          main with only a loading script (hellaswag.py) and README
    make_model_repo(folder, "openai-community/gpt2", vocab="tiny" | "gpt2")

`layout="download"` (default) writes the folder as `gptkit download` does, manifest included, so the
mirror serves it under its repo id at a fixed commit (FakeRepo.commit); `layout="plain"` writes
the files only (served at revision main, ROOT/ORG/NAME or ROOT/datasets/ORG/NAME).

    build_hub(root) -> dict[name, FakeRepo]    the standard set: fineweb-edu, fineweb, hellaswag, gpt2
    running_mirror(root, **kw)                 context manager -> a started MirrorServer (.url, .injected, ...)
    RequestLog()                               an on_request callback keeping what clients asked:
                                               running_mirror(root, on_request=log); log.max_in_flight()

Faults (5xx answers, cut bodies, slow transfers) come from gptkit.faults, read by the server per request:
monkeypatch.setenv("GPTKIT_FAULTS", "mirror.error_rate=0.25,mirror.cut_rate=0.4"); server.injected counts them.

Pytest fixtures (registered for every test module by conftest.py: `pytest_plugins = ["hubfixtures"]`):

    hub       session-scoped Hub(url, root, repos, server, requests): build_hub + a running mirror whose
              requests land in hub.requests (a RequestLog). Tests that count requests call
              hub.requests.clear() first; tests that need faults start their own running_mirror.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gptkit.hub.manifest import MANIFEST_NAME, lfs_oid
from gptkit.hub.mirror.catalog import file_hashes, is_lfs_name
from gptkit.hub.mirror.server import MirrorServer, Request

WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there been one all we their has would when if so no will what can more about out up other "
    "into time only could new them some these then two first may any like now my such make over our even most "
    "me state after also made many did must before back see through way where get much go well your know should "
    "down work year because come people just say each those take day good how long little use very great world "
    "school learn student teacher science history water energy cell plant animal number system language"
).split()


@dataclass
class FakeRepo:
    repo_id: str
    repo_type: str  # "model" or "dataset"
    path: Path  # the folder on disk
    commit: str | None  # what the mirror reports as the commit (layout="download"); None for plain folders
    files: dict[str, str] = field(default_factory=dict)  # repo path -> sha256

    def sha256(self, path: str) -> str:
        return self.files[path]


def fake_commit(*parts: str) -> str:
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()


def _text(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(WORDS) for _ in range(n_words)]
    out, sentence = [], []
    for w in words:
        sentence.append(w)
        if len(sentence) >= rng.randint(6, 14):
            out.append(" ".join(sentence).capitalize() + ".")
            sentence = []
    if sentence:
        out.append(" ".join(sentence).capitalize() + ".")
    return " ".join(out)


def write_parquet(path: Path, columns: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=16)


def finish_repo(folder: Path, repo_id: str, repo_type: str, layout: str, revision: str = "main") -> FakeRepo:
    """Hash the files of a built folder; with layout="download", also write the gptkit manifest."""
    files = {}
    entries = []
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST_NAME:
            rel = p.relative_to(folder).as_posix()
            sha, oid = file_hashes(p)
            files[rel] = sha
            size = p.stat().st_size
            lfs = is_lfs_name(rel, size)
            if lfs:  # a git oid of an LFS file is the id of its pointer
                oid = lfs_oid(sha, size)
            entries.append({"path": rel, "size": size, "sha256": sha, "oid": oid, "lfs": lfs})
    commit = None
    if layout == "download":
        commit = fake_commit(repo_type, repo_id, *(f"{e['path']}:{e['sha256']}" for e in entries))
        manifest = {
            "format": 1,
            "tool": "hubfixtures",
            "name": repo_id,
            "repo_id": repo_id,
            "repo_type": repo_type,
            "revision": revision,
            "commit": commit,
            "complete": True,
            "files": entries,
        }
        (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))
    elif layout != "plain":
        raise ValueError(f"layout must be 'download' or 'plain', not {layout!r}")
    return FakeRepo(repo_id, repo_type, folder, commit, files)


def make_dataset_repo(
    folder: Path,
    repo_id: str = "HuggingFaceFW/fineweb-edu",
    subsets: dict[str, int] | None = None,
    *,
    rows: int = 40,
    words: int = 60,
    seed: int = 0,
    layout: str = "download",
) -> FakeRepo:
    """A FineWeb-like dataset: SUBSET_DIR/NNN_00000.parquet files with columns text, id, url, score,
    token_count; and a README.md whose YAML maps config `sample-10BT` to `sample/10BT/*` as the real one does."""
    subsets = subsets or {"sample/10BT": 3}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    configs = []
    for subdir, n_files in subsets.items():
        for i in range(n_files):
            texts = [_text(rng, rng.randint(words // 2, words * 2)) for _ in range(rows)]
            write_parquet(
                folder / subdir / f"{i:03d}_00000.parquet",
                {
                    "text": texts,
                    "id": [f"<urn:uuid:{rng.getrandbits(64):016x}>" for _ in texts],
                    "url": [f"https://example.org/{subdir}/{i}/{j}" for j in range(len(texts))],
                    "score": [round(rng.uniform(2.5, 5.0), 3) for _ in texts],
                    "token_count": [len(t.split()) for t in texts],
                },
            )
        name = subdir.replace("sample/", "sample-")
        configs.append(f"- config_name: {name}\n  data_files:\n  - split: train\n    path: {subdir}/*\n")
    (folder / "README.md").write_text(
        "---\nlicense: odc-by\nconfigs:\n" + "".join(configs) + "---\n\n# A tiny FineWeb-like test dataset\n"
    )
    return finish_repo(folder, repo_id, "dataset", layout)


def make_hellaswag_repo(
    folder: Path,
    repo_id: str = "Rowan/hellaswag",
    *,
    rows: int = 12,
    seed: int = 1,
    layout: str = "download",
    layout_of: str = "main",
) -> FakeRepo:
    """Rowan/hellaswag's parquet, label as a string. layout_of="main": data/{train,validation,test}-00000-of-00001.parquet
    on main; "convert": default/{split}/0000.parquet, the manifest recording revision refs/convert/parquet."""
    folder = Path(folder)
    rng = random.Random(seed)
    if layout_of not in ("main", "convert"):
        raise ValueError("layout_of must be 'main' or 'convert'")
    for split in ("train", "validation", "test"):
        name = f"data/{split}-00000-of-00001.parquet" if layout_of == "main" else f"default/{split}/0000.parquet"
        ctx_a = [_text(rng, 12) for _ in range(rows)]
        ctx_b = [rng.choice(WORDS) for _ in range(rows)]
        write_parquet(
            folder / name,
            {
                "ind": list(range(rows)),
                "activity_label": [rng.choice(WORDS).capitalize() for _ in range(rows)],
                "ctx_a": ctx_a,
                "ctx_b": ctx_b,
                "ctx": [f"{a} {b}" for a, b in zip(ctx_a, ctx_b, strict=True)],
                "endings": [[_text(rng, 8) for _ in range(4)] for _ in range(rows)],
                "source_id": [f"activitynet~v_{rng.getrandbits(32):08x}" for _ in range(rows)],
                "split": [split] * rows,
                "split_type": ["indomain"] * rows,
                "label": ["" if split == "test" else str(rng.randrange(4)) for _ in range(rows)],
            },
        )
    if layout_of == "convert":
        return finish_repo(folder, repo_id, "dataset", layout, revision="refs/convert/parquet")
    (folder / "README.md").write_text("---\nlanguage: en\n---\n# HellaSwag (test copy)\n")
    return finish_repo(folder, repo_id, "dataset", layout)


def make_script_repo(folder: Path, repo_id: str = "Rowan/hellaswag", *, layout: str = "download") -> FakeRepo:
    """A dataset whose main branch holds only a loading script and a README, as Rowan/hellaswag's may."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hellaswag.py").write_text("import datasets\n\n# a loading script: no data files on this branch\n")
    (folder / "README.md").write_text("---\nlanguage: en\n---\n# HellaSwag (script only)\n")
    return finish_repo(folder, repo_id, "dataset", layout)


# --- lm-evaluation-harness task datasets --------------------------------------------------------


def _parquet_config_repo(folder: Path, configs: dict[str, dict[str, dict]], card: str) -> None:
    """A dataset in the Hub's parquet layout: CONFIG/SPLIT-00000-of-00001.parquet per config, and a
    README.md whose `configs:` maps each config's splits to its files (what `datasets` reads)."""
    lines = []
    for config, splits in configs.items():
        lines.append(f"- config_name: {config}\n  data_files:\n")
        for split, columns in splits.items():
            write_parquet(folder / config / f"{split}-00000-of-00001.parquet", columns)
            lines.append(f"  - split: {split}\n    path: {config}/{split}-*\n")
    (folder / "README.md").write_text("---\nconfigs:\n" + "".join(lines) + "---\n# " + card + " (test copy)\n")


def make_lm_eval_repos(root: Path, *, rows: int = 10, seed: int = 3) -> dict[str, FakeRepo]:
    """Tiny copies of the datasets lm-eval's own task definitions read, in the repos and layouts those
    definitions name (dataset_path, dataset_name, splits, columns), as plain folders under
    ROOT/datasets/ORG/NAME for `gptkit mirror serve ROOT`:

        hellaswag       Rowan/hellaswag                       data/{split}-00000-of-00001.parquet
        arc_easy        allenai/ai2_arc (ARC-Easy)            ARC-Easy/{split}-00000-of-00001.parquet
        piqa            baber/piqa                            data/{split}-00000-of-00001.parquet
        lambada_openai  EleutherAI/lambada_openai (default)   default/test-00000-of-00001.parquet
        wikitext        EleutherAI/wikitext_document_level    wikitext-2-raw-v1/{split}-00000-of-00001.parquet
        gsm8k           openai/gsm8k (main)                   main/{split}-00000-of-00001.parquet

    One task per request type: loglikelihood (the first four), loglikelihood_rolling (wikitext),
    generate_until (gsm8k)."""
    rng = random.Random(seed)
    root = Path(root)
    out = {}

    def words(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    out["hellaswag"] = make_hellaswag_repo(root / "datasets" / "Rowan" / "hellaswag", rows=rows, layout="plain")

    arc = root / "datasets" / "allenai" / "ai2_arc"
    splits = {}
    for split in ("train", "validation", "test"):
        n_choices = [rng.choice((3, 4, 4, 5)) for _ in range(rows)]
        letters = [list("ABCDE"[:n]) if rng.random() < 0.8 else [str(i + 1) for i in range(n)] for n in n_choices]
        splits[split] = {
            "id": [f"Mercury_{rng.getrandbits(24)}" for _ in range(rows)],
            "question": [words(rng.randint(6, 14)).capitalize() + "?" for _ in range(rows)],
            "choices": [{"text": [words(rng.randint(1, 4)) for _ in ls], "label": ls} for ls in letters],
            "answerKey": [rng.choice(ls) for ls in letters],
        }
    _parquet_config_repo(arc, {"ARC-Easy": splits}, "ai2_arc")
    out["arc_easy"] = finish_repo(arc, "allenai/ai2_arc", "dataset", "plain")

    piqa = root / "datasets" / "baber" / "piqa"
    cols = {}
    for split in ("train", "validation", "test"):
        cols[split] = {
            "goal": [words(rng.randint(4, 10)).capitalize() + "." for _ in range(rows)],
            "sol1": [words(rng.randint(3, 12)) for _ in range(rows)],
            "sol2": [words(rng.randint(3, 12)) for _ in range(rows)],
            "label": [rng.randrange(2) if split != "test" else -1 for _ in range(rows)],
        }
    _parquet_config_repo(piqa, {"data": cols}, "piqa")
    # one config, data/: rename it to the default config the card declares
    readme = (piqa / "README.md").read_text().replace("config_name: data", "config_name: default")
    (piqa / "README.md").write_text(readme)
    out["piqa"] = finish_repo(piqa, "baber/piqa", "dataset", "plain")

    lambada = root / "datasets" / "EleutherAI" / "lambada_openai"
    _parquet_config_repo(
        lambada,
        {"default": {"test": {"text": [_text(rng, rng.randint(20, 40)).rstrip(".") for _ in range(rows)]}}},
        "lambada_openai",
    )
    out["lambada_openai"] = finish_repo(lambada, "EleutherAI/lambada_openai", "dataset", "plain")

    wiki = root / "datasets" / "EleutherAI" / "wikitext_document_level"
    pages = {
        split: {
            "page": [
                " = "
                + words(3).title()
                + " = \n "
                + " \n ".join(_text(rng, rng.randint(30, 120)) for _ in range(rng.randint(1, 3)))
                + " \n"
                for _ in range(rows)
            ]
        }
        for split in ("train", "validation", "test")
    }
    _parquet_config_repo(wiki, {"wikitext-2-raw-v1": pages}, "wikitext_document_level")
    out["wikitext"] = finish_repo(wiki, "EleutherAI/wikitext_document_level", "dataset", "plain")

    gsm = root / "datasets" / "openai" / "gsm8k"
    qa = {}
    for split in ("train", "test"):
        nums = [rng.randint(2, 90) for _ in range(rows)]
        qa[split] = {
            "question": [f"{words(rng.randint(8, 16)).capitalize()} {n} {words(3)}?" for n in nums],
            "answer": [
                f"{words(rng.randint(5, 12)).capitalize()} <<{n}+1={n + 1}>>{n + 1}.\n#### {n + 1}" for n in nums
            ],
        }
    _parquet_config_repo(gsm, {"main": qa}, "gsm8k")
    out["gsm8k"] = finish_repo(gsm, "openai/gsm8k", "dataset", "plain")
    return out


# --- GPT-2 style model repo ---------------------------------------------------------------------


def _byte_encoder() -> dict[int, str]:
    from gptkit.tokenizer import bytes_to_unicode

    return bytes_to_unicode()


def _tiny_bpe(n_merges: int = 40, seed: int = 0) -> tuple[dict[bytes, int], list[tuple[bytes, bytes]]]:
    """A small byte-level BPE learned on fake text: ranks for 256 bytes (GPT-2's order) + merges."""
    order = list(_byte_encoder())  # GPT-2 numbers the bytes in bytes_to_unicode order
    ranks = {bytes([b]): i for i, b in enumerate(order)}
    rng = random.Random(seed)
    words = [list(bytes(" " + w, "utf-8")) for w in (rng.choice(WORDS) for _ in range(2000))]
    seqs = [[bytes([b]) for b in w] for w in words]
    merges = []
    for _ in range(n_merges):
        counts: dict[tuple[bytes, bytes], int] = {}
        for s in seqs:
            for a, b in zip(s, s[1:], strict=False):
                counts[(a, b)] = counts.get((a, b), 0) + 1
        if not counts:
            break
        pair = max(sorted(counts), key=lambda p: counts[p])
        merges.append(pair)
        ranks[pair[0] + pair[1]] = len(ranks)
        for s in seqs:
            i = 0
            while i < len(s) - 1:
                if (s[i], s[i + 1]) == pair:
                    s[i : i + 2] = [pair[0] + pair[1]]
                i += 1
    return ranks, merges


def gpt2_merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Recover merges.txt from tiktoken ranks: each token's last BPE step, using only lower ranks."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best = None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < rank and (best is None or r < best[0]):
                    best = (r, i)
            if best is None:
                break
            i = best[1]
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) != 2:
            raise ValueError(f"cannot recover the merge for rank {rank}")
        merges.append((parts[0], parts[1]))
    return merges


def _real_gpt2_ranks() -> dict[bytes, int]:
    from gptkit.tokenizer import get_tokenizer

    enc = get_tokenizer("gpt2").enc  # offline: scripts/get_gpt2_vocab.py installs the ranks
    return dict(enc._mergeable_ranks)


def write_gpt2_tokenizer_files(folder: Path, ranks: dict[bytes, int], merges: list[tuple[bytes, bytes]]) -> int:
    """vocab.json, merges.txt and tokenizer.json in GPT-2's format; returns the <|endoftext|> id."""
    enc = _byte_encoder()

    def s(b: bytes) -> str:
        return "".join(enc[x] for x in b)

    eot = len(ranks)
    vocab = {s(tok): i for tok, i in sorted(ranks.items(), key=lambda kv: kv[1])}
    vocab["<|endoftext|>"] = eot
    merge_lines = [f"{s(a)} {s(b)}" for a, b in merges]
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merge_lines) + "\n", encoding="utf-8")
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": eot,
                "content": "<|endoftext|>",
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": True,
                "special": True,
            }
        ],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": vocab,
            "merges": merge_lines,
        },
    }
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    return eot


def make_model_repo(
    folder: Path,
    repo_id: str = "openai-community/gpt2",
    *,
    vocab: str = "tiny",
    n_layer: int = 2,
    n_head: int = 2,
    n_embd: int = 32,
    n_positions: int = 64,
    seed: int = 0,
    layout: str = "download",
) -> FakeRepo:
    """A GPT-2 repo in openai-community's layout: config.json, generation_config.json, vocab.json,
    merges.txt, tokenizer.json, model.safetensors (random weights, GPT-2's tensor names and Conv1D
    shapes), README.md. vocab="gpt2" writes the real GPT-2 vocabulary (needs the offline ranks from
    scripts/get_gpt2_vocab.py); "tiny" a 256-byte + 40-merge BPE."""
    import numpy as np
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if vocab == "gpt2":
        ranks = _real_gpt2_ranks()
        merges = gpt2_merges_from_ranks(ranks)
    elif vocab == "tiny":
        ranks, merges = _tiny_bpe(seed=seed)
    else:
        raise ValueError("vocab must be 'tiny' or 'gpt2'")
    eot = write_gpt2_tokenizer_files(folder, ranks, merges)
    V, C, T = eot + 1, n_embd, n_positions
    config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "vocab_size": V,
        "n_positions": T,
        "n_ctx": T,
        "n_embd": C,
        "n_layer": n_layer,
        "n_head": n_head,
        "n_inner": None,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "resid_pdrop": 0.1,
        "embd_pdrop": 0.1,
        "attn_pdrop": 0.1,
        "bos_token_id": eot,
        "eos_token_id": eot,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": eot, "eos_token_id": eot}, indent=2))
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    tensors = {
        "wte.weight": w(V, C),
        "wpe.weight": w(T, C),
        "ln_f.weight": np.ones(C, np.float32),
        "ln_f.bias": np.zeros(C, np.float32),
    }
    for i in range(n_layer):
        p = f"h.{i}."
        tensors |= {
            p + "ln_1.weight": np.ones(C, np.float32),
            p + "ln_1.bias": np.zeros(C, np.float32),
            p + "attn.c_attn.weight": w(C, 3 * C),
            p + "attn.c_attn.bias": w(3 * C),
            p + "attn.c_proj.weight": w(C, C),
            p + "attn.c_proj.bias": w(C),
            p + "ln_2.weight": np.ones(C, np.float32),
            p + "ln_2.bias": np.zeros(C, np.float32),
            p + "mlp.c_fc.weight": w(C, 4 * C),
            p + "mlp.c_fc.bias": w(4 * C),
            p + "mlp.c_proj.weight": w(4 * C, C),
            p + "mlp.c_proj.bias": w(C),
        }
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# A tiny GPT-2 for tests\n")
    return finish_repo(folder, repo_id, "model", layout)


# --- the standard hub and the server ------------------------------------------------------------


def build_hub(root: Path, *, vocab: str = "tiny") -> dict[str, FakeRepo]:
    """ROOT/{fineweb-edu,fineweb,hellaswag,gpt2}/ in gptkit's download layout, as `gptkit mirror serve ROOT` expects."""
    root = Path(root)
    return {
        "fineweb-edu": make_dataset_repo(
            root / "fineweb-edu", "HuggingFaceFW/fineweb-edu", {"sample/10BT": 3, "sample/100BT": 2}, seed=0
        ),
        "fineweb": make_dataset_repo(root / "fineweb", "HuggingFaceFW/fineweb", {"sample/10BT": 2}, seed=1),
        "hellaswag": make_hellaswag_repo(root / "hellaswag"),
        "gpt2": make_model_repo(root / "gpt2", "openai-community/gpt2", vocab=vocab),
    }


@contextlib.contextmanager
def running_mirror(root, **kwargs) -> Iterator[MirrorServer]:
    """A MirrorServer on a free loopback port, in a background thread, stopped on exit.

    kwargs go to MirrorServer: on_request (e.g. a RequestLog), page_size (tree listing page),
    xet_headers (advertise Xet like the real Hub). Faults: GPTKIT_FAULTS (module docstring)."""
    with MirrorServer(root, "127.0.0.1", 0, **kwargs) as server:
        yield server


class RequestLog(list):
    """An on_request callback that keeps every answered request (gptkit.hub.mirror.server.Request dicts)."""

    def __call__(self, request: Request) -> None:
        self.append(request)

    def max_in_flight(self) -> int:
        """The most requests that were being answered at the same time."""
        edges = sorted([(r["time"], 1) for r in self] + [(r["time"] + r["seconds"], -1) for r in self])
        most = now = 0
        for _, step in edges:
            now += step
            most = max(most, now)
        return most


@dataclass
class Hub:
    url: str
    root: Path
    repos: dict[str, FakeRepo]
    server: MirrorServer
    requests: RequestLog


@pytest.fixture(scope="session")
def hub(tmp_path_factory) -> Iterator[Hub]:
    root = tmp_path_factory.mktemp("hub")
    repos = build_hub(root)
    log = RequestLog()
    with running_mirror(root, on_request=log) as server:
        yield Hub(server.url, root, repos, server, log)


def preserved_hf_state():
    """Undo what gptkit.hub.endpoint.configure_endpoint changes process-wide after a test (a context manager)."""
    from gptkit.hub.endpoint import preserved_endpoint_state

    return preserved_endpoint_state()


@pytest.fixture
def hf_state() -> Iterator[None]:
    """Use in modules that call gptkit.hub.download in-process: `pytestmark = pytest.mark.usefixtures("hf_state")`."""
    with preserved_hf_state():
        yield
