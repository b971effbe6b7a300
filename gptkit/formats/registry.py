"""Every model format gptkit reads and writes, by name. Adding one: a module with detect, read and
write that turns the file into a `Loaded` and back, and its FORMAT listed here."""

from __future__ import annotations

from gptkit.formats import gguf, hf, native, pt, safetensors
from gptkit.formats.loaded import Format

# In the order users see them. Detection tries a directory as gptkit first: a checkpoint is known by
# its checksums.json without parsing its config, so a corrupt config.json is named by its checksum
# (gptkit's own config.json has a "model" section, an HF one a model_type, a run directory step_*
# folders). A file is tried as safetensors before pt: its check (a header length, then "{") is the
# stricter one, and its first byte may look like a pickle's.
FORMATS: dict[str, Format] = {f.name: f for f in (native.FORMAT, pt.FORMAT, safetensors.FORMAT, hf.FORMAT, gguf.FORMAT)}
DETECTION_ORDER = ("gptkit", "hf", "safetensors", "pt", "gguf")
