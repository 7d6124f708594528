"""Class names per dataset, in training-id order.

None of these lists is in the original repository; they are the datasets'
standard names (external knowledge), ordered as the original's label
encoding orders the ids:

* Cityscapes: the 19 trainIds (spec 4.5).
* LIP: the 20 LIP parsing classes, 0 = background (spec 4.6; 14/15, 16/17,
  18/19 are the left/right pairs).
* PASCAL-Context: the sorted raw Detail ids of spec 4.7.  The Detail
  ``labels.txt`` numbers its 459 categories alphabetically, so sorted ids
  are alphabetical names.  60 classes include background at 0; 59 drop it.
* ADE20K: the 150 SceneParsing classes (``objectInfo150`` order).
* COCO-Stuff: raw ids 1..182 minus the 11 unused ones (spec 4.8): the 80
  COCO thing classes followed by the 91 stuff classes.

* Synthetic scenes (:mod:`hrseg_jax.data.synthetic`): with 19 classes the
  Cityscapes trainIds; otherwise road, sky, building, vegetation, sidewalk,
  then object classes named after their shapes (car, person, pole, truck,
  bicycle; ``car-2`` ... when K > 10).

Any other dataset (or a class count that does not match) gets ``class_<i>``.
"""
from __future__ import annotations

from hrseg_jax.data.label_maps import CITYSCAPES_CLASSES

LIP_CLASSES = (
    'background', 'hat', 'hair', 'glove', 'sunglasses', 'upper-clothes',
    'dress', 'coat', 'socks', 'pants', 'jumpsuits', 'scarf', 'skirt', 'face',
    'left-arm', 'right-arm', 'left-leg', 'right-leg', 'left-shoe',
    'right-shoe')

PASCAL_CTX60_CLASSES = (
    'background', 'aeroplane', 'bag', 'bed', 'bedclothes', 'bench', 'bicycle',
    'bird', 'boat', 'book', 'bottle', 'building', 'bus', 'cabinet', 'car',
    'cat', 'ceiling', 'chair', 'cloth', 'computer', 'cow', 'cup', 'curtain',
    'dog', 'door', 'fence', 'floor', 'flower', 'food', 'grass', 'ground',
    'horse', 'keyboard', 'light', 'motorbike', 'mountain', 'mouse', 'person',
    'plate', 'platform', 'pottedplant', 'road', 'rock', 'sheep', 'shelves',
    'sidewalk', 'sign', 'sky', 'snow', 'sofa', 'table', 'track', 'train',
    'tree', 'truck', 'tvmonitor', 'wall', 'water', 'window', 'wood')
PASCAL_CTX59_CLASSES = PASCAL_CTX60_CLASSES[1:]

ADE20K_CLASSES = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed',
    'windowpane', 'grass', 'cabinet', 'sidewalk', 'person', 'earth', 'door',
    'table', 'mountain', 'plant', 'curtain', 'chair', 'car', 'water',
    'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field',
    'armchair', 'seat', 'fence', 'desk', 'rock', 'wardrobe', 'lamp',
    'bathtub', 'railing', 'cushion', 'base', 'box', 'column', 'signboard',
    'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace',
    'refrigerator', 'grandstand', 'path', 'stairs', 'runway', 'case',
    'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge',
    'bookcase', 'blind', 'coffee table', 'toilet', 'flower', 'book', 'hill',
    'bench', 'countertop', 'stove', 'palm', 'kitchen island', 'computer',
    'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel', 'bus', 'towel',
    'light', 'truck', 'tower', 'chandelier', 'awning', 'streetlight', 'booth',
    'television receiver', 'airplane', 'dirt track', 'apparel', 'pole',
    'land', 'bannister', 'escalator', 'ottoman', 'bottle', 'buffet', 'poster',
    'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer',
    'plaything', 'swimming pool', 'stool', 'barrel', 'basket', 'waterfall',
    'tent', 'bag', 'minibike', 'cradle', 'oven', 'ball', 'food', 'step',
    'tank', 'trade name', 'microwave', 'pot', 'animal', 'bicycle', 'lake',
    'dishwasher', 'screen', 'blanket', 'sculpture', 'hood', 'sconce', 'vase',
    'traffic light', 'tray', 'ashcan', 'fan', 'pier', 'crt screen', 'plate',
    'monitor', 'bulletin board', 'shower', 'radiator', 'glass', 'clock',
    'flag')

_COCO_THINGS = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train',
    'truck', 'boat', 'traffic light', 'fire hydrant', 'stop sign',
    'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow',
    'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag',
    'tie', 'suitcase', 'frisbee', 'skis', 'snowboard', 'sports ball', 'kite',
    'baseball bat', 'baseball glove', 'skateboard', 'surfboard',
    'tennis racket', 'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon',
    'bowl', 'banana', 'apple', 'sandwich', 'orange', 'broccoli', 'carrot',
    'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch', 'potted plant',
    'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote',
    'keyboard', 'cell phone', 'microwave', 'oven', 'toaster', 'sink',
    'refrigerator', 'book', 'clock', 'vase', 'scissors', 'teddy bear',
    'hair drier', 'toothbrush')
_COCO_STUFF = (
    'banner', 'blanket', 'branch', 'bridge', 'building-other', 'bush',
    'cabinet', 'cage', 'cardboard', 'carpet', 'ceiling-other', 'ceiling-tile',
    'cloth', 'clothes', 'clouds', 'counter', 'cupboard', 'curtain',
    'desk-stuff', 'dirt', 'door-stuff', 'fence', 'floor-marble',
    'floor-other', 'floor-stone', 'floor-tile', 'floor-wood', 'flower', 'fog',
    'food-other', 'fruit', 'furniture-other', 'grass', 'gravel',
    'ground-other', 'hill', 'house', 'leaves', 'light', 'mat', 'metal',
    'mirror-stuff', 'moss', 'mountain', 'mud', 'napkin', 'net', 'paper',
    'pavement', 'pillow', 'plant-other', 'plastic', 'platform',
    'playingfield', 'railing', 'railroad', 'river', 'road', 'rock', 'roof',
    'rug', 'salad', 'sand', 'sea', 'shelf', 'sky-other', 'skyscraper', 'snow',
    'solid-other', 'stairs', 'stone', 'straw', 'structural-other', 'table',
    'tent', 'textile-other', 'towel', 'tree', 'vegetable', 'wall-brick',
    'wall-concrete', 'wall-other', 'wall-panel', 'wall-stone', 'wall-tile',
    'wall-wood', 'water-other', 'waterdrops', 'window-blind', 'window-other',
    'wood')
COCOSTUFF_CLASSES = _COCO_THINGS + _COCO_STUFF

_BY_DATASET = {
    'cityscapes': tuple(CITYSCAPES_CLASSES),
    'lip': LIP_CLASSES,
    'pascal_ctx': PASCAL_CTX59_CLASSES,
    'pascal_ctx60': PASCAL_CTX60_CLASSES,
    'ade20k': ADE20K_CLASSES,
    'cocostuff': COCOSTUFF_CLASSES,
}


_SYNTHETIC_SCENERY = ('road', 'sky', 'building', 'vegetation', 'sidewalk')
# The object shapes of hrseg_jax.data.synthetic (K != 19), in their order.
_SYNTHETIC_OBJECTS = ('car', 'person', 'pole', 'truck', 'bicycle')


def synthetic_names(num_classes: int) -> tuple[str, ...]:
  """Names of the synthetic scenes' K classes (see the module docstring)."""
  if num_classes == len(CITYSCAPES_CLASSES):
    return tuple(CITYSCAPES_CLASSES)
  names = list(_SYNTHETIC_SCENERY[:num_classes])
  for c in range(len(names), num_classes):
    i = c - len(_SYNTHETIC_SCENERY)
    base = _SYNTHETIC_OBJECTS[i % len(_SYNTHETIC_OBJECTS)]
    names.append(base if i < len(_SYNTHETIC_OBJECTS) else
                 f'{base}-{i // len(_SYNTHETIC_OBJECTS) + 1}')
  return tuple(names)


def generic_names(num_classes: int) -> tuple[str, ...]:
  return tuple(f'class_{i}' for i in range(num_classes))


def class_names(dataset: str | None, num_classes: int) -> tuple[str, ...]:
  """K names for ``dataset``; ``class_<i>`` if unknown or K does not match."""
  if dataset == 'synthetic':
    return synthetic_names(num_classes)
  names = _BY_DATASET.get(dataset or '')
  if names is None or len(names) != num_classes:
    return generic_names(num_classes)
  return names
