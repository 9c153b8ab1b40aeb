"""``keypatch export``: stored proposals as the KPP reference ``patch_ids.json`` and PNG pictures."""

from __future__ import annotations

import argparse

from keypatch.cli import values as v
from keypatch.cli.common import add_device, add_output, add_results, report
from keypatch.store import count_line


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``export``."""
    from keypatch.exports import EXPORTS
    from keypatch.proposers import available

    p = sub.add_parser(
        "export", help="write patch_ids.json and one picture per image from a results folder",
        description="Write the stored proposals of one setting as the KPP reference code's patch_ids.json "
                    "({image_stem: {'patch': [...], 'loss': [...]}}) and one PNG per image: original | kept "
                    "patches | reconstruction. When the store holds several settings, select one with "
                    "--model/--strategy/--ratio/--start/--seed/-o, or write each into its own folder with "
                    "--each-setting; `keypatch store info` lists them.",
    )
    add_results(p)
    p.add_argument("--ids", type=v.out_file, default=None, metavar="PATH", help="the patch_ids.json to write "
                   "(default: DIR/patch_ids.json)")
    p.add_argument("--pictures", type=v.out_dir, default=None, metavar="DIR", help="default: DIR/pictures")
    p.add_argument("--no-pictures", action="store_true", help="only write the JSON")
    p.add_argument("--strategy", default=None, choices=sorted(available()),
                   help="only records of this strategy")
    p.add_argument("--ratio", type=v.ratio, default=None, help="only records of this ratio")
    p.add_argument("--model", default=None, type=v.model, help="only records of this model id (e.g. 'default')")
    p.add_argument("--start", default=None, type=v.start, metavar="center|none|INDEX|ROW,COL",
                   help="only records that began from this start (as propose takes it; a start a strategy may "
                        "move, stored as 'center (may move)', is found by 'center')")
    p.add_argument("--seed", type=v.seed, default=None, help="only records stored with this seed")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE", type=v.option,
                   help="only records stored with this option value, repeatable (e.g. -o eps=0.2)")
    p.add_argument("--format", dest="formats", action="append", default=None, choices=sorted(EXPORTS),
                   help="also write annotation-tool files at the images' original resolution, repeatable: coco "
                        "(DIR/coco.json), labelstudio (DIR/labelstudio_tasks.json + labelstudio_config.xml), "
                        "masks (DIR/masks/, VOC/CVAT PNG masks); patch_ids.json is always written")
    p.add_argument("--image-root", type=v.existing_dir, default=None, metavar="DIR",
                   help="annotation files refer to images by their path relative to DIR (default: the images' common "
                        "folder): COCO's file_name; Label Studio's /data/local-files/?d=DIRNAME/PATH, served with "
                        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT set to DIR's parent")
    p.add_argument("--image-url", default=None, type=v.url_prefix, metavar="PREFIX",
                   help="Label Studio tasks' image URL: PREFIX followed by the image's relative path (e.g. "
                        "https://host/images/ or /data/local-files/?d=photos/)")
    p.add_argument("--per-folder", action="store_true",
                   help="also write a patch_ids.json into each image folder (ROOT/CLASS/patch_ids.json, where the "
                        "KPP authors' fine-tuning reads it), merged into one already there")
    p.add_argument("--each-setting", action="store_true",
                   help="write one export per setting into DIR/exports/STRATEGY-rRATIO-...-HASH/ (with setting.json)")
    add_device(p, "where to reconstruct for the pictures")
    add_output(p, json_summary=True)
    p.set_defaults(func=run)


def _line(s: dict) -> str:
    line = f"{count_line(s['records'], s['images'], s['paths'], 1)} -> {s['json']}"
    if s.get("json_per_folder"):
        line += f" and {len(s['json_per_folder'])} per-folder patch_ids.json"
    for key in ("coco", "labelstudio", "masks"):
        if key in s:
            line += f"; {key} -> {s[key]}"
    if "labelstudio_document_root" in s:
        line += f" (images as local files: LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={s['labelstudio_document_root']})"
    if s["pictures_dir"]:
        line += f"; {s['pictures']} pictures -> {s['pictures_dir']}"
        if s["skipped"]:
            line += f" ({s['skipped']} skipped, see the warnings)"
    return line


def run(args: argparse.Namespace) -> int:
    """Run ``export`` for parsed ``args``."""
    from keypatch.exports import export_results

    s = export_results(args.out, args.ids, args.pictures, pictures=not args.no_pictures, device=args.device,
                       progress=not args.quiet, each_setting=args.each_setting,
                       options=dict(args.option), seed=args.seed, strategy=args.strategy, ratio=args.ratio,
                       model_id=args.model, start=args.start, per_folder=args.per_folder,
                       formats=tuple(args.formats or ("json",)), image_root=args.image_root,
                       image_url=args.image_url)
    if "exports" in s:
        lines = [f"[{e['setting']}] {_line(e)}" for e in s["exports"]]
        report(args, s, "\n".join([*lines, count_line(s["records"], s["images"], s["paths"], len(s["exports"]))]))
    else:
        report(args, s, _line(s))
    return 0
