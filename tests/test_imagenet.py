"""The streamed data path (robustkd.splits.StreamSplit, robustkd.imagefolder) on a generated ILSVRC-2012 tree of
small JPEGs in the real layout (tests/fixtures_imagenet.py), and Tiny ImageNet when streamed."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from fixtures_data import write_tinyimagenet
from fixtures_imagenet import WNIDS, WORDS, write_imagenet_tree
from robustkd import data, imagefolder, splits
from robustkd.errors import DataError, ParamsError
from robustkd.params import validate

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"image_size": 32, "resize_size": 36}  # the test's crop (the default, 224 from 256, is checked once)


def prepare(tmp_path: Path, val_form: str = "devkit", **kw) -> tuple[Path, dict, dict]:
    info = write_imagenet_tree(tmp_path / "raw", val_form)
    out = tmp_path / "prepared"
    meta = splits.prepare_index("imagenet", tmp_path / "raw", out, val_size=3, seed=0, workers=2, **{**SMALL, **kw})
    return out, meta, info


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepare(tmp_path_factory.mktemp("imagenet"))


# ---------------------------------------------------------------- prepare: an index, not tensors

def test_prepare_writes_an_index_with_labels_and_digests(prepared):
    out, meta, info = prepared
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "test.index.json", "train.index.json",
                                                     "val.index.json"]
    assert meta["loader"] == "stream" and meta["num_classes"] == 3 and meta["shape"] == [3, 32, 32]
    assert meta["class_names"] == [WORDS[w] for w in WNIDS]  # from the devkit's meta.mat, sorted-wnid order
    assert meta["splits"] == {"train": 9, "val": 3, "test": 6}
    for split in ("train", "val", "test"):
        assert meta["files"][f"{split}.index.json"] == data.sha256_file(out / f"{split}.index.json")
    train, val, test = (json.loads((out / f"{s}.index.json").read_text()) for s in ("train", "val", "test"))
    # validation carved from ILSVRC train (disjoint, together the whole of it); the test split is ILSVRC val
    assert not set(train["files"]) & set(val["files"])
    assert sorted(train["files"] + val["files"]) == sorted(
        f"train/{w}/{w}_{k}.JPEG" for w in WNIDS for k in range(1, 5))
    assert all(f"/{WNIDS[y]}/" in f for f, y in zip(train["files"] + val["files"], train["labels"] + val["labels"]))
    # flat val/ labelled through the ground-truth file's ILSVRC2012_IDs and meta.mat's ID -> wnid map
    assert [(Path(f).stem, y) for f, y in zip(test["files"], test["labels"])] == info["val"]
    assert all(size == (Path(info["root"]) / f).stat().st_size for f, size in zip(test["files"], test["sizes"]))


@pytest.mark.parametrize("val_form", ["loc", "folders"])
def test_every_val_form_gives_the_same_labels(tmp_path, val_form):
    _, meta, info = prepare(tmp_path, val_form)
    test = json.loads((tmp_path / "prepared" / "test.index.json").read_text())
    assert sorted((Path(f).stem, y) for f, y in zip(test["files"], test["labels"])) == info["val"]
    assert meta["class_names"] == [WORDS[w] for w in WNIDS]


def test_the_split_draw_is_the_in_memory_paths(prepared):
    out, meta, _ = prepared
    picks = data.split_indices(12, 6, 3, 0)
    train = json.loads((out / "train.index.json").read_text())
    everything = [f"train/{w}/{w}_{k}.JPEG" for w in WNIDS for k in range(1, 5)]
    assert train["files"] == [everything[i] for i in picks["train"][1].tolist()]


# ---------------------------------------------------------------- batches

def test_train_batches_are_float_crops_in_0_1_and_cover_the_split_once(prepared):
    out, _, _ = prepared
    train = splits.open_split(out, "train", workers=0)
    seen, steps = [], 0
    for xb, yb, scale in train.train_batches(epoch=0, batch_size=4, seed=0, augment=True):
        assert xb.dtype == torch.float32 and xb.shape[1:] == (3, 32, 32) and scale == 1.0
        assert xb.is_contiguous(memory_format=torch.channels_last) and 0 <= xb.min() and xb.max() <= 1
        seen += yb.tolist()
        steps += 1
    assert steps == 3 and sorted(seen) == sorted(train.labels.tolist())


def test_default_preprocessing_gives_224_crops(tmp_path):
    out, meta, _ = prepare(tmp_path, image_size=224, resize_size=256)
    assert meta["shape"] == [3, 224, 224]
    split = splits.open_split(out, "train", workers=0)
    xb, _, _ = next(split.train_batches(0, 2, 0, augment=True))
    assert xb.shape == (2, 3, 224, 224)
    assert split.take(torch.tensor([0])).shape == (1, 3, 224, 224)


def test_eval_transform_is_resize_then_center_crop(prepared):
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    out, meta, info = prepared
    test = splits.open_split(out, "test", workers=0)
    got = test.take(torch.tensor([1]))[0]
    with Image.open(info["root"] / "val" / "ILSVRC2012_val_00000002.JPEG") as img:  # 40 wide, 48 high
        want = TF.to_tensor(TF.center_crop(TF.resize(img.convert("RGB"), 36, InterpolationMode.BILINEAR), 32))
    assert torch.equal(got, want.float())


def test_batches_are_deterministic_and_do_not_depend_on_workers(prepared):
    out, _, _ = prepared

    def epoch(workers: int, e: int, seed: int = 0):
        split = splits.open_split(out, "train", workers=workers)
        return [(xb, yb) for xb, yb, _ in split.train_batches(e, 4, seed, augment=True)]

    first, again, workers2 = epoch(0, 0), epoch(0, 0), epoch(2, 0)
    for (a, ya), (b, yb), (c, yc) in zip(first, again, workers2):
        assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(ya, yb) and torch.equal(ya, yc)
    other_epoch = epoch(0, 1)
    assert any(not torch.equal(a, b) for (a, _), (b, _) in zip(first, other_epoch))  # new order and crops
    # without augmentation, an image is the evaluation transform whatever the epoch
    split = splits.open_split(out, "train", workers=0)
    keys, _ = split.train_keys(0, 4, 0, augment=False)
    assert all(seed is None for batch in keys for _, seed in batch)


def test_predict_and_take_use_the_evaluation_transform(prepared):
    from robustkd.inference import predict_split

    out, _, _ = prepared
    test = splits.open_split(out, "test", workers=0)
    whole = torch.cat([xb for xb, _ in test.batches(4)])
    assert whole.shape == (6, 3, 32, 32)
    assert torch.equal(test.take(torch.tensor([4, 1])), whole[[4, 1]])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3)).eval()
    assert torch.equal(predict_split(model, test, 4), model(whole).argmax(1))


def test_the_training_loop_trains_on_a_streamed_split(prepared, tmp_path, one_thread):
    from robustkd.losses import TemperatureCE
    from robustkd.models import build_model, place
    from robustkd.training import TrainConfig, train

    out, meta, _ = prepared
    cfg = TrainConfig(epochs=2, batch_size=4, optimizer="adam", lr=1e-3, momentum=0.9, weight_decay=0.0,
                      schedule="cosine", augment=True, seed=0)
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        model = place(build_model("resnet_small", 3, 32, 3, meta["mean"], meta["std"], width=4), "cpu")
        result = train(model, TemperatureCE(1.0), splits.open_split(out, "train"), splits.open_split(out, "val"),
                       cfg, "stream", resume_path=tmp_path / f"resume{len(results)}.pt", run_id="stream")
        results.append(result)
    assert [len(r.history) for r in results] == [2, 2]
    a, b = (r.model.state_dict() for r in results)
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same batches: same weights
    # a streamed run has a fingerprint of its own (its resume file is never taken for an in-memory run's)
    assert torch.load(tmp_path / "resume0.pt", weights_only=True)["fingerprint"]["data_path"]


# ---------------------------------------------------------------- bad trees

def test_missing_tree_says_where_it_looked_and_the_layout(tmp_path):
    with pytest.raises(DataError, match=r"imagenet: .*raw/imagenet/ not found \(looked under data.raw_dir = "
                                        r".*train/<wnid>/\*\.JPEG.*ILSVRC2012_validation_ground_truth.txt"):
        splits.prepare_index("imagenet", tmp_path / "raw", tmp_path / "out", val_size=1, seed=0)
    assert not (tmp_path / "out").exists()


def test_missing_class_names_its_folder(tmp_path):
    info = write_imagenet_tree(tmp_path / "raw")
    for f in (info["root"] / "train" / WNIDS[1]).iterdir():
        f.unlink()
    (info["root"] / "train" / WNIDS[1]).rmdir()
    with pytest.raises(DataError, match=rf"class {WNIDS[1]} is missing: .*train/{WNIDS[1]}/ not found"):
        splits.prepare_index("imagenet", tmp_path / "raw", tmp_path / "out", val_size=1, seed=0)


def test_without_a_class_list_the_train_folders_must_be_1000(tmp_path):
    info = write_imagenet_tree(tmp_path / "raw", "folders")
    (info["root"] / "LOC_synset_mapping.txt").unlink()
    with pytest.raises(DataError, match=r"holds 3 class folders, ImageNet has 1000: classes are missing"):
        splits.prepare_index("imagenet", tmp_path / "raw", tmp_path / "out", val_size=1, seed=0)


def test_flat_val_without_ground_truth_lists_the_files_it_looked_for(tmp_path):
    info = write_imagenet_tree(tmp_path / "raw")
    (info["root"] / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt").unlink()
    with pytest.raises(DataError, match=r"val/ is flat but its labels were not found: looked for .*"
                                        r"ILSVRC2012_validation_ground_truth.txt.*LOC_val_solution.csv"):
        splits.prepare_index("imagenet", tmp_path / "raw", tmp_path / "out", val_size=1, seed=0)


def test_unreadable_jpeg_is_named_by_prepare(tmp_path):
    info = write_imagenet_tree(tmp_path / "raw")
    bad = info["root"] / "train" / WNIDS[2] / f"{WNIDS[2]}_3.JPEG"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match=rf"{bad}: unreadable image"):
        splits.prepare_index("imagenet", tmp_path / "raw", tmp_path / "out", val_size=1, seed=0)
    assert not (tmp_path / "out" / "meta.json").exists()


@pytest.mark.parametrize("workers", [0, 1])
def test_a_jpeg_damaged_after_prepare_is_named_when_a_batch_reads_it(tmp_path, workers):
    out, _, info = prepare(tmp_path)
    test = json.loads((out / "test.index.json").read_text())
    path = info["root"] / test["files"][2]
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2:] = bytes(len(raw) - len(raw) // 2)  # same size, the scan data zeroed: decoding fails
    raw[2:4] = b"\x00\x00"  # and the first marker broken
    path.write_bytes(bytes(raw))
    split = splits.open_split(out, "test", workers=workers)
    with pytest.raises(DataError) as err:
        list(split.batches(4))
    assert str(err.value).startswith(f"{path}: cannot decode image") and "Traceback" not in str(err.value)
    path.write_bytes(b"short")  # another size: found before decoding
    with pytest.raises(DataError, match=rf"{path}: 5 bytes, \d+ when indexed .*changed since prepare"):
        list(splits.open_split(out, "test").batches(4))


def test_a_modified_index_is_refused(tmp_path):
    out, _, _ = prepare(tmp_path)
    index = out / "val.index.json"
    index.write_text(index.read_text().replace('"labels": [', '"labels": [2, '))
    with pytest.raises(DataError, match=r"val.index.json: sha256 does not match meta.json"):
        splits.open_split(out, "val")


# ---------------------------------------------------------------- choosing the path; Tiny ImageNet streamed

def test_loader_param_is_checked_against_the_dataset():
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert splits.loader_for("imagenet", "auto") == "stream" and splits.loader_for("cifar10", "auto") == "memory"
    assert splits.loader_for("tinyimagenet", "stream") == "stream"
    with pytest.raises(ParamsError, match=r"`data.loader` = memory: dataset imagenet does not fit in memory"):
        validate({**base, "dataset": "imagenet", "data": {**base["data"], "loader": "memory"}})
    with pytest.raises(ParamsError, match=r"`data.loader` = stream: dataset cifar10 comes as binary batches"):
        validate({**base, "dataset": "cifar10", "data": {**base["data"], "loader": "stream"}})
    with pytest.raises(ParamsError, match=r"`data.resize_size` = 200 is smaller than `data.image_size` = 224"):
        validate({**base, "data": {**base["data"], "resize_size": 200}})
    with pytest.raises(DataError, match=r"imagenet: no in-memory loader"):
        data.load_raw("imagenet", Path("nowhere"))


def test_tinyimagenet_streamed_gives_the_in_memory_images(tmp_path, monkeypatch):
    monkeypatch.setitem(data.DATASETS, "tinyimagenet", data.DatasetSpec("tinyimagenet", 3, 3, 64))  # 3 classes
    raw = tmp_path / "raw"
    wnids = ["n01443537", "n01629819", "n01641577"]
    write_tinyimagenet(raw, wnids, n_train_per_class=4, n_val=5, seed=0, as_zip=False)
    params = {"seed": 0, "dataset": "tinyimagenet",
              "data": {"raw_dir": str(raw), "val_size": 3, "download": False, "train_subset": None,
                       "test_subset": None, "loader": "stream", "workers": 0, "image_size": 224, "resize_size": 256}}
    meta = splits.prepare(params, tmp_path / "stream")
    assert meta["shape"] == [3, 64, 64] and meta["transform"]["kind"] == "tinyimagenet"
    memory = splits.prepare({**params, "data": {**params["data"], "loader": "auto"}}, tmp_path / "memory")
    assert "loader" not in memory  # the in-memory meta.json is what it always was
    for split in ("train", "val", "test"):
        streamed = splits.open_split(tmp_path / "stream", split)
        x_u8, y = data.load_split(tmp_path / "memory", split)
        assert torch.equal(streamed.labels, y)
        assert torch.equal(streamed.take(torch.arange(len(y))), splits.to_float(x_u8))
    # its training augmentation: the in-memory path's pad-4 crop and flip, per image
    xb, _, _ = next(splits.open_split(tmp_path / "stream", "train").train_batches(0, 4, 0, augment=True))
    assert xb.shape == (4, 3, 64, 64)


def test_tinyimagenet_streamed_from_the_zip_alone_says_to_extract_it(tmp_path):
    raw = tmp_path / "raw"
    write_tinyimagenet(raw, ["n01443537"], n_train_per_class=2, n_val=1, seed=0, as_zip=True)
    with pytest.raises(DataError, match=r"tiny-imagenet-200/ not found.*is there: extract it \(`unzip"):
        splits.prepare_index("tinyimagenet", raw, tmp_path / "out", val_size=1, seed=0)


# ---------------------------------------------------------------- DDP: 2 gloo processes

def test_two_processes_see_disjoint_shares_covering_the_split(prepared, tmp_path):
    """torchrun --nproc_per_node 2 tests/stream_ddp_worker.py: each rank's indices of an epoch, and its batches, are
    its share of the single-process global batches (the same augmented pixels); the loop trains on them with DDP."""
    from test_ddp import _run, torchrun

    out, _, _ = prepared
    _run(torchrun(ROOT / "tests" / "stream_ddp_worker.py", out, tmp_path), timeout=300)
    report = json.loads((tmp_path / "report.json").read_text())
    ranks = report["indices"]
    assert len(ranks) == 2 and all(ranks)
    flat = [set(i for batch in r for i in batch) for r in ranks]
    assert not flat[0] & flat[1] and flat[0] | flat[1] == set(range(9))  # disjoint, together the whole split
    assert report["batch_shapes"] == [[3, 2], [3, 1]]  # global batches 6 and 3: shares 3 + 3, then 2 + 1
    assert report["pixels_match_single_process"] and report["ranks_agree"] and report["world_size"] == 2
    assert report["val_acc"] in (0, 1 / 3, 2 / 3, 1)  # correct counts of the 3 validation images, summed over ranks
