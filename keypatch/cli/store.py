"""``keypatch store``: what a results store holds, whether it is intact, and salvaging a damaged one."""

from __future__ import annotations

import argparse

from keypatch.cli.common import add_output, add_results
from keypatch.store import count_line

DESCRIPTION = ("info: the settings stored (with the export flags that select each) and the claims of running "
               "propose jobs. check: SQLite's integrity check (exit 1 if damaged). repair: copy every readable "
               "record of a damaged store into a new one; the damaged file is kept beside it as "
               "results.sqlite.damaged-DATE.")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``store`` with its actions ``info``, ``check`` and ``repair``."""
    p = sub.add_parser("store", help="list a results store's settings, check it, or repair a damaged one",
                       description=DESCRIPTION)
    p.add_argument("action", choices=["info", "check", "repair"])
    add_results(p)
    add_output(p, progress=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``store ACTION`` for parsed ``args``; 1 when ``check`` finds damage."""
    from keypatch.store import ResultStore
    from keypatch.store.repair import check_store, repair_store, store_path

    if args.action == "check":
        problems = check_store(args.out)
        path = store_path(args.out)
        if not problems:
            print(f"{path}: ok")
            return 0
        print(f"{path}: damaged: {'; '.join(problems[:5])}; run `keypatch store repair --out {args.out}`")
        return 1
    if args.action == "repair":
        r = repair_store(args.out)
        lost = f", {r['unreadable']} unreadable" if r["unreadable"] else ""
        print(f"{r['recovered']} records recovered{lost} -> {r['store']}; the damaged file is kept as {r['damaged']}"
              + ("" if r["complete"] else " (stopped before every id was tried)"))
        return 0
    with ResultStore(args.out, create=False, read_only=True) as store:
        counts, claims, contents = store.settings_counts(), store.claims(), store.contents()
        paths = sum(len(v) for v in store.paths(sorted(contents)).values())
        path = store.path
    print(f"{path}: {count_line(sum(n for _, n in counts), len(contents), paths, len(counts))}; "
          f"{len(claims)} claimed by runs")
    for settings, n in counts:
        print(f"  {n:6d}  {settings.flags()}")
    return 0
