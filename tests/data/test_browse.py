import cv2
import numpy as np

from ddpseg.cli import main
from ddpseg.data.browse import overlay_label
from tests.data.pipelines import CONFIGS

QUICKSTART = CONFIGS / "quickstart" / "ddp_convnext_mini_synthetic.py"


def test_overlay_blends_class_colours_and_darkens_ignore():
    img = np.full((1, 3, 3), 100, np.uint8)
    out = overlay_label(img, np.array([[0, 1, 255]], np.uint8), [(255, 0, 0), (0, 0, 200)], opacity=0.5)
    assert out[0, 0].tolist() == [50, 50, 177]  # BGR: red class 0 blended in
    assert out[0, 1].tolist() == [150, 50, 50]
    assert out[0, 2].tolist() == [50, 50, 50]  # ignore blends with black


def test_browse_dataset_writes_what_the_model_is_fed(cityscapes_root, tmp_path, capsys):
    out = tmp_path / "browse"
    argv = ["browse-dataset", str(QUICKSTART), "--out", str(out), "--num", "3",
            "--cfg-options", f"data.train.data_root={cityscapes_root}"]
    assert main(argv) == 0
    files = sorted(out.glob("*.png"))
    assert len(files) == 3 and "wrote 3 images" in capsys.readouterr().out
    assert all(cv2.imread(str(f)).shape == (128, 256, 3) for f in files)  # the config's crop size
    assert main(argv[:3] + [str(tmp_path / "origin"), "--num", "1", "--show-origin"] + argv[6:]) == 0
    (origin,) = (tmp_path / "origin").glob("*.png")
    assert cv2.imread(str(origin)).shape == (128, 256, 3)  # the synthetic frames' own size


def test_browse_dataset_reports_a_bad_data_root(tmp_path, capsys):
    argv = ["browse-dataset", str(QUICKSTART), "--out", str(tmp_path), "--cfg-options", f"data.train.data_root={tmp_path}/none"]
    assert main(argv) == 1
    assert "image folder not found" in capsys.readouterr().err


def test_browse_dataset_refuses_a_negative_count(tmp_path, capsys):
    assert main(["browse-dataset", str(QUICKSTART), "--out", str(tmp_path), "--num", "-1"]) == 1
    assert "--num must be >= 0 (0: all samples), got -1" in capsys.readouterr().err
