"""The embedding commands: ``embed`` (store, or delete, a key's embedding) and ``search``
(the nearest embeddings now, or at a past time).

Both open the database (the vector indexes are a projection a snapshot does not
restore): ``embed`` writable, ``search`` read-only, beside a writer like every read.
A vector is given as JSON (``'[0.1, 0.2, 0.3]'``); ``--content TEXT`` embeds text with
the database's default embedder instead (lexical feature hashing, not semantic).
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from ._base import (
    Command,
    Usage,
    parse_time,
    split_key,
    unique_keys,
    version_doc,
    with_database,
)
from ._output import Output, dumps, short

if TYPE_CHECKING:
    from koru import Database, VectorHit

__all__ = ["VECTOR_COMMANDS"]


def _vector(text: str) -> list[Any]:
    try:
        vector = json.loads(text, object_pairs_hook=unique_keys)
    except RecursionError:  # "[[[[...": json.loads recurses
        raise Usage("the vector nests too deeply") from None
    except ValueError as exc:
        raise Usage(f"the vector is not valid JSON: {exc}") from None
    if type(vector) is not list:
        raise Usage(f"the vector is a JSON list of numbers, not {text[:40]!r}")
    return vector


def _json(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except RecursionError:  # "[[[[...": json.loads recurses
        raise Usage(f"{what} nests too deeply") from None
    except ValueError as exc:
        raise Usage(f"{what} is not valid JSON: {exc}") from None


# -- embed -------------------------------------------------------------------------------------


def _embed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="NS/KEY", help="the key the embedding belongs to")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("vector", nargs="?", metavar="VECTOR", help="a JSON list of numbers")
    what.add_argument(
        "--content", metavar="TEXT", help="store TEXT as the value and embed it (lexical)"
    )
    what.add_argument("--delete", action="store_true", help="delete the key's embedding")
    p.add_argument("--model", default="default", help="the embedding model's name")
    p.add_argument("--metadata", metavar="JSON", help="metadata stored with the embedding")


def _embed(args: argparse.Namespace) -> int:
    namespace, key = split_key(args.target)
    metadata = _json(args.metadata, "--metadata")
    vector = None if args.vector is None else _vector(args.vector)
    out = Output(as_json=args.json)

    async def write(db: Database) -> Any:
        if args.delete:
            return await db.delete_embedding(namespace, key)
        if args.content is not None:
            return await db.put_similar(namespace, key, args.content, metadata)
        return await db.embed(namespace, key, vector, args.model, metadata)

    version = with_database(args, write, create=True)
    if out.json:
        out.doc(version_doc(version))
    else:
        done = "deleted the embedding of" if args.delete else "embedded"
        when = version.datetime.isoformat(timespec="milliseconds")
        out.text(f"{done} {namespace}/{key}: version {short(version.write_id)} at {when}")
    return 0


# -- search ------------------------------------------------------------------------------------


def _search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("namespace", nargs="?", metavar="NS", help="the namespace (default: all)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--vector", metavar="JSON", help="the query vector, a JSON list")
    what.add_argument("--content", metavar="TEXT", help="embed TEXT and search with it")
    p.add_argument("--top-k", type=int, default=10, metavar="N", help="at most N hits")
    p.add_argument("--threshold", type=float, metavar="X", help="drop hits scoring worse")
    p.add_argument("--model", help="the model searched (needed when there are several)")
    p.add_argument("--metric", default="cosine", choices=("cosine", "dot", "euclidean"))
    p.add_argument("--at", metavar="TIME", help="search the embeddings as they were then")
    p.add_argument("--where", metavar="EXPR", help="a filter on the metadata: 'lang=en'")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--approximate", action="store_true", help="use the approximate index (cosine)"
    )
    mode.add_argument("--exact", action="store_true", help="never use the approximate index")


def _where(text: str | None) -> Any:
    if text is None:
        return None
    from ._where import WhereError, parse_where

    try:
        return parse_where(text)
    except WhereError as exc:
        raise Usage(f"--where: {exc}") from None


def _search(args: argparse.Namespace) -> int:
    where = _where(args.where)
    at = None if args.at is None else parse_time(args.at)
    vector = None if args.vector is None else _vector(args.vector)
    approximate = True if args.approximate else False if args.exact else None
    if at is not None and approximate:
        raise Usage("--at searches exactly: drop --approximate")
    out = Output(as_json=args.json)

    async def read(db: Database) -> list[VectorHit]:
        query = vector
        model = args.model
        if args.content is not None:
            query = await db._embed_content(args.content)
            model = model or db._embedder.model
        if at is not None:
            return await db.similar_at(
                args.namespace, query, at, args.top_k, args.threshold, model, args.metric, where
            )
        return await db.embed_search(
            args.namespace,
            query,
            args.top_k,
            args.threshold,
            model,
            args.metric,
            approximate,
            where,
        )

    hits = with_database(args, read, readonly=True)
    if out.json:
        out.doc([h._asdict() for h in hits])
    else:
        out.table(
            ("namespace", "key", "score", "metadata"),
            (
                (
                    h.namespace,
                    h.key,
                    f"{h.score:.6g}",
                    "" if h.metadata is None else dumps(h.metadata),
                )
                for h in hits
            ),
        )
    return 0


VECTOR_COMMANDS: tuple[Command, ...] = (
    Command(
        "embed",
        "store a key's embedding (a JSON vector, or --content text), or --delete it",
        "kdelta embed docs/intro '[0.9, 0.1, 0.0]' --model tiny --metadata '{\"lang\": \"en\"}'",
        _embed_args,
        _embed,
    ),
    Command(
        "search",
        "the embeddings nearest a vector (or --content text), now or --at a past time",
        "kdelta search docs --vector '[1, 0, 0]' --top-k 5 --where 'lang=en'",
        _search_args,
        _search,
    ),
)
