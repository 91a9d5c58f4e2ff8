"""The classification data set: the class is the object's reflectance colour, seen under a
random coloured light that only the rest of the scene reveals."""
import collections

import numpy as np

from cvattn_mm.datasets import classification, generate_dataset
from cvattn_mm.datasets.drawing import split_rng

SIZE = 32


def scenes(num, size=SIZE):
    return [classification.sample_scene(split_rng(0, 'train', 1, i), i % 3, size)
            for i in range(num)]


def object_mask(scene, size=SIZE):
    from cvattn_mm.datasets.drawing import polygon_mask, shape_polygon
    polygon = shape_polygon(scene['shape'], scene['center'], scene['diameter'], scene['angle'])
    return polygon_mask(size, size, polygon)


def test_label_is_the_boosted_channel_of_the_objects_reflectance():
    for index, scene in enumerate(scenes(30)):
        reflectance = np.array(scene['reflectance'])
        channel = classification.CHANNELS[classification.CLASSES[index % 3]]
        boost = reflectance[channel] - np.delete(reflectance, channel)
        low, high = classification.OBJECT_BOOST
        assert np.allclose(boost, boost[0]) and low <= boost[0] <= high
        assert classification.scene_label(scene) == index % 3
        light_low, light_high = classification.LIGHT_RANGE
        assert all(light_low <= g <= light_high for g in scene['light'])


def test_pixels_are_reflectance_times_light():
    scene = scenes(1)[0]
    scene['noise_seed'] = 5
    image = classification.render(scene, SIZE).astype(float)
    expected = (classification.reflectance_map(scene, SIZE) * np.array(scene['light'])
                * classification.GAIN)
    residual = image - expected
    # pixel noise of std NOISE (and rounding), nothing else
    assert abs(residual.mean()) < 0.5
    assert abs(residual.std() - classification.NOISE) < 0.5
    inside = object_mask(scene)
    assert np.allclose(classification.reflectance_map(scene, SIZE)[inside],
                       scene['reflectance'])


def test_the_light_hides_the_class_and_only_the_whole_scene_reveals_it():
    """The object's observed colour names its class in under half the scenes (chance: a
    third); divided by the average colour of all the confetti (the grey world) nearly always;
    divided by the average of the 8 squares nearest to the object far less often."""
    hits = dict(alone=0, whole_scene=0, nearest_8=0)
    samples = scenes(300)
    for index, scene in enumerate(samples):
        light = np.array(scene['light'])
        observed = np.array(scene['reflectance']) * light
        confetti = np.array(scene['cell_reflectances']) * light
        cells = np.array(scene['cells'])
        centre = (classification.GRID - 1) / 2
        nearest = np.argsort(np.hypot(*(cells - centre).T), kind='stable')[:8]
        channel = classification.CHANNELS[classification.CLASSES[index % 3]]
        for name, light_estimate in (('alone', np.ones(3)), ('whole_scene', confetti.mean(0)),
                                     ('nearest_8', confetti[nearest].mean(0))):
            hits[name] += int(np.argmax(observed / light_estimate) == channel)
    share = {name: n / len(samples) for name, n in hits.items()}
    assert 0.35 < share['alone'] < 0.55, share
    assert share['whole_scene'] > 0.94, share
    assert share['nearest_8'] < share['whole_scene'] - 0.15, share


def test_nothing_but_black_touches_the_object():
    for size in (32, 48):
        cells = classification.confetti_cells(size)
        assert len(cells) >= 40 and len(np.unique(cells, axis=0)) == len(cells)
        for scene in scenes(20, size):
            mask = object_mask(scene, size)
            # the object grown by one pixel in every direction
            grown = mask.copy()
            for dy, dx in ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)):
                grown |= np.roll(mask, (dy, dx), axis=(0, 1))
            reflectance = classification.reflectance_map(scene, size)
            assert np.allclose(reflectance[grown & ~mask], classification.BLACK_REFLECTANCE)


def test_no_cue_but_the_colour_differs_between_classes():
    by_class = collections.defaultdict(collections.Counter)
    for scene in scenes(300):
        by_class[classification.scene_label(scene)].update([scene['shape']])
    for counts in by_class.values():
        assert set(counts) == set(classification.SHAPES)
        assert max(counts.values()) - min(counts.values()) < 40  # 100 images per class


def test_every_class_in_every_split(tmp_path):
    info = generate_dataset('classification', tmp_path, num_train=6, num_val=3, image_size=32)
    assert info['counts'] == dict(train=dict(bluish=2, greenish=2, reddish=2),
                                  val=dict(bluish=1, greenish=1, reddish=1))
