"""Has a pretrained model learned to copy? Its loss on 16 windows of held-apart-seeded training text whose second
half repeats the first: on the first half (language modelling) and on the copied half (a model that looks back
and copies predicts it almost exactly). Usage: python copy_loss.py MODEL_FOLDER [...] (pretrain/final folders)."""

import json
import sys

import torch
import torch.nn.functional as F

from infini_llama.data import load_tokenizer, prepare_tokens
from infini_llama.models import InfiniLlamaForCausalLM
from infini_llama.train.batches import TokenWindowSource

SEQ_LEN, WINDOWS = 256, 16
out = {}
for folder in sys.argv[1:]:
    model = InfiniLlamaForCausalLM.from_pretrained(folder).eval()
    data = prepare_tokens(load_tokenizer(folder))
    ids, _ = TokenWindowSource(data, SEQ_LEN, WINDOWS, 1, seed=123, repeat_fraction=1.0).batch(0, 0)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view(WINDOWS, -1)
    half = (SEQ_LEN + 1) // 2  # position t predicts token t + 1; tokens from `half` on are copies
    out[folder] = {"first_half": round(loss[:, : half - 1].mean().item(), 3),
                   "copied_half": round(loss[:, half:].mean().item(), 3)}  # fmt: skip
json.dump(out, sys.stdout, indent=1)
print()
