"""The registry: model names and every checkpoint the authors published, by name."""

import pytest

import bit_tf
from bit_tf.evaluation import vtab
from bit_tf.models import registry


def test_every_release_group_has_the_published_count():
    counts = {
        group: len(bit_tf.list_released_checkpoints(group)) for group in registry.RELEASE_GROUPS
    }
    # 5 architectures x 3 runs x 19 tasks of VTAB-1k, as the authors' README counts them.
    assert counts == {"upstream": 12, "ILSVRC2012": 6, "vtab": 285, "distilled": 2, "teacher": 6}
    assert len(bit_tf.list_released_checkpoints()) == sum(counts.values())
    with pytest.raises(ValueError, match="Unknown release group 'jft'"):
        bit_tf.list_released_checkpoints("jft")


def test_released_names_give_the_architecture_and_head():
    expected = {
        "BiT-M-R50x1": (50, 1, 21843, "BiT-M-R50x1.npz"),
        "BiT-S-R152x4": (152, 4, 1000, "BiT-S-R152x4.npz"),
        "BiT-M-R101x3-ILSVRC2012": (101, 3, 1000, "BiT-M-R101x3-ILSVRC2012.npz"),
        "BiT-M-R50x1-run0-caltech101": (50, 1, 102, "vtab/BiT-M-R50x1-run0-caltech101.npz"),
        "BiT-M-R152x4-run2-dsprites-xpos": (152, 4, 16, "vtab/BiT-M-R152x4-run2-dsprites-xpos.npz"),
        "BiT-R50x1-distilled-224": (50, 1, 1000, "distill/R50x1_224.npz"),
        "BiT-R50x1-distilled-160": (50, 1, 1000, "distill/R50x1_160.npz"),
        "BiT-M-R152x2-teacher-224": (152, 2, 1000, "distill/R152x2_T_224.npz"),
        "BiT-M-R152x2-teacher-384": (152, 2, 1000, "distill/R152x2_T_384.npz"),
        # big_vision configs/proj/distill/common.py `inits`, classes from the configs' NCLS.
        "BiT-M-R152x2-teacher-flowers-128": (152, 2, 102, "distill/R152x2_T_flowers128.npz"),
        "BiT-M-R152x2-teacher-pet-128": (152, 2, 37, "distill/R152x2_T_pet128.npz"),
        "BiT-M-R152x2-teacher-food-128": (152, 2, 101, "distill/R152x2_T_food128.npz"),
        "BiT-M-R152x2-teacher-sun-128": (152, 2, 397, "distill/R152x2_T_sun128.npz"),
    }
    for name, (depth, width, classes, file) in expected.items():
        release = registry.find_release(name)
        assert (release.depth, release.width, release.num_classes, release.file) == (
            depth,
            width,
            classes,
            file,
        )
        assert registry.architecture(name) == (depth, width)
        assert registry.default_num_classes(name) == classes
    assert registry.find_release("BiT-L-R50x1") is None
    assert registry.architecture("BiT-L-R50x1") == (50, 1)
    assert registry.default_num_classes("BiT-L-R50x1") == 18291


def test_vtab_release_tasks_are_the_19_vtab_tasks_with_their_classes():
    assert len(registry.VTAB_RELEASE_TASKS) == 19
    assert {task for task, _ in registry.VTAB_RELEASE_TASKS.values()} == set(vtab.TASKS)
    for spelling, (task, classes) in registry.VTAB_RELEASE_TASKS.items():
        assert vtab.TASKS[task].num_classes == classes, spelling


def test_unknown_names_say_where_to_find_the_known_ones():
    with pytest.raises(ValueError, match="list_released_checkpoints"):
        registry.architecture("BiT-M-R50x1-run3-caltech101")


def test_the_depth_is_read_from_the_units_and_their_kind():
    for depth, units in registry.UNITS_PER_BLOCK.items():
        unit = "basic" if depth in registry.BASIC_DEPTHS else "bottleneck"
        assert registry.depth_of(units, unit) == depth
    assert registry.depth_of((1, 1, 1, 1), "bottleneck") is None
    assert registry.depth_of((3, 4, 6, 3), "basic") == 34
