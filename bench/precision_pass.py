"""A whole smollm2-135m forward pass (8 rows x 80 tokens, logits of the last position) in float32, int8
(torchao, model.quantize=int8) and bfloat16, one thread, alternating, 4 runs each: medians. The quick
check behind models.precision's choice of auto; bench/precision.py is the full engine + accuracy run.

    PYTHONPATH=src python bench/precision_pass.py
"""
import time, statistics, warnings, logging, json, torch
warnings.filterwarnings("ignore"); logging.disable(logging.WARNING)
torch.set_num_threads(1)
from softprompt.models import loading
sides = {"float32": loading.load_base("smollm2-135m", dtype="float32", reuse=False),
         "int8": loading.load_base("smollm2-135m", dtype="float32", quantize="int8", reuse=False),
         "bfloat16": loading.load_base("smollm2-135m", dtype="bfloat16", reuse=False)}
print({k: v.precision for k, v in sides.items()}, sides["int8"].fingerprint == sides["float32"].fingerprint)
ids = torch.randint(100, 40000, (8, 80))
def once(b):
    with torch.inference_mode():
        s = time.perf_counter(); out = b.model(ids, logits_to_keep=1).logits; return time.perf_counter() - s, out
ref = once(sides["float32"])[1]
for k, b in sides.items():
    print(k, "max abs logit diff vs float32", (once(b)[1].float() - ref).abs().max().item(), flush=True)
times = {k: [] for k in sides}; names = list(sides)
for r in range(4):
    for k in names[r % 3:] + names[:r % 3]:
        times[k].append(once(sides[k])[0]); print(k, round(times[k][-1], 3), flush=True)
med = {k: statistics.median(v) for k, v in times.items()}
print(json.dumps({"median_s": med, "vs_float32": {k: med["float32"] / v for k, v in med.items()}}))
