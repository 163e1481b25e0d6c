"""The drop-in installer and the build command: idempotent, safe, cached.

The build command runs tools/install_layers.py and then make, which is the
README's drop-in procedure; these tests pin down what that script does to a
tree, and that the committed unified diff says the same.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run

sys.path.insert(0, str(REPO / "tools"))
import install_layers

PATCH = REPO / "caffe_layers" / "proto" / "caffe.proto.patch"


@pytest.fixture(scope="session")
def pristine_proto(caffe_root: Path) -> str:
    """caffe.proto as the Debian source package ships it (from the build cache)."""
    for candidate in sorted(
        (caffe_root.parents[1] / "src").glob("caffe-*/src/caffe/proto/caffe.proto")
    ):
        return candidate.read_text()
    pytest.skip("no pristine Caffe source in the build cache")


def _tree(tmp_path: Path, proto: str) -> Path:
    root = tmp_path / "caffe"
    (root / install_layers.PROTO_PATH).parent.mkdir(parents=True)
    (root / install_layers.PROTO_PATH).write_text(proto)
    return root


def test_install_is_idempotent(tmp_path: Path, pristine_proto: str) -> None:
    root = _tree(tmp_path, pristine_proto)
    first = run([sys.executable, str(REPO / "tools" / "install_layers.py"), str(root)])
    assert first.returncode == 0
    assert "irg_param = 149" in first.stdout
    files = [root / rel for rel in install_layers.layer_files()]
    assert all(f.is_file() for f in files) and len(files) >= 7
    before = {f: f.stat().st_mtime_ns for f in files + [root / install_layers.PROTO_PATH]}
    second = run([sys.executable, str(REPO / "tools" / "install_layers.py"), str(root)])
    assert second.returncode == 0
    assert "nothing to do" in second.stdout
    assert before == {f: f.stat().st_mtime_ns for f in before}
    proto = (root / install_layers.PROTO_PATH).read_text()
    assert proto.count("optional IRGParameter irg_param = 149;") == 1
    assert proto.count("message IRGParameter {") == 1
    assert proto.count("optional RelationParameter relation_param = 150;") == 1
    assert proto.count("message RelationParameter {") == 1
    assert "next available layer-specific ID: 151 (last added: relation_param)" in proto
    assert "relation_param = 150" in first.stdout


def test_field_150_taken_is_refused(tmp_path: Path, pristine_proto: str) -> None:
    taken = pristine_proto.replace(
        "  optional ClipParameter clip_param = 148;",
        "  optional ClipParameter clip_param = 148;\n  optional BarParameter bar_param = 150;",
    )
    assert taken != pristine_proto
    root = _tree(tmp_path, taken)
    proc = run([sys.executable, str(REPO / "tools" / "install_layers.py"), str(root)])
    assert proc.returncode == 2
    assert "field 150 is already 'BarParameter bar_param'" in proc.stderr
    assert "'RelationParameter relation_param'" in proc.stderr
    # Nothing is half-applied: irg_param (free) was not added either.
    assert (root / install_layers.PROTO_PATH).read_text() == taken
    assert not (root / "src" / "caffe" / "layers").exists()


def test_tree_with_only_irg_param_gets_relation_param(tmp_path: Path, pristine_proto: str) -> None:
    """A tree patched before relation_param existed is upgraded, not refused."""
    irg_only = install_layers._add_field(pristine_proto, install_layers.FIELDS[0])
    assert "relation_param" not in irg_only
    root = _tree(tmp_path, irg_only)
    script = str(REPO / "tools" / "install_layers.py")
    proc = run([sys.executable, script, "--proto-only", str(root)])
    assert proc.returncode == 0
    assert "(relation_param = 150)" in proc.stdout
    assert (root / install_layers.PROTO_PATH).read_text() == install_layers.patch_proto_text(
        pristine_proto
    )


def test_field_149_taken_is_refused(tmp_path: Path, pristine_proto: str) -> None:
    taken = pristine_proto.replace(
        "  optional ClipParameter clip_param = 148;",
        "  optional ClipParameter clip_param = 148;\n  optional FooParameter foo_param = 149;",
    )
    assert taken != pristine_proto
    root = _tree(tmp_path, taken)
    proc = run([sys.executable, str(REPO / "tools" / "install_layers.py"), str(root)])
    assert proc.returncode == 2
    assert "field 149 is already 'FooParameter foo_param'" in proc.stderr
    assert (root / install_layers.PROTO_PATH).read_text() == taken
    assert not (root / "src" / "caffe" / "layers").exists()


def test_committed_patch_matches_installer(tmp_path: Path, pristine_proto: str) -> None:
    """`patch -p1 < caffe.proto.patch` and the installer give the same file."""
    if not shutil.which("patch"):
        pytest.skip("no patch(1)")
    root = _tree(tmp_path, pristine_proto)
    subprocess.run(["patch", "-s", "-p1", "-i", str(PATCH)], cwd=root, check=True)
    assert (root / install_layers.PROTO_PATH).read_text() == install_layers.patch_proto_text(
        pristine_proto
    )


def test_drop_in_tree_holds_exactly_our_files(caffe_root: Path) -> None:
    for rel in install_layers.layer_files():
        assert (caffe_root / rel).read_bytes() == (install_layers.LAYERS / rel).read_bytes(), rel
    assert (
        install_layers.patch_proto_text((caffe_root / install_layers.PROTO_PATH).read_text())
        is None
    )


def test_second_build_reuses_the_cache(caffe_root: Path) -> None:
    proc = run(["bash", str(REPO / "tools" / "build_caffe.sh"), "--with-tests"])
    assert proc.returncode == 0
    assert "cached build is current" in proc.stdout
    assert "cached test binary is current" in proc.stdout
    assert "make -j" not in proc.stdout
