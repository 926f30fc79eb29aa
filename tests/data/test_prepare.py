import sys
import types

import numpy as np
import pytest
from PIL import Image

from ddpseg.cli import main
from ddpseg.data import DataError
from ddpseg.data.cityscapes_labels import ID_TO_TRAIN_ID
from ddpseg.data.image_io import write_png_atomic
from ddpseg.data.prepare import label_ids_to_train_ids, prepare_cityscapes
from ddpseg.data.synthetic import make_synthetic_cityscapes


@pytest.fixture
def raw_cityscapes(tmp_path):
    """A download as it comes: label-id maps only; the train-id maps are kept aside to compare."""
    root = make_synthetic_cityscapes(tmp_path / "cs", num_train=3, num_val=2, size=(32, 64))
    expected = {}
    for path in sorted(root.glob("gtFine/*/*/*_labelTrainIds.png")):
        expected[path] = np.array(Image.open(path))
        path.unlink()
    return root, expected


def _check(expected):
    for path, label in expected.items():
        np.testing.assert_array_equal(np.array(Image.open(path)), label)


def test_label_id_table_maps_to_train_ids():
    assert ID_TO_TRAIN_ID[7] == 0 and ID_TO_TRAIN_ID[33] == 18 and ID_TO_TRAIN_ID[0] == 255 and ID_TO_TRAIN_ID[29] == 255
    np.testing.assert_array_equal(label_ids_to_train_ids(np.array([[7, 26, 4]], np.uint8)), [[0, 13, 255]])
    with pytest.raises(DataError, match=r"x.png: values \[40\] are not Cityscapes label ids"):
        label_ids_to_train_ids(np.array([[7, 40]], np.uint8), "x.png")


def test_prepare_writes_train_ids_and_split_files(raw_cityscapes):
    root, expected = raw_cityscapes
    summary = prepare_cityscapes(str(root), nproc=1, use_cityscapesscripts=False, progress=False)
    assert summary.converted == 5 and summary.skipped == 0
    _check(expected)
    assert (root / "train.txt").read_text().splitlines() == [f"aachen/aachen_000000_{i:06d}" for i in range(3)]
    assert (root / "val.txt").read_text().splitlines()[0] == "frankfurt/frankfurt_000000_000000"


def test_rerun_after_interruption_finishes_the_job(raw_cityscapes):
    root, expected = raw_cityscapes
    prepare_cityscapes(str(root), nproc=1, use_cityscapesscripts=False, progress=False)
    victim = next(iter(expected))
    victim.unlink()  # as if the run had stopped before this file
    stale = victim.with_name(f".{victim.stem}.tmp-4242.png")
    stale.write_bytes(b"half a png")
    summary = prepare_cityscapes(str(root), nproc=1, use_cityscapesscripts=False, progress=False)
    assert (summary.converted, summary.skipped) == (1, 4)
    assert not stale.exists()
    _check(expected)


def test_cli_prepares_in_parallel(raw_cityscapes, capsys):
    root, expected = raw_cityscapes
    assert main(["prepare", "cityscapes", str(root), "--nproc", "2", "--from", "label-ids", "--quiet"]) == 0
    _check(expected)
    assert "wrote 5 label files (0 from polygons), 0 already there" in capsys.readouterr().out


def test_polygons_are_drawn_with_cityscapesscripts_when_installed(raw_cityscapes, monkeypatch):
    root, expected = raw_cityscapes
    calls = []

    def json2labelImg(json_path, out_path, encoding):  # noqa: N802 - the package's name
        calls.append(encoding)
        write_png_atomic(out_path, np.full((32, 64), 3, np.uint8))  # any writer works behind the rename

    module = types.ModuleType("cityscapesscripts.preparation.json2labelImg")
    module.json2labelImg = json2labelImg
    monkeypatch.setitem(sys.modules, "cityscapesscripts", types.ModuleType("cityscapesscripts"))
    monkeypatch.setitem(sys.modules, "cityscapesscripts.preparation", types.ModuleType("cityscapesscripts.preparation"))
    monkeypatch.setitem(sys.modules, "cityscapesscripts.preparation.json2labelImg", module)
    first = next(iter(expected))
    polygons = first.with_name(first.name.replace("_labelTrainIds.png", "_polygons.json"))
    polygons.write_text("{}")
    summary = prepare_cityscapes(str(root), nproc=1, progress=False)  # auto: the package is there
    assert summary.from_polygons == 1 and summary.converted == 5 and calls == ["trainIds"]
    assert (np.array(Image.open(first)) == 3).all()
    assert not list(first.parent.glob(".*"))  # no temporaries left


def test_polygons_without_cityscapesscripts_or_label_ids_is_a_clear_error(tmp_path):
    (tmp_path / "gtFine" / "train" / "x").mkdir(parents=True)
    (tmp_path / "gtFine" / "train" / "x" / "x_1_gtFine_polygons.json").write_text("{}")
    with pytest.raises(DataError, match="x_1_gtFine_polygons.json .* needs cityscapesscripts"):
        prepare_cityscapes(str(tmp_path), use_cityscapesscripts=False, progress=False)
    with pytest.raises(DataError, match="annotation folder not found"):
        prepare_cityscapes(str(tmp_path / "nowhere"), progress=False)


def test_bad_label_ids_name_the_file(raw_cityscapes):
    root, expected = raw_cityscapes
    bad = sorted(root.glob("gtFine/val/*/*_labelIds.png"))[0]
    write_png_atomic(bad, np.full((32, 64), 200, np.uint8))
    with pytest.raises(DataError, match=f"{bad.name}: values \\[200\\]"):
        prepare_cityscapes(str(root), nproc=1, use_cityscapesscripts=False, progress=False)
