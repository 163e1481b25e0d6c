#!/usr/bin/env python3
"""Drop the IRG layers into a Caffe source tree (the README's drop-in step).

This is the whole drop-in procedure short of ``make``: copy ``caffe_layers/``
into the tree and add ``irg_param`` (field 149, the IRG layers) and
``relation_param`` (field 150, the REFILLED layers) to ``caffe.proto``. The
build command runs exactly this script, so what users do by hand is what CI
tests.

It is idempotent: files whose content is already right are left untouched (so
their mtimes do not trigger a rebuild), and an already patched ``caffe.proto``
is left alone; a tree patched before ``relation_param`` existed gets only that
field added. A tree whose ``LayerParameter`` already uses field 149 or 150 for
something else is refused, because silently renumbering would make our
``.caffemodel`` files unreadable by that tree and theirs by ours.

Only the standard library is used: this runs before any virtual environment
exists.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAYERS = REPO / "caffe_layers"
PROTO_PATH = Path("src/caffe/proto/caffe.proto")


@dataclass(frozen=True)
class Field:
    """One LayerParameter field we add, with the message it carries."""

    id: int
    name: str
    type: str
    fragment: Path  # the message definition, appended to caffe.proto
    comment: str  # the line above the field in LayerParameter


# In ID order: each one advances the "next available ID" comment by one.
FIELDS = (
    Field(
        149,
        "irg_param",
        "IRGParameter",
        LAYERS / "proto" / "irg_param.proto",
        "IRG distillation layers (BatchEuclideanMap, BatchEuclideanVector).",
    ),
    Field(
        150,
        "relation_param",
        "RelationParameter",
        LAYERS / "proto" / "relation_param.proto",
        "REFILLED distillation layers (TripletRelationLoss, LocalCenterKDLoss).",
    ),
)
# The first field, as older callers know it.
FIELD_ID = FIELDS[0].id
FIELD_NAME = FIELDS[0].name
FIELD_TYPE = FIELDS[0].type
PROTO_FRAGMENT = FIELDS[0].fragment
FIELD_RE = re.compile(r"^\s*(?:optional|repeated|required)\s+([\w.]+)\s+(\w+)\s*=\s*(\d+)", re.M)


class InstallError(RuntimeError):
    """The tree cannot take our layers without a decision from its owner."""


def layer_files() -> list[Path]:
    """Paths, relative to a Caffe root, of every file we drop into the tree."""
    return sorted(
        p.relative_to(LAYERS)
        for sub in ("include", "src")
        for p in (LAYERS / sub).rglob("*")
        if p.is_file()
    )


def copy_layers(caffe_root: Path, dry_run: bool = False) -> list[str]:
    """Copy changed layer files into the tree; return the ones that changed."""
    changed = []
    for rel in layer_files():
        src, dst = LAYERS / rel, caffe_root / rel
        if dst.is_file() and dst.read_bytes() == src.read_bytes():
            continue
        changed.append(str(rel))
        if not dry_run:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    return changed


def _message_span(text: str, name: str) -> tuple[int, int]:
    """Start of ``message NAME {`` and index of its matching closing brace."""
    match = re.search(rf"^message {name}\s*\{{", text, re.M)
    if match is None:
        raise InstallError(f"caffe.proto has no 'message {name}'")
    depth, pos = 1, match.end()
    while depth:
        nxt = re.compile(r"[{}]").search(text, pos)
        if nxt is None:
            raise InstallError(f"caffe.proto: unbalanced braces in {name}")
        depth += 1 if nxt.group() == "{" else -1
        pos = nxt.end()
    return match.start(), pos - 1


def _field_state(text: str, field: Field) -> bool:
    """Whether ``text`` already has ``field``; raise if it conflicts with it."""
    start, close = _message_span(text, "LayerParameter")
    fields = {int(fid): (ftype, fname) for ftype, fname, fid in FIELD_RE.findall(text[start:close])}
    has_message = re.search(rf"^message {field.type}\b", text, re.M) is not None
    if field.id in fields:
        if fields[field.id] == (field.type, field.name) and has_message:
            return True
        ftype, fname = fields[field.id]
        raise InstallError(
            f"caffe.proto: LayerParameter field {field.id} is already "
            f"'{ftype} {fname}'; our layers need it for "
            f"'{field.type} {field.name}'. Move that field or drop it, then rerun."
        )
    for fid, (ftype, fname) in fields.items():
        if fname == field.name:
            raise InstallError(
                f"caffe.proto: LayerParameter already has '{ftype} {fname} = {fid}'"
                f"; expected ID {field.id}."
            )
    if has_message:
        raise InstallError(
            f"caffe.proto already defines message {field.type} but LayerParameter"
            f" has no field {field.id} for it; remove the stale message first."
        )
    return False


def _add_field(text: str, field: Field) -> str:
    _, close = _message_span(text, "LayerParameter")
    line = f"  // {field.comment}\n  optional {field.type} {field.name} = {field.id};\n"
    line_start = text.rfind("\n", 0, close) + 1
    text = text[:line_start] + line + text[line_start:]
    text = re.sub(
        rf"(next available layer-specific ID:) {field.id} \(last added: \w+\)",
        rf"\1 {field.id + 1} (last added: {field.name})",
        text,
    )
    return text.rstrip("\n") + "\n\n" + field.fragment.read_text()


def patch_proto_text(text: str) -> str | None:
    """Return ``text`` with our fields added, or None if they are all there.

    Every field is checked before anything is added, so a conflict on any of
    them leaves the text unchanged.
    """
    missing = [field for field in FIELDS if not _field_state(text, field)]
    if not missing:
        return None
    for field in missing:
        text = _add_field(text, field)
    return text


def missing_fields(text: str) -> list[Field]:
    """The fields ``patch_proto_text`` would add to ``text``."""
    return [field for field in FIELDS if not _field_state(text, field)]


def patch_proto(caffe_root: Path, dry_run: bool = False) -> bool:
    """Patch the tree's caffe.proto in place; return whether it changed."""
    path = caffe_root / PROTO_PATH
    if not path.is_file():
        raise InstallError(f"{path} not found: is {caffe_root} a Caffe tree?")
    patched = patch_proto_text(path.read_text())
    if patched is None:
        return False
    if not dry_run:
        path.write_text(patched)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("caffe_root", type=Path, help="root of a Caffe source tree")
    parser.add_argument(
        "--dry-run", action="store_true", help="report what would change, change nothing"
    )
    parser.add_argument(
        "--proto-only",
        action="store_true",
        help="only patch caffe.proto (a tree for the plugin build)",
    )
    args = parser.parse_args(argv)
    root = args.caffe_root.resolve()
    try:
        proto_path = root / PROTO_PATH
        added = missing_fields(proto_path.read_text()) if proto_path.is_file() else []
        proto_changed = patch_proto(root, args.dry_run)
        changed = [] if args.proto_only else copy_layers(root, args.dry_run)
    except InstallError as err:
        print(f"install_layers: error: {err}", file=sys.stderr)
        return 2
    verb = "would update" if args.dry_run else "updated"
    for rel in changed:
        print(f"install_layers: {verb} {rel}")
    if proto_changed:
        ids = ", ".join(f"{field.name} = {field.id}" for field in added)
        print(f"install_layers: {verb} {PROTO_PATH} ({ids})")
    if not changed and not proto_changed:
        print(f"install_layers: {root} already has the IRG and REFILLED layers; nothing to do")
    return 0


if __name__ == "__main__":
    sys.exit(main())
