"""Export a checkpoint, as `paddle-soundcls export` does; the fault suite kills it part-way (PSC_FAULT).

    python export_child.py static CKPT OUT     export_static(load_module(CKPT), OUT, opset=13)
    python export_child.py onnx OUT            export_onnx(OUT): rebuild OUT with a new model.onnx

Fault points: those of faultkit.install_dir_faults, and
    jit-saved      the static model is written, nothing else yet
    onnx-half      half of model.onnx is written
"""
import sys

import onnx
import paddle

from faultkit import fault_point, fault_spec, install_dir_faults
from paddle_soundcls import load_module
from paddle_soundcls.export import export_onnx, export_static

SPEC = fault_spec()


def install_faults():
    install_dir_faults(SPEC)
    real_jit_save = paddle.jit.save

    def jit_save(*args, **kwargs):
        real_jit_save(*args, **kwargs)
        fault_point('jit-saved', SPEC)
    paddle.jit.save = jit_save

    real_onnx_save = onnx.save

    def onnx_save(model, path, *args, **kwargs):
        if SPEC and SPEC['at'] == 'onnx-half':
            data = model.SerializeToString()
            with open(path, 'wb') as f:
                f.write(data[:len(data) // 2])
            fault_point('onnx-half', SPEC, path)
        return real_onnx_save(model, path, *args, **kwargs)
    onnx.save = onnx_save


def main():
    install_faults()
    if sys.argv[1] == 'static':
        export_static(load_module(sys.argv[2]), sys.argv[3], opset=13)
    else:
        export_onnx(sys.argv[2])


if __name__ == '__main__':
    main()
