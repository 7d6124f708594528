"""List files in the original format: reading them, and making them from a tree.

A list file has one example per line: whitespace-separated paths relative to
the dataset root, image first, then label, then columns the loader ignores
(LIP's reversed label).  A one-column list (Cityscapes ``test.lst``) has no
labels.  The original lists are sorted by path (checked for the Cityscapes,
COCO-Stuff and LIP lists of the original repository), so scanning a complete
dataset in sorted order reproduces them; the one known exception is ADE20K's
val list, where the original moved 12 files (ADE_val_00000016..27).
"""
from __future__ import annotations

import glob
import os

from hrseg_jax import console
from hrseg_jax.data.errors import DataError

Entry = tuple[str, ...]


def read_list(path: str) -> list[Entry]:
  """Parses a list file into tuples of columns (blank lines skipped).

  ``path`` may be local or a ``gs://`` (any ``etils.epath``) URI.
  """
  try:
    if '://' in str(path):
      from etils import epath  # pylint: disable=g-import-not-at-top
      lines = epath.Path(path).read_text().splitlines()
    else:
      with open(path) as f:
        lines = f.read().splitlines()
  except FileNotFoundError:
    raise DataError(path, 'list file not found (generate it with '
                    'scripts/make_lists.py; for PASCAL-Context with '
                    'scripts/prepare_pascal_ctx.py)') from None
  entries = [tuple(line.split()) for line in lines if line.strip()]
  if not entries:
    raise DataError(path, 'list file is empty')
  widths = {len(e) for e in entries}
  if min(widths) == 1 and max(widths) > 1:
    raise DataError(path, 'list mixes lines with and without labels')
  return entries


def write_list(path: str, entries: list[Entry], sep: str = ' ') -> None:
  """Writes entries, one per line, columns joined by ``sep``."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w') as f:
    f.writelines(sep.join(e) + '\n' for e in entries)
  os.replace(tmp, path)


def written_lines(written: dict[str, str]) -> list[str]:
  """``split  N lines  path`` per list file of ``{split: path}``, for the
  console of the scripts that write them."""
  out = []
  for split, path in sorted(written.items()):
    with open(path) as f:
      count = sum(1 for _ in f)
    out.append(f'{split:9s} {count:6d} lines  {path}')
  return out


def found_line(root: str, written: dict[str, str]) -> str:
  """``found 4 train, 2 val images under ROOT (first: PATH)`` for the
  lists of ``{split: path}`` just written from ``root``."""
  counts, first = [], None
  for split in ('train', 'val', 'test'):
    if split in written:
      entries = read_list(written[split])
      counts.append((len(entries), split))
      first = first or entries[0][0]
  if len(counts) == 1:   # '1 train image'
    found = console.counted(counts[0][0], f'{counts[0][1]} image')
  else:
    found = ', '.join(f'{n} {split}' for n, split in counts) + ' images'
  return f'found {found} under {root} (first: {first})'


def _rel_files(root: str, pattern: str) -> list[str]:
  paths = glob.glob(os.path.join(root, pattern))
  return sorted(os.path.relpath(p, root).replace(os.sep, '/') for p in paths)


def _need(root: str, rel: str, image: str) -> str:
  if not os.path.isfile(os.path.join(root, rel)):
    raise DataError(os.path.join(root, rel), f'label for {image} not found')
  return rel


def cityscapes_lists(root: str) -> dict[str, list[Entry]]:
  """train/val/trainval (image TAB labelIds) and test (image only) lists."""
  lists = {}
  for split in ('train', 'val', 'test'):
    images = _rel_files(root, f'leftImg8bit/{split}/*/*_leftImg8bit.png')
    if not images:
      continue
    if split == 'test':
      lists[split] = [(im,) for im in images]
      continue
    lists[split] = [
        (im, _need(root, im.replace('leftImg8bit/', 'gtFine/', 1).replace(
            '_leftImg8bit.png', '_gtFine_labelIds.png'), im))
        for im in images]
  if 'train' in lists and 'val' in lists:
    lists['trainval'] = lists['train'] + lists['val']
  return lists


def paired_lists(root: str) -> dict[str, list[Entry]]:
  """``{split}/image/X.jpg {split}/label/X.png`` lists (ADE20K, COCO-Stuff).

  Returns train, val, testval (= val) and trainval (= train + val).
  """
  lists = {}
  for split in ('train', 'val'):
    entries = _pairs(root, f'{split}/image', f'{split}/label')
    if entries:
      lists[split] = entries
  return _with_testval_trainval(lists)


def _pairs(root: str, image_dir: str, label_dir: str) -> list[Entry]:
  """(image, label) of every image in ``image_dir`` (.jpg/.jpeg/.png), its
  label ``label_dir/<stem>.png`` (DataError if missing); paths relative to
  ``root``."""
  images = [p for p in _rel_files(root, f'{image_dir}/*')
            if p.lower().endswith(('.jpg', '.jpeg', '.png'))]
  return [(im, _need(root, f'{label_dir}/{os.path.splitext(os.path.basename(im))[0]}.png',
                     im)) for im in images]


def _with_testval_trainval(lists: dict[str, list[Entry]]) -> dict[str, list[Entry]]:
  """Adds the original repository's derived lists to ``{train, val}``:
  testval = val, trainval = train + val (where both exist)."""
  if 'val' in lists:
    lists['testval'] = list(lists['val'])
  if 'train' in lists and 'val' in lists:
    lists['trainval'] = lists['train'] + lists['val']
  return lists


def _ade_download_lists(root: str) -> dict[str, list[Entry]]:
  """ADEChallengeData2016 as downloaded (also mmsegmentation's layout):
  ``images/{training,validation}/X.jpg`` with
  ``annotations/{training,validation}/X.png``, under ``root`` or under
  ``root/ADEChallengeData2016``."""
  base = ''
  if (not os.path.isdir(os.path.join(root, 'images'))
      and os.path.isdir(os.path.join(root, 'ADEChallengeData2016', 'images'))):
    base = 'ADEChallengeData2016/'
  lists = {}
  for split, folder in (('train', 'training'), ('val', 'validation')):
    entries = _pairs(root, f'{base}images/{folder}', f'{base}annotations/{folder}')
    if entries:
      lists[split] = entries
  return lists


def ade20k_lists(root: str) -> dict[str, list[Entry]]:
  """ADE20K: the ``{train,val}/{image,label}`` layout of :func:`paired_lists`,
  else ADEChallengeData2016 as downloaded (``images/training`` ...).

  Both have label PNGs with 0 = "other" (ignored) and 1..150 = the classes.
  """
  lists = paired_lists(root)
  if lists:
    return lists
  lists = _ade_download_lists(root)
  return _with_testval_trainval(lists)


def cocostuff_lists(root: str) -> dict[str, list[Entry]]:
  """COCO-Stuff: the ``{train,val}/{image,label}`` layout of
  :func:`paired_lists` (COCO-Stuff-10k, labels = COCO ids, 0 = unlabeled),
  else COCO-Stuff-164k as downloaded: ``images/{train2017,val2017}/X.jpg``
  with ``annotations/{train2017,val2017}/X_labelTrainIds.png`` where
  mmsegmentation made those, else ``X.png`` (stuffthingmaps_trainval2017).
  """
  lists = paired_lists(root)
  if lists:
    return lists
  for split in ('train', 'val'):
    images = _rel_files(root, f'images/{split}2017/*.jpg')
    if not images:
      continue
    entries = []
    for im in images:
      stem = os.path.splitext(os.path.basename(im))[0]
      trainids = f'annotations/{split}2017/{stem}_labelTrainIds.png'
      entries.append((im, trainids if os.path.isfile(os.path.join(root, trainids))
                      else _need(root, f'annotations/{split}2017/{stem}.png', im)))
    lists[split] = entries
  return _with_testval_trainval(lists)


def pascal_ctx_lists(root: str) -> dict[str, list[Entry]]:
  """PASCAL-Context: the ``{train,val}/{image,label}`` layout that
  scripts/prepare_pascal_ctx.py writes, else mmsegmentation's:
  ``JPEGImages/X.jpg`` with ``SegmentationClassContext/X.png`` (the same
  values: 0 = background, 1..59) for the names in
  ``ImageSets/SegmentationContext/{train,val}.txt``, under ``root`` or
  ``root/VOCdevkit/VOC2010``.
  """
  lists = paired_lists(root)
  if lists:
    return lists
  for base in ('', 'VOCdevkit/VOC2010/'):
    split_dir = os.path.join(root, base, 'ImageSets', 'SegmentationContext')
    if os.path.isdir(split_dir):
      break
  else:
    return {}
  for split in ('train', 'val'):
    names_file = os.path.join(split_dir, f'{split}.txt')
    if not os.path.isfile(names_file):
      continue
    with open(names_file) as f:
      stems = sorted({line.split()[0] for line in f if line.strip()})
    if not stems:   # an empty split file lists nothing (no empty .lst)
      continue
    entries = []
    for stem in stems:
      image = f'{base}JPEGImages/{stem}.jpg'
      if not os.path.isfile(os.path.join(root, image)):
        raise DataError(os.path.join(root, image), f'image listed in {names_file} not found')
      entries.append((image, _need(root, f'{base}SegmentationClassContext/{stem}.png', image)))
    lists[split] = entries
  return _with_testval_trainval(lists)


def lip_lists(root: str) -> dict[str, list[Entry]]:
  """LIP lists relative to ``TrainVal_images`` / ``..._parsing_annotations``.

  trainList has 3 columns (image, label, reversed label) when
  ``train_segmentations_reversed`` exists, as the HRNet-OCR loader expects,
  else 2; valList and testvalList have 2.
  """
  images_dir = os.path.join(root, 'TrainVal_images')
  labels_dir = os.path.join(root, 'TrainVal_parsing_annotations')
  lists = {}
  for split in ('train', 'val'):
    images = _rel_files(images_dir, f'{split}_images/*.jpg')
    if not images:
      continue
    reversed_dir = os.path.join(labels_dir, f'{split}_segmentations_reversed')
    entries = []
    for im in images:
      stem = os.path.splitext(os.path.basename(im))[0]
      entry = (im, _need(labels_dir, f'{split}_segmentations/{stem}.png', im))
      if split == 'train' and os.path.isdir(reversed_dir):
        entry += (_need(labels_dir,
                        f'{split}_segmentations_reversed/{stem}.png', im),)
      entries.append(entry)
    lists[split] = entries
  if 'val' in lists:
    lists['testval'] = list(lists['val'])
  return lists


# dataset -> (scanner, separator, {split: list file name}).
LIST_FORMATS = {
    'cityscapes': (cityscapes_lists, '\t', {
        'train': 'train.lst', 'val': 'val.lst', 'trainval': 'trainval.lst',
        'test': 'test.lst'}),
    'lip': (lip_lists, ' ', {
        'train': 'trainList.txt', 'val': 'valList.txt',
        'testval': 'testvalList.txt'}),
    'ade20k': (ade20k_lists, ' ', {
        'train': 'train.lst', 'val': 'val.lst', 'testval': 'testval.lst',
        'trainval': 'trainval.lst'}),
    'cocostuff': (cocostuff_lists, ' ', {
        'train': 'train.lst', 'val': 'val.lst', 'testval': 'testval.lst',
        'trainval': 'trainval.lst'}),
    'pascal_ctx': (pascal_ctx_lists, ' ', {
        'train': 'train.lst', 'val': 'val.lst', 'testval': 'testval.lst',
        'trainval': 'trainval.lst'}),
}


# What each scanner looks for under the dataset folder (for error messages).
_PAIRED = '{train,val}/image/* with {train,val}/label/*.png'
LAYOUTS = {
    'cityscapes': 'leftImg8bit/{train,val,test}/<city>/*_leftImg8bit.png with '
                  'gtFine/.../*_gtFine_labelIds.png',
    'lip': 'TrainVal_images/{train,val}_images/*.jpg with '
           'TrainVal_parsing_annotations/{train,val}_segmentations/*.png',
    'ade20k': f'{_PAIRED}, or ADEChallengeData2016\'s images/{{training,validation}}/*.jpg '
              'with annotations/{training,validation}/*.png',
    'cocostuff': f'{_PAIRED}, or COCO-Stuff-164k\'s images/{{train2017,val2017}}/*.jpg '
                 'with annotations/{train2017,val2017}/*.png (COCO-Stuff-10k as downloaded, '
                 'with .mat annotations: run scripts/prepare_cocostuff10k.py instead)',
    'pascal_ctx': f'{_PAIRED}, as scripts/prepare_pascal_ctx.py writes them from VOC2010, '
                  'or [VOCdevkit/VOC2010/]ImageSets/SegmentationContext/{train,val}.txt with '
                  'JPEGImages/ and SegmentationClassContext/ (mmsegmentation)',
}


def make_lists(dataset: str, root: str, out_dir: str) -> dict[str, str]:
  """Scans ``root`` and writes the dataset's list files into ``out_dir``.

  Args:
    dataset: a key of :data:`LIST_FORMATS`.
    root: the dataset directory in the original layout.
    out_dir: where the list files go (e.g. ``data/list/cityscapes``).

  Returns:
    {split: path of the written list file}.

  Raises:
    DataError: ``root`` is not a folder, no images found, or an image
      without its label.
  """
  if dataset not in LIST_FORMATS:
    raise ValueError(f'no list format for {dataset!r}; expected one of '
                     f'{sorted(LIST_FORMATS)}')
  if not os.path.isdir(root):   # not the 'no images found' of an empty folder
    raise DataError(root, 'not a folder' if os.path.exists(root) else 'no such folder')
  scan, sep, names = LIST_FORMATS[dataset]
  lists = scan(root)
  if not lists:
    raise DataError(root, f'no {dataset} images found; expected {LAYOUTS[dataset]}')
  written = {}
  for split, entries in lists.items():
    path = os.path.join(out_dir, names[split])
    write_list(path, entries, sep)
    written[split] = path
  return written
