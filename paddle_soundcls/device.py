import os

import paddle

from .deploy.engines import check_threads, cpu_count
from .errors import DeviceError


# The thread count last given to Paddle's CPU kernels (None: not set yet in this process).
_threads_set = None


def check_gpu():
    """Raise a clear error when no CUDA GPU can be used (a CPU-only build, or none visible)."""
    if not paddle.is_compiled_with_cuda():
        raise DeviceError('use_gpu=True, but this PaddlePaddle build has no CUDA support. Install '
                           'paddlepaddle-gpu, or pass use_gpu=False to run on the CPU.')
    if paddle.device.cuda.device_count() == 0:
        raise DeviceError('use_gpu=True, but no CUDA device is visible (check CUDA_VISIBLE_DEVICES and '
                           'the driver), or pass use_gpu=False to run on the CPU.')


def use_cpu_threads(num_threads=None):
    """Give Paddle's CPU kernels `num_threads` threads; None keeps the count an earlier call chose
    (e.g. Trainer(num_threads=1), then a teacher's predict), or the first time takes cpu_threads()'s
    default."""
    global _threads_set
    if num_threads is not None or _threads_set is None:
        _threads_set = cpu_threads(num_threads)
        paddle.base.core.set_num_threads(_threads_set)


def set_device(use_gpu, num_threads=None):
    """Make the GPU (when asked and possible) or the CPU Paddle's device for this process: what a
    training run does (Trainer), where every tensor of the loop is made. Asking for the GPU on a
    CPU-only build is an error. On the CPU, Paddle's kernels get `num_threads` threads (see
    use_cpu_threads). Inference never calls this: see inference_place."""
    if use_gpu:
        check_gpu()
        paddle.set_device('gpu')
    else:
        paddle.set_device('cpu')
        use_cpu_threads(num_threads)


def place_of(layer):
    """The place of `layer`'s parameters (or buffers); the CPU for a layer that has none."""
    for tensor in layer.parameters():
        return tensor.place
    for tensor in layer.buffers():
        return tensor.place
    return paddle.CPUPlace()


def inference_place(layer, use_gpu=False):
    """Where inference of `layer` runs, leaving Paddle's global device (paddle.get_device()) as it
    is, so a call in the middle of a GPU run never sends the run's later tensors elsewhere.

    use_gpu=True: a GPU, the layer's own if it is on one, else GPU 0 (the layer is moved there);
    a CPU-only build or no visible GPU is a clear error. use_gpu=False: where the layer's
    parameters are (the CPU unless it was built or moved onto a GPU); on the CPU, Paddle's
    kernels get the thread count of use_cpu_threads. Inputs are then made with
    paddle.to_tensor(..., place=place_of(layer)).
    """
    place = place_of(layer)
    if use_gpu:
        check_gpu()
        if not place.is_gpu_place():
            layer.to(device=paddle.CUDAPlace(0))
            place = place_of(layer)
    if place.is_cpu_place():
        use_cpu_threads()
    return place


def cpu_threads(num_threads=None):
    """The threads Paddle's CPU kernels (convolutions, matrix products) should use.

    Paddle starts them with one thread (its FLAGS_paddle_num_threads default), so dygraph
    training and prediction used one core of many: full fine-tuning of CNN14 in the Trainer
    (5-s clips, batch 8) on 2 CPUs went from 1.33 to 2.02 clips/s with two threads
    (benchmarks/bench_train.py), with the same losses up to float rounding.
    None: every CPU this process may use, shared among the processes a data-parallel launch
    started on this machine (PADDLE_LOCAL_SIZE), so they do not fight over the cores.
    (OMP_NUM_THREADS cannot say it: importing Paddle sets it to 1.)
    """
    if num_threads is not None:
        return check_threads(num_threads)
    local = os.environ.get('PADDLE_LOCAL_SIZE', '1')
    local = int(local) if local.isdigit() and int(local) > 0 else 1
    return max(1, cpu_count() // local)


def enable_mkl_avx2_on_amd():
    """Let MKL use its AVX2 kernels on AMD CPUs; returns whether the setting was made.

    Paddle's CPU build runs convolutions and matrix products in an MKL that chooses kernels by
    CPU vendor and gives AMD CPUs a generic SSE path. MKL_DEBUG_CPU_TYPE=5 selects the AVX2
    path: full fine-tuning of CNN14 (5-s clips, batch 8) trained 2.6x more clips per CPU-second
    on an AMD EPYC (0.40 -> 1.06), with the same results up to float rounding. MKL reads the
    variable at its first call, so call this before any Paddle computation (the examples do,
    unless --no-mkl-avx2). It changes nothing on other CPUs, on AMD CPUs without AVX2 (the path
    would crash there), or when MKL_DEBUG_CPU_TYPE is already set (set it to '' to opt out).
    Newer MKL releases ignore it, at no cost.
    """
    import re
    if 'MKL_DEBUG_CPU_TYPE' in os.environ:
        return False
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            info = f.read()
    except OSError:  # not Linux: leave MKL's choice alone
        return False
    if 'AuthenticAMD' in info and re.search(r'^flags\s*:.*\bavx2\b', info, re.MULTILINE):
        os.environ['MKL_DEBUG_CPU_TYPE'] = '5'
        return True
    return False
