"""The embedding calls of :class:`koru.Database`, kept in a module of their own (a base
class of ``Database``) so that the handle's module stays one concept: each call enters
the lifecycle, delegates to :class:`~koru._vectors.Vectors`, and awaits durability."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from koru.events import InvalidArgumentError

from ._embedders import Embedder, HashingEmbedder
from ._types import Version
from ._vectors import VectorHit, Vectors

if TYPE_CHECKING:
    from ._lifecycle import Lifecycle
    from ._writer import Writer

__all__ = ["EmbeddingCalls"]


class EmbeddingCalls:
    """Embeddings: store, delete, search now and at a past time, and embed content."""

    _life: Lifecycle
    _writer: Writer
    _vectors: Vectors
    _embedder: Embedder

    async def embed(
        self,
        namespace: str,
        key: str,
        vector: Any,
        model: str = "default",
        metadata: Any = None,
    ) -> Version:
        """Store ``vector`` (a list or 1-D numpy array of numbers, kept as float32) as
        the new version of ``namespace/key``'s embedding in ``model``'s space, with
        optional ``metadata`` (any value ``put`` takes). Returns the version (its
        ``content_id`` is blake3 of the float32 bytes) once durable.

        Raises:
            InvalidDataError: empty, not 1-D, NaN or infinity, beyond float32, all
                zeros, or over 65,536 dimensions; bad names or metadata.
            DimensionMismatchError: not the dimension of ``model``'s embeddings.
            (Nothing is written.)
        """
        await self._life.enter_write()
        version = self._vectors.prepare(namespace, key, vector, model, metadata)()
        await self._writer.acknowledge()
        return version

    async def delete_embedding(self, namespace: str, key: str) -> Version:
        """Delete a key's embedding (a tombstone: searches at earlier times still see it).

        Raises:
            EmbeddingNotFoundError: the key has no current embedding.
        """
        await self._life.enter_write()
        version = self._vectors.delete(namespace, key)
        await self._writer.acknowledge()
        return version

    async def embed_search(
        self,
        namespace: str | None,
        query: Any,
        top_k: int = 10,
        threshold: float | None = None,
        model: str | None = None,
        metric: str = "cosine",
        approximate: bool | None = None,
        where: Any = None,
    ) -> list[VectorHit]:
        """The ``top_k`` current embeddings nearest ``query``, best first, in one
        namespace (or all, for None). Ties are broken by (namespace, key), so replicas
        holding the same events rank alike.

        ``metric``: ``"cosine"`` (default) or ``"dot"`` (higher scores are closer),
        ``"euclidean"`` (the score is the distance). ``threshold`` drops hits scoring
        below it (above it, for euclidean). ``model`` picks the embeddings searched;
        without it, those searched must all be of one model. ``approximate``: None uses
        a collection's approximate index once it has 20,000 vectors and an index (a
        background process trains one), True uses it whenever one exists (training it
        now if there is none and the database is writable), False searches exactly.
        ``where`` (a filter built with ``koru.F``, a query whose filter is used, or a
        filter's data form) keeps only embeddings whose metadata it accepts (as a
        query's filter accepts a document; without metadata, None); such a search is
        exact among them.

        Raises:
            InvalidDataError: an unusable query (a zero query only with cosine).
            DimensionMismatchError: the query's dimension is not the model's.
            InvalidArgumentError: ``top_k`` not a positive int, a bad ``metric`` or
                ``threshold``, several models and none named, ``approximate`` with
                another metric than cosine.
            InvalidQueryError: a bad ``where``.
        """
        await self._life.enter()
        return (
            await self._vectors.search(
                namespace, [query], top_k, threshold, model, metric, approximate, where
            )
        )[0]

    async def embed_search_batch(
        self,
        namespace: str | None,
        queries: Any,
        top_k: int = 10,
        threshold: float | None = None,
        model: str | None = None,
        metric: str = "cosine",
        approximate: bool | None = None,
        where: Any = None,
    ) -> list[list[VectorHit]]:
        """:meth:`embed_search` for many queries at once (a list of vectors or a 2-D
        array), one result list per query: an exact search scores 64 queries per
        matrix product, several times the rate of one call per query."""
        await self._life.enter()
        try:
            listed = list(queries)
        except TypeError:
            raise InvalidArgumentError("queries must be a list of vectors or a 2-D array") from None
        return await self._vectors.search(
            namespace, listed, top_k, threshold, model, metric, approximate, where
        )

    async def similar_at(
        self,
        namespace: str | None,
        query: Any,
        at: Any,
        top_k: int = 10,
        threshold: float | None = None,
        model: str | None = None,
        metric: str = "cosine",
        where: Any = None,
    ) -> list[VectorHit]:
        """Time travel: :meth:`embed_search`, exact, over the embeddings as they were
        at ``at`` (as for ``get_at``): each key's version valid then, none for a key not
        yet embedded or deleted then; later versions are ignored. ``where`` tests the
        metadata of the version valid then.

        Raises:
            as :meth:`embed_search`, and InvalidDataError for an unusable ``at``.
        """
        await self._life.enter()
        return await self._vectors.similar_at(
            namespace, query, at, top_k, threshold, model, metric, where
        )

    async def put_similar(
        self, namespace: str, key: str, content: Any, metadata: Any = None
    ) -> Version:
        """Store ``content`` as ``namespace/key``'s value (as ``put``) and its embedding
        by the database's embedder (``koru.open(embedder=...)``; the default hashes
        words: lexical, not semantic), with ``metadata``. Both are checked before either
        is written, and acknowledged together (two logs: a crash between the two
        appends can keep the value without its embedding). Returns the value's version.
        """
        vector = await self._embed_content(content)
        await self._life.enter_write()
        append = self._vectors.prepare(namespace, key, vector, self._embedder.model, metadata)
        version = self._writer.put(namespace, key, content)
        append()
        await self._writer.acknowledge()
        return version

    async def find_similar(
        self,
        namespace: str | None,
        content: Any,
        top_k: int = 10,
        threshold: float | None = None,
        where: Any = None,
    ) -> list[VectorHit]:
        """The ``top_k`` embeddings of the embedder's model nearest ``content``'s
        embedding (see :meth:`put_similar`), filtered by ``where`` as in
        :meth:`embed_search`."""
        vector = await self._embed_content(content)
        return await self.embed_search(
            namespace, vector, top_k, threshold, self._embedder.model, where=where
        )

    async def _embed_content(self, content: Any) -> Any:
        await self._life.enter()
        if type(self._embedder) is HashingEmbedder:  # microseconds: no thread hop
            return self._embedder.embed(content)
        return await trio.to_thread.run_sync(self._embedder.embed, content)
