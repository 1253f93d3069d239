"""One layer's MLP error on text the heal did not see (issue 22): for layers 3, 10 and 20 of
SmolLM2-135M, G of down_proj's input on the calibration corpus and on the bundled held-out text
(the base's activations), and for each importance and heal the relative error
||A (W - W')^T|| / ||A W^T|| of 10% of the channels removed, on each text.

Run: python benchmarks/ffn_layer_error.py [CALIBRATION_TOKENS]   (default 12288: 8 per column)
Needs: the SmolLM2 checkpoint of benchmarks/smollm2.py.
"""

import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from surgeon.prune.ffn import FfnInput, channels_to_prune, choose, heal_down  # noqa: E402
from surgeon.runtime.corpus import bundled_corpus, encode  # noqa: E402

torch.set_num_threads(1)
M = ROOT / "benchmarks" / "_data" / "smollm2-135m-instruct"
tok = AutoTokenizer.from_pretrained(M)
model = AutoModelForCausalLM.from_pretrained(M, dtype=torch.float32).eval()
LAYERS = [3, 10, 20]


def grams(texts, budget):
    seqs = encode(tok, texts, 512, budget)
    G = {layer: torch.zeros(1536, 1536, dtype=torch.float64) for layer in LAYERS}
    S = {layer: torch.zeros(1536, dtype=torch.float64) for layer in LAYERS}
    N = [0]
    hooks = []
    for layer in LAYERS:

        def hook(mod, args, layer=layer):
            x = args[0].reshape(-1, 1536).double()
            G[layer] += x.T @ x
            S[layer] += x.sum(0)

        hooks.append(model.model.layers[layer].mlp.down_proj.register_forward_pre_hook(hook))
    with torch.no_grad():
        for s in seqs:
            model(torch.tensor([s]))
            N[0] += len(s)
    for h in hooks:
        h.remove()
    return G, S, N[0]


texts, _ = bundled_corpus()
Gc, Sc, Nc = grams(texts, int(sys.argv[1]) if len(sys.argv) > 1 else 12288)
held = [p.read_text() for p in sorted(ROOT / "surgeon" / "_data" / "heldout".glob("*.txt"))]
Gt, St, Nt = grams(held, 8192)
k = channels_to_prune(0.1, 1536)
for layer in LAYERS:
    W = model.model.layers[layer].mlp.down_proj.weight.detach().double()
    tgt = float(torch.einsum("oi,ij,oj->", W, Gt[layer], W))
    for imp in ("wanda", "flap", "obs"):
        row = []
        for heal, ridge in (("none", 0.01), ("anchored", 0.01), ("anchored", 0.1), ("anchored", 1.0), ("lstsq", 0.01)):
            job = FfnInput(W, Gc[layer], Sc[layer], Nc, ridge, torch.device("cpu"))
            removed = choose(imp, job, k)
            new = heal_down(job, removed, heal, None).weight.double()
            d = W - new
            test = math.sqrt(float(torch.einsum("oi,ij,oj->", d, Gt[layer], d)) / tgt)
            cal = math.sqrt(
                float(torch.einsum("oi,ij,oj->", d, Gc[layer], d)) / float(torch.einsum("oi,ij,oj->", W, Gc[layer], W))
            )
            row.append(f"{heal}{ridge if heal == 'anchored' else ''}: cal {cal:.3f} test {test:.3f}")
        print(f"L{layer} {imp:5s} | " + " | ".join(row), flush=True)
