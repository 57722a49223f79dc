"""bit_tf.HubLayer fine-tunes hub modules in Keras 3; local archives are unpacked safely."""

import gzip
import io
import os
import tarfile

import keras
import numpy as np
import pytest

import bit_tf
import hub_export
from bit_tf.models import archives
from bit_tf.models.hub import UnsafeArchiveError, extract_archive_safely

from numerics import SAME_MODEL_TOLERANCE, relative_error


@pytest.fixture(scope="module")
def feature_module(tmp_path_factory, official_checkpoint):
    backbone = bit_tf.resnet_v2(units_per_block=(1, 1, 1, 1), num_classes=None)
    bit_tf.load_official_weights(backbone, official_checkpoint)
    folder = tmp_path_factory.mktemp("hub_layer")
    module_dir = hub_export.export_module(backbone, str(folder / "module"))
    return backbone, module_dir


@pytest.mark.parametrize("trainable", [True, False])
def test_hub_layer_fine_tunes_in_a_keras3_model(feature_module, trainable):
    _, module_dir = feature_module
    rng = np.random.default_rng(2)
    images = rng.uniform(size=(4, 16, 16, 3)).astype("float32")
    labels = np.array([0, 1, 2, 0])
    layer = bit_tf.HubLayer(module_dir, trainable=trainable)
    inputs = keras.Input((16, 16, 3))
    outputs = keras.layers.Dense(3, kernel_initializer="zeros")(layer(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(
        keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    before = [variable.numpy().copy() for variable in layer.weights]
    history = model.fit(images, labels, epochs=2 if trainable else 1, batch_size=4, verbose=0)
    change = max(
        float(np.max(np.abs(old - variable.numpy())))
        for old, variable in zip(before, layer.weights, strict=True)
    )
    losses = history.history["loss"]
    if trainable:
        assert losses[-1] < losses[0]
        assert len(layer.trainable_weights) == len(layer.weights) > 0
        assert change > 0
        # The module itself was trained: a call through the layer sees the new weights.
        assert not np.allclose(layer(images).numpy(), feature_module[0](images).numpy())
    else:
        assert layer.trainable_weights == []
        assert change == 0


def test_hub_layer_matches_the_model_and_reads_local_archives(
    feature_module, tmp_path, monkeypatch
):
    backbone, module_dir = feature_module
    archive = hub_export.write_archive(module_dir, str(tmp_path / "module.tar.gz"))
    monkeypatch.setenv("BIT_TF_HUB_CACHE", str(tmp_path / "cache"))
    images = np.random.default_rng(3).uniform(size=(2, 24, 20, 3)).astype("float32")
    layer = bit_tf.HubLayer(archive)
    expected = backbone(images).numpy()
    actual = layer(images).numpy()
    assert relative_error(actual, expected) < SAME_MODEL_TOLERANCE
    assert os.listdir(tmp_path / "cache" / "bit_tf_hub")  # unpacked once, into the cache
    with pytest.raises(FileNotFoundError, match="neither an existing SavedModel"):
        bit_tf.HubLayer(str(tmp_path / "nothing-here"))


def make_archive(path, members):
    """members: (TarInfo, bytes or None) pairs, written as they are."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            else:
                archive.addfile(info)
    return str(path)


def member(name, kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def every_path(folder) -> set:
    """Every file, folder and link under `folder`, links not followed."""
    found = set()
    for parent, subfolders, files in os.walk(folder):
        found.update(os.path.join(parent, name) for name in subfolders + files)
    return found


@pytest.fixture(params=["standard filter", "own rules only"])
def filter_setting(request, monkeypatch):
    """Each archive twice: with the standard library's filter where this Python has it, and
    with this package's own rules alone, as on a Python without the filter."""
    if request.param == "own rules only":
        monkeypatch.setattr(archives, "STANDARD_FILTER", False)
    elif not archives.STANDARD_FILTER:
        pytest.skip("this Python has no tarfile.data_filter")
    return request.param


@pytest.mark.parametrize(
    "bad_member, reason",
    [
        ((member("/tmp/evil.txt"), b"x"), "absolute path"),
        ((member("../evil.txt"), b"x"), "'..'"),
        ((member("variables/../../evil.txt"), b"x"), "'..'"),
        ((member("link", tarfile.SYMTYPE, "/etc/passwd"), None), "symbolic link"),
        ((member("link", tarfile.SYMTYPE, "../../outside"), None), "symbolic link"),
        ((member("hard", tarfile.LNKTYPE, "../outside.txt"), None), "hard link"),
        ((member("hard", tarfile.LNKTYPE, "/etc/passwd"), None), "hard link"),
        ((member("device", tarfile.CHRTYPE), None), "device"),
        ((member("block", tarfile.BLKTYPE), None), "device"),
        ((member("fifo", tarfile.FIFOTYPE), None), "device, FIFO"),
        ((member("saved_model.pb"), b"again"), "occurs twice"),
    ],
)
def test_unsafe_archives_are_refused_and_nothing_escapes(
    tmp_path, filter_setting, bad_member, reason
):
    archive = make_archive(
        tmp_path / "evil.tar.gz", [(member("saved_model.pb"), b"model"), bad_member]
    )
    target = tmp_path / "deep" / "target"
    with pytest.raises(UnsafeArchiveError, match=reason):
        extract_archive_safely(archive, str(target))
    assert not target.exists()
    assert sorted(os.listdir(tmp_path / "deep")) == []  # no staging folder left either
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "outside").exists()


# The archive of issue 30: links that do not exist yet when the names are read, each leading
# one folder further up once the ones before it exist, then a hard link and a file through them.
LINK_CHAIN = [
    (member("saved_model.pb"), b"model"),
    (member("a", tarfile.SYMTYPE, "."), None),
    (member("a/b", tarfile.SYMTYPE, ".."), None),
    (member("b/c", tarfile.SYMTYPE, ".."), None),
    (member("b/c/d", tarfile.SYMTYPE, ".."), None),
    (member("b/c/d/escaped-by-hard-link.txt", tarfile.LNKTYPE, "saved_model.pb"), None),
    (member("b/c/d/escaped.txt"), b"outside"),
]
# Variants: a link that is harmless by its name but leads outside through an earlier link, a
# file written through a link to a folder inside, a hard link taken through a link.
THROUGH_LINKS = {
    "chain of issue 30": LINK_CHAIN,
    "link through a link": [
        (member("a", tarfile.SYMTYPE, "."), None),
        (member("up", tarfile.SYMTYPE, "a/.."), None),
    ],
    "file through a link to a folder inside": [
        (member("variables", tarfile.DIRTYPE), None),
        (member("alias", tarfile.SYMTYPE, "variables"), None),
        (member("alias/escaped.txt"), b"x"),
    ],
    "hard link through a link": [
        (member("a", tarfile.SYMTYPE, "."), None),
        (member("model"), b"model"),
        (member("escaped-by-hard-link.txt", tarfile.LNKTYPE, "a/model"), None),
    ],
    "dangling link": [(member("nothing", tarfile.SYMTYPE, "absent/file"), None)],
}


@pytest.mark.parametrize("layout", sorted(THROUGH_LINKS))
def test_links_through_links_are_refused_and_write_nothing(tmp_path, filter_setting, layout):
    archive = make_archive(tmp_path / "archive" / "evil.tar.gz", THROUGH_LINKS[layout])
    before = every_path(tmp_path)
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        extract_archive_safely(archive, str(tmp_path / "cache" / "hub" / "target"))
    assert every_path(tmp_path) - before == {str(tmp_path / "cache"), str(tmp_path / "cache/hub")}


@pytest.mark.parametrize("entry", ["resolve_handle", "from_hub", "HubLayer"])
def test_the_link_chain_archive_writes_nothing_outside_the_hub_cache(tmp_path, monkeypatch, entry):
    archive = make_archive(tmp_path / "downloads" / "module.tar.gz", LINK_CHAIN)
    cache = tmp_path / "home" / "hub_cache"
    monkeypatch.setenv("BIT_TF_HUB_CACHE", str(cache))
    before = every_path(tmp_path)
    call = {
        "resolve_handle": bit_tf.models.hub.resolve_handle,
        "from_hub": bit_tf.from_hub,
        "HubLayer": bit_tf.HubLayer,
    }[entry]
    with pytest.raises(UnsafeArchiveError, match="symbolic link 'a'"):
        call(archive)
    created = {str(cache.parent), str(cache), str(cache / "bit_tf_hub")}
    assert every_path(tmp_path) - before == created  # the cache's folders, empty


def test_safe_extraction_keeps_a_normal_archive_and_inner_links(tmp_path, filter_setting):
    archive = make_archive(
        tmp_path / "good.tar.gz",
        [
            (member("./", tarfile.DIRTYPE), None),  # as `tar -C module -czf good.tar.gz .` writes
            (member("./variables", tarfile.DIRTYPE), None),
            (member("./variables/variables.index"), b"index"),
            (member("saved_model.pb"), b"model"),
            (member("alias.pb", tarfile.SYMTYPE, "saved_model.pb"), None),
            (member("variables/up.pb", tarfile.SYMTYPE, "../saved_model.pb"), None),
            (member("copy.pb", tarfile.LNKTYPE, "saved_model.pb"), None),
            (member("late/file.txt"), b"late"),
            (member("late", tarfile.DIRTYPE), None),  # a folder listed after its contents
        ],
    )
    target = extract_archive_safely(archive, str(tmp_path / "out"))
    assert (tmp_path / "out" / "variables" / "variables.index").read_bytes() == b"index"
    assert (tmp_path / "out" / "alias.pb").read_bytes() == b"model"
    assert (tmp_path / "out" / "variables" / "up.pb").read_bytes() == b"model"
    assert (tmp_path / "out" / "copy.pb").read_bytes() == b"model"
    assert (tmp_path / "out" / "late" / "file.txt").read_bytes() == b"late"
    assert target == str(tmp_path / "out")
    with pytest.raises(FileExistsError):
        extract_archive_safely(archive, target)
    (tmp_path / "not-a-tar.tar.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ValueError, match="not a readable"):
        extract_archive_safely(str(tmp_path / "not-a-tar.tar.gz"), str(tmp_path / "out2"))
    # Cut short: the members read so far are not left behind.
    data = gzip.decompress(open(archive, "rb").read())
    (tmp_path / "cut.tar.gz").write_bytes(gzip.compress(data[: len(data) // 2 + 100]))
    with pytest.raises(ValueError, match="damaged or cut short|not a readable"):
        extract_archive_safely(str(tmp_path / "cut.tar.gz"), str(tmp_path / "out3"))
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["good.tar.gz", "out", "not-a-tar.tar.gz", "cut.tar.gz"]
    )


def test_a_saved_keras_model_with_a_hub_layer_reloads_only_when_trusted(feature_module, tmp_path):
    _, module_dir = feature_module
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, bit_tf.HubLayer(module_dir)(inputs))
    path = str(tmp_path / "with_hub_layer.keras")
    model.save(path)
    with pytest.raises(ValueError, match="Refusing to load HubLayer"):
        keras.saving.load_model(path)
    reloaded = keras.saving.load_model(path, safe_mode=False)
    images = np.random.default_rng(9).uniform(size=(1, 16, 16, 3)).astype("float32")
    assert np.allclose(reloaded(images), model(images), atol=1e-6)


def test_hub_layer_and_module_take_uint8_pixels_and_refuse_0_255_floats(feature_module):
    import tensorflow as tf

    backbone, module_dir = feature_module
    pixels = np.random.default_rng(4).integers(0, 256, (2, 16, 16, 3), np.uint8)
    floats = pixels.astype("float32") / 255.0
    expected = backbone(floats).numpy()
    layer = bit_tf.HubLayer(module_dir)
    module = tf.saved_model.load(module_dir)  # the module's own uint8 and uint16 functions
    for outputs in (layer(pixels), module(pixels), module(pixels.astype(np.uint16) * 257)):
        assert relative_error(np.asarray(outputs), expected) < SAME_MODEL_TOLERANCE
    with pytest.raises(ValueError, match=r"HubLayer\(.*largest value here is 255"):
        layer(floats * 255.0)
    with pytest.raises(ValueError, match="got dtype int64"):
        layer(pixels.astype(np.int64))
