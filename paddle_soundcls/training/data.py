"""What the Trainer checks of a dataset before any work, and how the loop reads one."""
import numpy as np
from paddle.io import DataLoader, Dataset, DistributedBatchSampler

from ..errors import DatasetError

# How a Trainer's user leaves unreadable files out, named in the error that lists them.
SKIP_BAD_FILES = 'Trainer(..., skip_bad_files=True) (--skip-bad-files in examples/esc50/train.py)'


def check_dataset(model, dataset, role):
    """Refuse a dataset that does not fit the model: sample rate, label names and order,
    single- or multi-label, and for data with event times the model's kind and frame hop."""
    model_sr = model.frontend_cfg.sample_rate
    ds_sr = getattr(dataset, 'sample_rate', None)
    if ds_sr is not None and ds_sr != model_sr:
        raise DatasetError(f'{role} dataset is resampled to {ds_sr} Hz but {model.name} expects {model_sr} Hz; '
                           f'create the dataset with sample_rate={model_sr} (training and prediction must use the '
                           f'same rate)')
    labels = getattr(dataset, 'labels', None)
    if labels is not None and list(labels) != list(model.labels):
        raise DatasetError(
            f'the {role} dataset\'s labels differ from the model\'s, in names or in order, so predictions would '
            f'carry the wrong names.\n  dataset: {shorten(labels)}\n  model:   {shorten(model.labels)}\n'
            f'Build the Module with label_map=dataset.labels.')
    multi_label = bool(getattr(dataset, 'multi_label', False))
    if multi_label != model.multi_label:
        fix = ('Module(..., multi_label=True) for data with several labels per clip' if multi_label else
               'a multi-label dataset, or a Module with multi_label=False')
        raise DatasetError(f'the {role} dataset is {"multi" if multi_label else "single"}-label but {model.name} '
                           f'was built with multi_label={model.multi_label}: scores would be '
                           f'{"a softmax" if multi_label else "independent sigmoids"}. Use {fix}.')
    if getattr(dataset, 'strong', False):
        if not model.multi_label:
            raise DatasetError(f'the {role} dataset has event times (strong labels): train a multi-label model on '
                               f'it (Module(..., multi_label=True)), whose frame scores are independent sigmoids')
        hop = model.frontend_cfg.hop_length / model.frontend_cfg.sample_rate
        if abs(dataset.frame_hop_seconds - hop) > 1e-9:
            raise DatasetError(f'the {role} dataset has frame targets every {dataset.frame_hop_seconds} s but '
                               f'{model.name} makes frames every {hop} s; create it with frame_hop_seconds={hop}')


def check_files(dataset, role, skip_bad, checked):
    """Open every file of `dataset` once per Trainer (`checked`: the ids of those done) and refuse
    or, with skip_bad, drop the unreadable ones; refuse an empty dataset."""
    if id(dataset) not in checked and hasattr(dataset, 'check_files'):
        from ..datasets.base import AudioDataset
        if isinstance(dataset, AudioDataset):
            dataset.check_files(skip_bad=skip_bad, skip_hint=SKIP_BAD_FILES)
        else:   # a dataset of its own, whose check_files may not know skip_hint
            dataset.check_files(skip_bad=skip_bad)
        checked.add(id(dataset))
    if len(dataset) == 0:
        raise DatasetError(f'{role} dataset is empty')


def loader(dataset, batch_size, num_workers, shuffle, seed, epoch=0):
    """Batches of `dataset` for this process; the shuffle order depends on (seed, epoch) only,
    the same for 1 or N processes."""
    sampler = DistributedBatchSampler(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=False)
    sampler.set_epoch(seed * 100003 + epoch)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, return_list=True)


class _Appended(Dataset):
    """A dataset's items with something of each clip appended (see the subclasses)."""

    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return (*self.dataset[index], self.appended(index))

    def set_epoch(self, epoch):
        if hasattr(self.dataset, 'set_epoch'):
            self.dataset.set_epoch(epoch)


class WithTeacher(_Appended):
    """A training dataset's items with the teacher's logits of the clip appended."""

    def __init__(self, dataset, logits):
        super().__init__(dataset)
        self.logits = logits

    def appended(self, index):
        return self.logits[index]


class WithDevices(_Appended):
    """A training dataset's items with the index of the clip's recording device appended (last,
    after a teacher's logits): `names` (sorted) are the devices the classifier tells apart."""

    def __init__(self, dataset, devices):
        super().__init__(dataset)
        self.names = sorted(set(devices))
        number = {name: i for i, name in enumerate(self.names)}
        self.indices = np.array([number[name] for name in devices], dtype=np.int64)

    def appended(self, index):
        return self.indices[index]


def target_of(data, index):
    """The target of clip `index` without loading its audio where the dataset can say it."""
    return data.target(index) if hasattr(data, 'target') else data[index][1]


def shorten(labels, limit=12):
    labels = list(labels)
    return repr(labels) if len(labels) <= limit else repr(labels[:limit])[:-1] + f', ... ({len(labels)} labels)]'
