"""A real local sentence-embedding model as an embedder (the ``sentence`` extra).

The default embedder hashes words (lexical, not semantic). For meaning, install the
extra (``pip install "koru-delta[sentence]"``, which brings sentence-transformers) and
pass ``koru.open(embedder=koru.SentenceEmbedder(path))``: ``path`` is a model already on
this machine, a folder (for example one shipped inside a Python package) or a name in
the local model cache. Nothing is ever downloaded: the model is loaded with
``local_files_only``, so a database opens the same with or without a network, and a
model that is not here is an error at once instead of a fetch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from koru.events import InvalidArgumentError, check_name

from ._embedders import text_of

__all__ = ["SentenceEmbedder"]


class SentenceEmbedder:
    """Embeds content (its text, as :class:`koru.HashingEmbedder` reads it) with a local
    sentence-transformers model, normalized, on the CPU unless ``device`` says.

    ``model`` is the name stored with every embedding (default: ``sentence-`` and the
    model folder's name): embeddings of one name are only ever searched together, so a
    different model must have a different name.

    Raises:
        InvalidArgumentError: sentence-transformers is not installed, or the model is
            not on this machine (nothing is downloaded), or ``model`` is not a name.
    """

    def __init__(self, path: str | Path, *, model: str | None = None, device: str = "cpu") -> None:
        try:
            from sentence_transformers import (  # type: ignore[import-not-found,unused-ignore]
                SentenceTransformer,
            )
        except ImportError:
            raise InvalidArgumentError(
                'SentenceEmbedder needs the sentence extra: pip install "koru-delta[sentence]"'
            ) from None
        try:
            self._encoder: Any = SentenceTransformer(
                str(path), device=device, local_files_only=True
            )
        except (OSError, ValueError) as exc:
            raise InvalidArgumentError(
                f"no sentence-embedding model at {str(path)!r} on this machine "
                f"(nothing is downloaded): {exc}"
            ) from None
        self.model = model if model is not None else f"sentence-{Path(str(path)).name}"
        check_name(self.model, "model")
        self.dim = int(self._encoder.get_sentence_embedding_dimension())

    def embed(self, content: Any) -> Any:
        """The normalized embedding of ``content``'s text (a float32 numpy array)."""
        return self._encoder.encode(
            text_of(content), normalize_embeddings=True, convert_to_numpy=True
        )
