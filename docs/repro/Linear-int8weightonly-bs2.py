# Int8WeightOnlyConfig + torch.compile: the process crashes (nn.Linear(1000, 3000, bias=True) on (2, 1000), bfloat16, cpu)
#
# Found by torchao_nb (a sweep cell, model Linear, mode int8weightonly, batch 2): worker crashed (SIGSEGV) while compiling int8weightonly
# This piece: the model: nn.Linear(1000, 3000, bias=True) on an input of shape (2, 1000)
# torch 2.13.0+cpu, torchao 0.18.0, Python 3.11.7
# device: cpu (AMD EPYC); CPU: AMD EPYC; 2 thread(s)
# torchao config: Int8WeightOnlyConfig(set_inductor_config=False)
# compile: torch.compile(mode=default) with torchao_nb's baseline settings (set below)
# kind: crash
# Run it with plain `python`: it exits 1 when the bug reproduces, 0 when it does not; a crash ends it by its
# signal (exit 139 / -11 for a segmentation fault).
import math
import sys

import torch
import torch._dynamo.config
import torch._inductor.config
from torchao.quantization import Int8WeightOnlyConfig, quantize_

torch._dynamo.config.automatic_dynamic_shapes = False
torch._dynamo.config.force_parameter_static_shapes = False
torch._dynamo.config.cache_size_limit = 10000
torch._inductor.config.force_fuse_int_mm_with_mul = True  # no effect: read by nothing in torch 2.11-2.13
torch._inductor.config.use_mixed_mm = True  # ignored by this torch

torch.set_num_threads(2)
torch.set_grad_enabled(False)
torch.manual_seed(0)  # seeded weights and inputs of the captured shapes (never the user's data)

model = torch.nn.Linear(1000, 3000, bias=True, device='cpu', dtype=torch.bfloat16)
inputs = (torch.randn((2, 1000), device='cpu', dtype=torch.bfloat16),)
kwargs = {}
expected = model(*inputs, **kwargs)  # the unquantized output: the reference

print("quantizing", flush=True)
config = Int8WeightOnlyConfig(set_inductor_config=False)
quantize_(model, config)
fn = torch.compile(model)
print("compiling and calling the quantized model", flush=True)
out = fn(*inputs, **kwargs)


def flat(x):  # every floating tensor of an output (a tensor, tuple, list or dict) as one vector
    if isinstance(x, torch.Tensor):
        return [x.detach().double().flatten().cpu()] if x.is_floating_point() else []
    values = x.values() if isinstance(x, dict) else x if isinstance(x, (list, tuple)) else []
    return [t for v in values for t in flat(v)]


WRONG_BELOW_DB = 5.0  # torchao_nb's line: an SQNR below it is a wrong output, not an inaccurate one
ref, got = torch.cat(flat(expected)), torch.cat(flat(out))
noise, signal = torch.linalg.vector_norm(ref - got).item(), torch.linalg.vector_norm(ref).item()
sqnr = math.inf if noise == 0 else (20 * math.log10(signal / noise) if signal > 0 else -math.inf)
bad = int((~torch.isfinite(got)).sum())
print(f"SQNR {sqnr:.1f} dB against the unquantized output, {bad} NaN/inf values (wrong below {WRONG_BELOW_DB} dB)")
if bad or sqnr < WRONG_BELOW_DB:
    print("reproduces: the quantized output is wrong")
    sys.exit(1)
print("does not reproduce: the quantized output is right")
