"""The device a measurement runs on: its check, its synchronisation and its memory counters.

CPU, CUDA, and any other accelerator that ``torch.accelerator`` knows (its ``synchronize``
and memory counters) are handled alike; nothing here needs a GPU to import.
"""
from typing import Union

import torch

DeviceLike = Union[str, torch.device]


def resolve_device(device: DeviceLike) -> torch.device:
    """``device`` as a :class:`torch.device`, checked to exist on this machine.

    Args:
        device: ``'cpu'``, ``'cuda'``, ``'cuda:1'``, ``'mps'``, ...

    Raises:
        ValueError: The name is not a device, or this machine does not have it (the message
            says what torch reports).
    """
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f'{device!r} is not a device name ({e})') from None
    if device.type == 'cpu':
        return device
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            build = (f'built with CUDA {torch.version.cuda}' if torch.version.cuda
                     else 'built without CUDA')
            raise ValueError(f'CUDA is not available on this machine (torch {torch.__version__} '
                             f'{build}; torch.cuda.is_available() is False)')
        count = torch.cuda.device_count()
    else:
        accelerator = _accelerator()
        if accelerator is None or accelerator.type != device.type:
            raise ValueError(f'{device.type!r} is not available on this machine (torch '
                             f'{torch.__version__}; accelerator: '
                             f'{accelerator.type if accelerator else "none"})')
        count = torch.accelerator.device_count()
    if device.index is not None and device.index >= count:
        raise ValueError(f'{device} does not exist: this machine has {count} {device.type} '
                         f'device(s)')
    return device


def _accelerator():
    if not hasattr(torch, 'accelerator') or not torch.accelerator.is_available():
        return None
    return torch.accelerator.current_accelerator()


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (nothing to wait for on the CPU)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    elif device.type != 'cpu':
        torch.accelerator.synchronize(device)


def device_name(device: torch.device) -> str:
    """``'cpu'``, or the accelerator's name (``'NVIDIA A100-SXM4-40GB'``) where torch has it."""
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return device.type


def _memory_api(device: torch.device):
    return torch.cuda if device.type == 'cuda' else torch.accelerator


def reset_peak_memory(device: torch.device) -> int:
    """Reset the accelerator's peak counter; return the bytes allocated now."""
    api = _memory_api(device)
    synchronize(device)
    api.reset_peak_memory_stats(device)
    return api.memory_allocated(device)


def peak_memory_since_reset(device: torch.device) -> int:
    """The accelerator's peak of allocated bytes since :func:`reset_peak_memory`."""
    synchronize(device)
    return _memory_api(device).max_memory_allocated(device)
